"""Model backends behind one interface (see :mod:`evolkit.backends.base`) and a factory from the config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Backend, Completion, Request, Result, Sampling
from .cache import CachedBackend, RequestCache

if TYPE_CHECKING:
    from ..config import BackendConfig

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
    elif kind == "deterministic":
        from .deterministic import DeterministicBackend

        be = DeterministicBackend(
            "deterministic" if cfg.model == "smollm2-135m-instruct" else cfg.model, accuracy=cfg.accuracy,
            delay=cfg.delay_s,
        )
    else:  # pragma: no cover - the config validates kind
        raise ValueError(f"unknown backend kind {kind!r}")
    if cache_path is not None and cfg.cache:
        be = CachedBackend(be, RequestCache(cache_path))
    return be
