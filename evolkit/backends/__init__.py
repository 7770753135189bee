"""Model backends behind one interface (see :mod:`evolkit.backends.base`) and a factory from the config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Backend, Completion, Request, Result, Sampling
from .cache import CachedBackend, RequestCache

if TYPE_CHECKING:
    from ..types import BackendConfig

__all__ = ["Backend", "Completion", "Request", "Result", "Sampling", "CachedBackend", "RequestCache", "make_backend"]


def make_backend(cfg: BackendConfig, cache_path: str | Path | None = None) -> Backend:
    """Build the backend a config names, wrapped in the run's request cache when ``cache_path`` is given."""
    kind = cfg.kind
    if kind == "openai":
        from .openai import OpenAIBackend

        urls = cfg.base_urls or cfg.base_url
        be: Backend = OpenAIBackend(
            cfg.model,
            base_url=urls,
            api_key_env=cfg.api_key_env,
            max_concurrency=cfg.max_concurrency,
            max_retries=cfg.max_retries,
            request_timeout=cfg.request_timeout,
            rpm=cfg.rpm,
            tpm=cfg.tpm,
            http_client=cfg.http_client,
        )
    elif kind == "transformers":
        from .transformers import TransformersBackend

        be = TransformersBackend(cfg.model, batch_size=cfg.batch_size, dtype=cfg.dtype)
    elif kind == "vllm":
        from .vllm import VLLMBackend

        be = VLLMBackend(cfg.model, **cfg.engine_kwargs)
    elif kind == "custom":
        be = _custom_backend(cfg)
    else:  # pragma: no cover - the config validates kind
        raise ValueError(f"unknown backend kind {kind!r}")
    if cache_path is not None and cfg.cache:
        be = CachedBackend(be, RequestCache(cache_path))
    return be


def _custom_backend(cfg: BackendConfig) -> Backend:
    """``kind: custom``: ``factory: "package.module:callable"`` called as ``callable(model=..., **options)``."""
    import importlib

    from ..errors import ConfigError

    spec = cfg.factory or ""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"backend.factory: {spec!r} is not 'package.module:callable'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"backend.factory: cannot import {mod_name!r}: {e}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"backend.factory: {mod_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"backend.factory: {spec!r} is not callable")
    try:
        be = fn(model=cfg.model, **cfg.options)
    except TypeError as e:
        raise ConfigError(f"backend.options: {spec} does not accept these options: {e}") from None
    if not isinstance(be, Backend):
        raise ConfigError(f"backend.factory: {spec} returned {type(be).__name__}, not an evolkit Backend")
    return be
