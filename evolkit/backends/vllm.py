"""In-process offline batch generation with ``vllm.LLM`` (optional extra ``vllm``; imported only when chosen).

vLLM schedules the whole list itself (continuous batching), so the backend hands it large chunks of requests grouped by
sampling parameters and streams results chunk by chunk, which keeps memory bounded and lets the run store write as it goes.
A request's ``json_schema`` constrains its answers through vLLM's structured outputs (vLLM 0.33:
``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .base import Backend, Completion, Request, Result


def sampling_kwargs(req: Request) -> dict[str, Any]:
    """The ``vllm.SamplingParams`` arguments of a request; a JSON schema becomes vLLM's structured-outputs constraint
    (``structured_outputs=StructuredOutputsParams(json=schema)``, given here as the keyword arguments of
    ``StructuredOutputsParams``)."""
    s = req.sampling
    kw: dict[str, Any] = dict(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens,
        stop=list(s.stop) or None,
        seed=None if s.seed is None else s.seed + req.sample_offset,
    )
    if req.json_schema is not None:
        kw["structured_outputs"] = {"json": req.json_schema}
    return kw


def _group_key(req: Request) -> tuple[Any, ...]:
    """Requests that can share one ``SamplingParams`` (and so one engine call)."""
    schema = None if req.json_schema is None else json.dumps(req.json_schema, sort_keys=True)
    return (req.sampling, req.sample_offset, req.raw, schema)


class VLLMBackend(Backend):
    supports_json_schema = True

    def __init__(self, model: str, chunk_size: int = 4096, **engine_kwargs: Any):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.engine_kwargs = engine_kwargs
        self._llm: Any = None

    def _engine(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as e:  # pragma: no cover - depends on the extra
                raise RuntimeError("backend 'vllm' needs the optional extra: pip install 'evolkit[vllm]'") from e
            self._llm = LLM(model=self.model, **self.engine_kwargs)
        return self._llm

    def _run_chunk(self, reqs: Sequence[Request]) -> list[Result]:
        from vllm import SamplingParams

        kw = sampling_kwargs(reqs[0])
        if "structured_outputs" in kw:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(**kw["structured_outputs"])
        params = SamplingParams(**kw)
        if reqs[0].raw:  # plain-text prompts, no chat template
            outs = self._engine().generate([r.prompt_text() for r in reqs], sampling_params=params, use_tqdm=False)
        else:
            outs = self._engine().chat([r.messages for r in reqs], sampling_params=params, use_tqdm=False)
        results = []
        for o in outs:
            pt = len(o.prompt_token_ids or [])
            comps = [
                Completion(c.text, c.finish_reason, pt if j == 0 else 0, len(c.token_ids))
                for j, c in enumerate(sorted(o.outputs, key=lambda c: c.index))
            ]
            results.append(Result(comps))
        return results

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_group_key(r), []).append(i)
        loop = asyncio.get_running_loop()
        for idxs in groups.values():
            for k in range(0, len(idxs), self.chunk_size):
                chunk = idxs[k : k + self.chunk_size]
                try:
                    results = await loop.run_in_executor(None, self._run_chunk, [requests[i] for i in chunk])
                except Exception as e:
                    results = [Result(error=f"{type(e).__name__}: {e}") for _ in chunk]
                for i, res in zip(chunk, results):
                    self.stats.add(res)
                    yield i, res

    def describe(self) -> dict[str, Any]:
        return {"backend": "vllm", "model": self.model}
