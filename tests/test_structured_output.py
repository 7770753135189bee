"""Structured output: ``Request.json_schema`` reaches OpenAI-compatible servers as ``response_format``, a server that
refuses it gets the request once more without it (and is remembered), the cache key changes only for requests with a
schema, and the vLLM backend turns the schema into its structured-outputs constraint. (The real model answering with
a schema through llama.cpp's server is in tests/test_backend_openai.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from evolkit.backends import CachedBackend, Request, RequestCache, Sampling
from evolkit.backends.openai import OpenAIBackend, response_format
from evolkit.backends.vllm import VLLMBackend, _group_key, sampling_kwargs
from tests.faultserver import FaultServer, always

SCHEMA = {
    "title": "step labels",
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": {
            "type": "object",
            "properties": {"step": {"type": "integer"}, "correct": {"type": "boolean"}},
            "required": ["step", "correct"], "additionalProperties": False}},
    },
    "required": ["steps"],
    "additionalProperties": False,
}


def _req(i: int, schema: dict | None = SCHEMA) -> Request:
    return Request([{"role": "user", "content": f"judge {i}"}], Sampling(max_tokens=8), json_schema=schema)


def _run(be: OpenAIBackend, reqs: list[Request]) -> dict[int, object]:
    async def go() -> dict[int, object]:
        try:
            return {i: r async for i, r in be.stream(reqs)}
        finally:
            await be.aclose()

    return asyncio.run(go())


def _backend(urls, **kw) -> OpenAIBackend:
    opts = dict(request_timeout=5, max_retries=2, backoff_base=0.01, backoff_max=0.05, max_concurrency=1)
    opts.update(kw)
    return OpenAIBackend("m", base_url=urls, api_key="sk-test", **opts)


def test_cache_key_changes_only_with_a_schema() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    plain = Request(msgs, Sampling(max_tokens=5))
    old = hashlib.sha256(json.dumps(["m", msgs, plain.sampling.as_dict(), 0], sort_keys=True,
                                    ensure_ascii=False).encode()).hexdigest()
    assert plain.cache_key("m") == old  # keys of requests without a schema are the ones they always had
    with_schema = Request(msgs, Sampling(max_tokens=5), json_schema=SCHEMA)
    assert with_schema.cache_key("m") != old
    other = dict(SCHEMA, required=[])
    assert Request(msgs, Sampling(max_tokens=5), json_schema=other).cache_key("m") != with_schema.cache_key("m")
    # The key does not depend on the order of the schema's keys.
    shuffled = dict(reversed(list(SCHEMA.items())))
    assert Request(msgs, Sampling(max_tokens=5), json_schema=shuffled).cache_key("m") == with_schema.cache_key("m")


def test_capability_flags(tmp_path) -> None:
    be = _backend("http://127.0.0.1:9/v1")
    assert be.supports_json_schema and VLLMBackend("m").supports_json_schema
    cached = CachedBackend(be, RequestCache(tmp_path / "cache.sqlite"))
    assert cached.supports_json_schema
    cached.cache.close()


def test_response_format_shape() -> None:
    rf = response_format(SCHEMA)
    assert rf == {"type": "json_schema", "json_schema": {"name": "step_labels", "schema": SCHEMA, "strict": True}}
    # A schema that OpenAI's strict mode would refuse (an optional property) is sent with strict false.
    loose = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a"],
             "additionalProperties": False}
    assert response_format(loose)["json_schema"] == {"name": "answer", "schema": loose, "strict": False}
    nested_open = json.loads(json.dumps(SCHEMA))
    del nested_open["properties"]["steps"]["items"]["additionalProperties"]
    assert response_format(nested_open)["json_schema"]["strict"] is False


@pytest.mark.parametrize("client", ["lean", "aiohttp", "sdk"])
def test_schema_is_sent_as_response_format(client: str) -> None:
    with FaultServer() as srv:
        got = _run(_backend(srv.base_url, http_client=client, max_concurrency=4), [_req(i) for i in range(4)]
                   + [_req(9, schema=None)])
        log = {e.key: e for e in srv.entries()}
    assert all(r.ok and r.attempts == 1 for r in got.values())
    for i in range(4):
        assert log[f"judge {i}"].response_format == response_format(SCHEMA)
    assert log["judge 9"].response_format is None  # no schema, no response_format


@pytest.mark.parametrize("client", ["lean", "aiohttp", "sdk"])
def test_server_refusing_response_format_is_asked_again_without_it_and_remembered(client: str) -> None:
    with FaultServer(refuse_response_format=True) as srv:
        be = _backend(srv.base_url, http_client=client)
        got = _run(be, [_req(i) for i in range(5)])
        log = srv.entries()
    assert sorted(got) == list(range(5))
    assert all(r.ok for r in got.values()), [r.error for r in got.values()]
    # One request at a time: the first is refused once and answered without the schema; the endpoint is remembered,
    # so the others go without it at once.
    assert [r.attempts for _, r in sorted(got.items())] == [2, 1, 1, 1, 1]
    assert [(e.key, e.response_format is not None) for e in log] == [("judge 0", True), ("judge 0", False)] + [
        (f"judge {i}", False) for i in range(1, 5)]
    assert be.endpoints[0].no_response_format
    assert be.stats.retries == 1 and be.stats.failed == 0


def test_refusal_is_remembered_per_endpoint() -> None:
    with FaultServer(refuse_response_format=True) as refusing, FaultServer() as accepting:
        be = _backend([refusing.base_url, accepting.base_url], max_concurrency=2)
        got = _run(be, [_req(i) for i in range(40)])
        refused_log, accepted_log = refusing.entries(), accepting.entries()
    assert all(r.ok for r in got.values())
    assert be.endpoints[0].no_response_format and not be.endpoints[1].no_response_format
    # The accepting endpoint got every request with the schema (also those the other one had refused); the refusing
    # one refused a few before it was remembered and answered the rest without a schema.
    assert accepted_log and all(e.response_format == response_format(SCHEMA) for e in accepted_log)
    refused = [e for e in refused_log if e.response_format is not None]
    assert 1 <= len(refused) <= 5 and not any(e.answered for e in refused)
    assert any(e.response_format is None and e.answered for e in refused_log)
    assert sum(r.attempts for r in got.values()) == 40 + len(refused)


def test_request_refused_with_and_without_schema_fails_and_is_not_remembered() -> None:
    """A 400 that is about the request itself (here: the server refuses it with or without a schema) is the request's
    error, after one try without the schema; the endpoint keeps getting schemas."""

    with FaultServer(plan=always("400")) as srv:
        be = _backend(srv.base_url)
        got = _run(be, [_req(0)])
        log = srv.entries()
    r = got[0]
    assert not r.ok and r.attempts == 2 and "400" in r.error and "prompt too long" in r.error, r.error
    assert [e.response_format is not None for e in log] == [True, False]
    assert not be.endpoints[0].no_response_format


def test_vllm_structured_outputs_params() -> None:
    kw = sampling_kwargs(_req(0))
    assert kw["structured_outputs"] == {"json": SCHEMA}
    assert kw["max_tokens"] == 8 and kw["n"] == 1
    assert "structured_outputs" not in sampling_kwargs(_req(0, schema=None))
    # Requests with different schemas never share one SamplingParams (one engine call); equal schemas do.
    other = dict(SCHEMA, title="other")
    assert _group_key(_req(0)) == _group_key(_req(1)) == _group_key(_req(2, dict(reversed(list(SCHEMA.items())))))
    assert _group_key(_req(0)) != _group_key(_req(0, other)) != _group_key(_req(0, None))
