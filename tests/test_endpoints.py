"""Several OpenAI-compatible endpoints (vllm serve replicas): load spread by in-flight count, and one replica killed
mid-run (SIGKILL of its server process) drained without losing or duplicating a request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from evolkit.backends import Request, Sampling
from evolkit.backends.openai import OpenAIBackend
from tests.faultserver import FaultServer

REPO = Path(__file__).resolve().parents[1]


def _replica(latency: float) -> tuple[subprocess.Popen[str], str]:
    """A stub server in its own process (so it can be SIGKILLed); returns the process and its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.faultserver", "--latency", str(latency)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _reqs(n: int) -> list[Request]:
    return [Request([{"role": "user", "content": f"replica question {i}"}], Sampling(max_tokens=8)) for i in range(n)]


def test_load_is_spread_by_in_flight_count() -> None:
    with FaultServer(latency=0.05) as a, FaultServer(latency=0.05) as b:
        be = OpenAIBackend("m", base_url=[a.base_url, b.base_url], max_concurrency=16, request_timeout=10)

        async def go() -> list:
            try:
                return [x async for x in be.stream(_reqs(200))]
            finally:
                await be.aclose()

        got = asyncio.run(go())
        na, nb = sum(a.answered().values()), sum(b.answered().values())
    assert sorted(i for i, _ in got) == list(range(200)) and all(r.ok for _, r in got)
    assert na + nb == 200
    assert min(na, nb) >= 60, (na, nb)  # equal replicas share the load (exactly half is not guaranteed)


def _kill_one_replica_mid_run(drain_seconds: float, n: int = 400) -> None:
    victim, victim_url = _replica(latency=0.02)
    try:
        with FaultServer(latency=0.02) as survivor:
            be = OpenAIBackend("m", base_url=[victim_url, survivor.base_url], max_concurrency=32, request_timeout=10,
                               max_retries=6, backoff_base=0.01, backoff_max=0.1, drain_seconds=drain_seconds)
            killed_at: list[int] = []

            async def go() -> list:
                got = []
                try:
                    async for i, res in be.stream(_reqs(n)):
                        got.append((i, res))
                        if len(got) == n // 4:
                            victim.send_signal(signal.SIGKILL)  # with requests in flight on it
                            killed_at.append(len(got))
                finally:
                    await be.aclose()
                return got

            got = asyncio.run(go())
            answered = survivor.answered()
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait(10)
    assert killed_at, "the run ended before the kill"
    # Nothing lost, nothing duplicated, nothing failed.
    assert sorted(i for i, _ in got) == list(range(n))
    assert [r.error for _, r in got if not r.ok] == []
    # The victim took part before it died, and every request it did not answer was answered by the survivor, once.
    by_victim = n - sum(answered.values())
    assert 0 < by_victim <= killed_at[0] + 32
    assert set(answered.values()) == {1}
    victim_ep = be.endpoints[0]
    assert victim_ep.in_flight == 0 and be.endpoints[1].in_flight == 0


def test_killed_replica_is_drained_without_losing_requests() -> None:
    _kill_one_replica_mid_run(drain_seconds=30.0)


def test_killed_replica_probed_again_after_cool_down_loses_nothing() -> None:
    # A short cool-down: the dead replica comes back into rotation several times during the run and must be drained
    # again each time without any request running out of attempts.
    _kill_one_replica_mid_run(drain_seconds=0.05, n=600)
