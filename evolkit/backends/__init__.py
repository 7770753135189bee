"""Model backends behind one interface (see :mod:`evolkit.backends.base`) and a factory from the config."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Backend, Completion, Request, Result, Sampling
from .cache import CachedBackend, RequestCache

if TYPE_CHECKING:
    from ..types import BackendConfig

__all__ = ["Backend", "Completion", "Request", "Result", "Sampling", "CachedBackend", "RequestCache", "make_backend",
           "custom_backend"]


def custom_backend(factory: str | None, model: str, options: dict[str, Any] | None = None) -> Backend:
    """A backend of your own (``backend: {kind: custom, factory: "package.module:callable", model: ..., options:
    {...}}``): the callable is imported, called as ``callable(model=model, **options)`` and must return an
    :class:`~evolkit.backends.base.Backend`. Requests, caching, resume and accounting then work as for the built-in
    kinds (subclass ``Backend`` and implement ``stream``)."""
    if not factory or ":" not in factory:
        raise ConfigError(f"backend.factory: kind custom needs factory: 'package.module:callable' (got {factory!r})")
    module_name, _, attr = factory.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"backend.factory: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"backend.factory: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"backend.factory: {factory} is a {type(obj).__name__}, not a callable")
    try:
        be = obj(model=model, **(options or {}))
    except TypeError as e:
        raise ConfigError(f"backend.options: {factory} does not take these arguments ({e})") from None
    if not isinstance(be, Backend):
        raise ConfigError(f"backend.factory: {factory} returned a {type(be).__name__}, not an evolkit Backend")
    return be


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

        try:
            be = TransformersBackend(cfg.model, batch_size=cfg.batch_size, dtype=cfg.dtype, **cfg.options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"backend.options: {e} (kind transformers takes engine and threads)") from None
    elif kind == "vllm":
        from .vllm import VLLMBackend

        be = VLLMBackend(cfg.model, **cfg.engine_kwargs)
    elif kind == "custom":
        be = custom_backend(cfg.factory, cfg.model, cfg.options)
    else:  # pragma: no cover - the config validates kind
        raise ValueError(f"unknown backend kind {kind!r}")
    if cache_path is not None and cfg.cache:
        be = CachedBackend(be, RequestCache(cache_path))
    return be
