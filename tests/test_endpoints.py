"""Several OpenAI-compatible endpoints (vllm serve replicas): load spread by in-flight count, and one replica killed
mid-run (SIGKILL of its server process) drained without losing or duplicating a request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
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


@dataclass
class _Attempt:
    start: float
    end: float = 0.0
    probe: bool = False  # sent while the endpoint was suspect: drained before and not yet proven healthy
    ok: bool = False


def _kill_one_replica_mid_run(drain_seconds: float, n: int = 400) -> tuple[OpenAIBackend, list[_Attempt]]:
    """Runs ``n`` requests over a victim replica and a survivor, SIGKILLs the victim after a quarter of them; returns
    the backend and the attempts sent to the victim."""
    victim, victim_url = _replica(latency=0.02)
    try:
        with FaultServer(latency=0.02) as survivor:
            be = OpenAIBackend("m", base_url=[victim_url, survivor.base_url], max_concurrency=32, request_timeout=10,
                               max_retries=6, backoff_base=0.01, backoff_max=0.1, drain_seconds=drain_seconds)
            killed_at: list[int] = []
            # Every attempt on the victim, timed (the backend's own _call, observed, not replaced).
            to_victim: list[_Attempt] = []
            call = be._call

            async def observed_call(ep, req, slot=0, schema=False):
                if ep is not be.endpoints[0]:
                    return await call(ep, req, slot, schema)
                a = _Attempt(time.monotonic(), probe=ep.suspect)
                to_victim.append(a)
                try:
                    out = await call(ep, req, slot, schema)
                    a.ok = True
                    return out
                finally:
                    a.end = time.monotonic()

            be._call = observed_call  # type: ignore[method-assign]

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
    return be, to_victim


def test_killed_replica_is_drained_without_losing_requests() -> None:
    be, to_victim = _kill_one_replica_mid_run(drain_seconds=30.0)
    # Drained once after the kill and never probed within the 30 s cool-down.
    assert be.endpoints[0].suspect and be.endpoints[0].cooldown == 30.0
    assert not any(a.probe for a in to_victim)


def test_killed_replica_is_probed_one_request_at_a_time_after_each_cool_down() -> None:
    # A short cool-down: the dead replica comes back into rotation several times during the run. Each time it gets one
    # probe request (never two at once), the failed probe drains it again for twice as long, and no request runs out
    # of attempts.
    drain = 0.05
    be, to_victim = _kill_one_replica_mid_run(drain_seconds=drain, n=600)
    probes = [a for a in to_victim if a.probe]
    assert probes, "the dead replica was never probed after its cool-down"
    assert not any(p.ok for p in probes)  # it is dead: every probe failed
    for a, b in zip(probes, probes[1:]):
        assert b.start >= a.end, "two probes in flight at once"
        assert b.start - a.end >= drain * 0.9, (a, b)  # a failed probe drains the replica again before the next
    # Each failed probe doubled the cool-down (up to 16 times the configured one). (A request sent before the drain
    # that fails after the cool-down has ended counts as a failed probe too, hence >=.)
    assert be.endpoints[0].cooldown >= min(drain * 2 ** len(probes), 16 * drain)
    assert be.endpoints[0].cooldown <= 16 * drain
