"""OpenAIBackend against a faulty local server: retries, Retry-After, several endpoints, nothing lost or duplicated."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from evolkit.backends import Request, Sampling
from evolkit.backends.openai import OpenAIBackend
from evolkit.cli import main
from evolkit.store import read_parquet
from tests.faultserver import FAULT_KINDS, FaultPlan, FaultServer, always, refused_url

# Every fault kind on a share of the prompts, each for its first 1-2 attempts; prompts containing "DOOMED" always fail.
PLAN = FaultPlan({k: 0.1 for k in FAULT_KINDS}, max_failures=2, seed=3, always=("DOOMED",))


def _backend(url: str | list[str], **kw) -> OpenAIBackend:
    # The timeout is generous so that a slow normal answer on a loaded machine never counts as a fault.
    opts = dict(request_timeout=2.5, max_retries=3, backoff_base=0.01, backoff_max=0.05, max_concurrency=128)
    opts.update(kw)
    return OpenAIBackend("fault-model", base_url=url, **opts)


def _reqs(n: int, prefix: str = "q", doomed: tuple[int, ...] = (), k: int = 2) -> list[Request]:
    return [
        Request([{"role": "user", "content": f"{prefix}{i}" + (" DOOMED" if i in doomed else "")}], Sampling(n=k, max_tokens=8))
        for i in range(n)
    ]


async def _collect(be: OpenAIBackend, reqs: list[Request]) -> list[tuple[int, object]]:
    try:
        return [x async for x in be.stream(reqs)]
    finally:
        await be.aclose()


def test_every_item_completes_or_fails_with_a_reason() -> None:
    n, doomed = 160, (5, 77)
    with FaultServer(plan=PLAN, hang_seconds=6, retry_after=0.2) as srv:
        be = _backend(srv.base_url)
        got = asyncio.run(_collect(be, _reqs(n, doomed=doomed)))
        log = srv.entries()
    # Nothing lost, nothing duplicated.
    assert sorted(i for i, _ in got) == list(range(n))
    results = dict(got)
    for i, r in results.items():
        key = f"q{i}" + (" DOOMED" if i in doomed else "")
        if i in doomed:
            assert not r.ok and "http 500" in r.error and r.attempts == 4, (i, r)
            continue
        assert r.ok, (i, r.error)
        assert len(r.completions) == 2 and all(c.text and c.finish_reason == "stop" for c in r.completions)
        # Each failing prompt was retried exactly as often as the server failed it.
        assert r.attempts == PLAN.failures_of(key) + 1, (key, r.attempts)
    received = Counter(e.key for e in log)
    for i in range(n):
        key = f"q{i}" + (" DOOMED" if i in doomed else "")
        assert received[key] == (4 if i in doomed else PLAN.failures_of(key) + 1), key
    faults = Counter(e.fault for e in log if e.fault)
    assert set(faults) == set(FAULT_KINDS), faults  # every kind of fault happened and was survived
    assert be.stats.retries == sum(received.values()) - n
    assert be.stats.failed == len(doomed)


def test_serves_128_concurrent_connections() -> None:
    with FaultServer(latency=0.3) as srv:
        be = _backend(srv.base_url, max_concurrency=128)
        got = asyncio.run(_collect(be, _reqs(300, k=1)))
        assert srv.max_open_connections >= 128
    assert sorted(i for i, _ in got) == list(range(300))
    assert all(r.ok for _, r in got)


def test_retry_after_is_honoured() -> None:
    retry_after = 1.0
    plan = lambda key, attempt: "429" if attempt == 1 else None  # noqa: E731
    with FaultServer(plan=plan, retry_after=retry_after) as srv:
        be = _backend(srv.base_url)
        got = asyncio.run(_collect(be, _reqs(20, k=1)))
        log = srv.entries()
    assert all(r.ok and r.attempts == 2 for _, r in got)
    times: dict[str, list[float]] = {}
    for e in log:
        times.setdefault(e.key, []).append(e.t)
    assert len(times) == 20
    for key, ts in times.items():
        assert len(ts) == 2, key
        # The retry reached the server no sooner than Retry-After after the 429'd attempt (backoff alone is <= 0.05 s).
        assert ts[1] - ts[0] >= retry_after, (key, ts)


@pytest.mark.parametrize("bad", ["refused", "500", "cut"])
def test_several_endpoints_one_failing(bad: str) -> None:
    n = 120
    with FaultServer() as good, FaultServer(plan=always(bad if bad != "refused" else "500")) as failing:
        bad_url = refused_url() if bad == "refused" else failing.base_url
        be = _backend([bad_url, good.base_url], max_retries=4)
        got = asyncio.run(_collect(be, _reqs(n, k=1)))
        answered = good.answered()
        bad_hits = len(failing.entries())
    assert sorted(i for i, _ in got) == list(range(n))
    assert all(r.ok for _, r in got), [r.error for _, r in got if not r.ok][:3]
    # Every request was answered by the healthy endpoint, once.
    assert len(answered) == n and set(answered.values()) == {1}
    # The failing endpoint was drained after a few failures instead of taking half of the traffic.
    if bad != "refused":
        assert 0 < bad_hits < n


def test_sft_stage_records_failures_with_reasons(tmp_path) -> None:
    """Through the CLI: every seed ends with solutions or with a 'failed' row that says why; nothing lost or doubled."""
    import json

    seeds = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"Ann has {i} apples and buys {i + 3} more. How many apples does she have?",
             "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"} for i in range(10)]
    rows[4]["question"] = "A DOOMED question: Bob has 2 pens and loses one. How many pens are left?"
    rows[4]["answer"] = "2 - 1 = 1\n#### 1"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doomed_q = rows[4]["question"]
    plan = FaultPlan({k: 0.15 for k in FAULT_KINDS}, max_failures=1, seed=1, always=("DOOMED",))
    cfg = tmp_path / "faults.yaml"
    with FaultServer(plan=plan, hang_seconds=6, retry_after=0.1) as srv:
        cfg.write_text(
            f"""
name: faults
backend: {{kind: openai, model: fault-model, base_url: "{srv.base_url}", request_timeout: 2.5, max_retries: 2}}
sampling: {{max_tokens: 32}}
seeds:
  - {{source: gsm8k, path: "{seeds}"}}
  - {{source: math, n: 6}}
stages:
  sft: {{k: 2, fewshot: 1}}
"""
        )
        assert main(["run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"]) == 0
    problems = read_parquet(tmp_path / "run" / "seeds" / "problems.parquet")
    sols = read_parquet(tmp_path / "run" / "sft" / "solutions.parquet")
    per = Counter(s["problem_id"] for s in sols)
    assert set(per) == {p["id"] for p in problems}
    failed = [s for s in sols if s["verdict"] == "failed"]
    assert [s["problem_id"] for s in failed] == [p["id"] for p in problems if p["question"] == doomed_q]
    assert "gave up after 3 attempts: http 500" in failed[0]["reason"]
    for pid, count in per.items():
        assert count == (1 if pid == failed[0]["problem_id"] else 2), pid
    assert len({(s["problem_id"], s["sample_index"]) for s in sols}) == len(sols)
    dropped = read_parquet(tmp_path / "run" / "sft" / "dropped.parquet")
    assert all(d["reason"] for d in dropped)
