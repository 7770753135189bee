"""OpenAIBackend against a real OpenAI-compatible server with a real model (llama.cpp + SmolLM2-135M, see
tests/plugins/llama.py). Kept tiny: the model writes ~100 tokens/s on two CPU cores."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from evolkit.backends import Request, Sampling
from evolkit.backends.openai import OpenAIBackend
from evolkit.cli import main
from evolkit.store import read_parquet

pytestmark = pytest.mark.slow

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


def _backend(srv, **kw) -> OpenAIBackend:
    return OpenAIBackend(srv.model, base_url=srv.base_url, request_timeout=120, max_retries=2, **kw)


async def _run(be: OpenAIBackend, reqs: list[Request]):
    try:
        return [x async for x in be.stream(reqs)]
    finally:
        await be.aclose()


def test_chat_with_n_returns_n_completions(llama_server) -> None:
    be = _backend(llama_server)
    req = Request([{"role": "user", "content": QUESTION}], Sampling(temperature=0.9, max_tokens=16, n=3, seed=1))
    [(i, res)] = asyncio.run(_run(be, [req]))
    assert i == 0 and res.ok, res.error
    assert len(res.completions) == 3
    for c in res.completions:
        assert c.text.strip()
        assert c.finish_reason in ("stop", "length")
    assert res.completions[0].prompt_tokens > 0
    assert sum(c.completion_tokens for c in res.completions) > 0
    assert be.stats.requests == 1 and be.stats.completion_tokens > 0


def test_raw_prompt_uses_the_completions_endpoint(llama_server) -> None:
    be = _backend(llama_server)
    req = Request([{"role": "user", "content": "The capital of France is"}], Sampling(max_tokens=8, temperature=0),
                  raw=True)
    [(_, res)] = asyncio.run(_run(be, [req]))
    assert res.ok, res.error
    assert len(res.completions) == 1 and res.completions[0].text


def test_sixteen_concurrent_requests_all_complete(llama_server) -> None:
    be = _backend(llama_server, max_concurrency=16)
    reqs = [
        Request([{"role": "user", "content": f"Add {i} and {i + 1}. Answer with one number."}], Sampling(max_tokens=8))
        for i in range(16)
    ]
    got = asyncio.run(_run(be, reqs))
    assert sorted(i for i, _ in got) == list(range(16))
    assert all(r.ok and r.completions[0].finish_reason in ("stop", "length") for _, r in got), [
        r.error for _, r in got if not r.ok
    ]
    assert be.stats.failed == 0 and be.stats.requests == 16


# Step labels of a solution, the shape a PRM judge answers in (bounded, so that a short answer can be complete).
LABELS = {
    "title": "step_labels",
    "type": "object",
    "properties": {
        "steps": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object",
            "properties": {"step": {"type": "integer"}, "correct": {"type": "boolean"}},
            "required": ["step", "correct"], "additionalProperties": False}},
        "answer": {"type": "integer"},
    },
    "required": ["steps", "answer"],
    "additionalProperties": False,
}
JUDGE = ("Solution: Step 1: Tom has 3 apples. Step 2: 3 + 4 = 8. The answer is 8.\n"
         "Say for each step whether it is correct, and give the right answer, as JSON.")


def test_json_schema_gives_json_that_follows_it(llama_server) -> None:
    be = _backend(llama_server, max_concurrency=4)
    assert be.supports_json_schema
    reqs = [Request([{"role": "user", "content": f"{QUESTION}\n{JUDGE}"}], Sampling(temperature=0.8, max_tokens=96,
                                                                                     n=2, seed=i), json_schema=LABELS)
            for i in range(3)]
    got = asyncio.run(_run(be, reqs))
    assert sorted(i for i, _ in got) == [0, 1, 2]
    texts = []
    for _, res in got:
        assert res.ok and res.attempts == 1, res.error
        texts += [c.text for c in res.completions if c.finish_reason == "stop"]
    assert len(texts) >= 5, "answers cut off by the token limit"
    for text in texts:
        jsonschema.validate(json.loads(text), LABELS)  # raises on text that is not JSON or does not follow the schema
    assert not be.endpoints[0].no_response_format  # llama.cpp's server takes response_format


def test_sft_stage_end_to_end_via_cli(llama_server, tmp_path: Path) -> None:
    cfg = tmp_path / "llama.yaml"
    cfg.write_text(
        f"""
name: llama-sft
backend: {{kind: openai, model: {llama_server.model}, base_url: "{llama_server.base_url}", max_concurrency: 8,
          request_timeout: 120}}
sampling: {{max_tokens: 48, temperature: 0.7}}
seeds:
  - {{source: gsm8k, n: 2}}
  - {{source: math, n: 2}}
stages:
  sft: {{k: 2, fewshot: 1}}
"""
    )
    run = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 0
    for name in ("solutions", "sft", "dropped"):
        assert (run / "sft" / f"{name}.parquet").exists(), name
    sols = read_parquet(run / "sft" / "solutions.parquet")
    assert len(sols) == 4 * 2
    assert all(s["verdict"] != "failed" for s in sols), [s["reason"] for s in sols if s["verdict"] == "failed"]
    assert all(s["text"] and s["model"] == llama_server.model and s["usage"]["completion_tokens"] > 0 for s in sols)
    sft, dropped = read_parquet(run / "sft" / "sft.parquet"), read_parquet(run / "sft" / "dropped.parquet")
    assert len(sft) + len(dropped) == len(sols)
    summary = json.loads((run / "sft" / "summary.json").read_text())
    assert summary["samples"] == 8 and summary["problems"] == 4
    assert summary["kept"] == len(sft) and summary["dropped"] == len(dropped)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "done"
