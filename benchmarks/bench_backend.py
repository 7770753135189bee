"""Client overhead of evolkit's OpenAIBackend (with each of its HTTP clients) vs a plain AsyncOpenAI loop, against an
instant local server.

The server is a raw asyncio HTTP/1.1 stub (keep-alive, one fixed chat completion) in its own process, so the figures
measure the clients. Each measurement runs in a fresh subprocess so that peak RSS (``ru_maxrss``) of one does not mix
with another's; CPU s is the client process's user + system time during the run. Every client sends N requests with
at most ``--concurrency`` in flight:

* ``evolkit``: ``OpenAIBackend(...).stream(requests)`` as configured by default (retries, accounting, endpoint choice
  included); ``evolkit-lean`` / ``evolkit-aiohttp`` / ``evolkit-sdk``: the same with ``http_client`` lean (evolkit's
  HTTP/1.1 client, the default for plain http URLs), aiohttp or sdk (the OpenAI SDK's httpx client);
* ``plain``: ``AsyncOpenAI`` with an ``asyncio.Semaphore`` and one task per request (``asyncio.gather``), the usual loop.

All build each request's messages when they send it, so the input list is not counted as client memory.

Usage: python benchmarks/bench_backend.py [--n 2000 8000] [--big] [--concurrency 128] [--repeat 1]
                                          [--clients plain evolkit evolkit-lean evolkit-aiohttp evolkit-sdk]
Targets: evolkit's wall time within 1.2x of the plain loop's; its peak RSS flat in N. The last column is each
client's wall time over the first client's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

from stub_server import chat_completion, http_ok, read_request  # benchmarks/ is the script's folder

COMPLETION = chat_completion(["Step 1: 2 + 2 = 4.\n\nThe answer is: 4"], model="bench", completion_tokens=12)
RESPONSE = http_ok(COMPLETION)


# -- the stub server ---------------------------------------------------------------------------------------------------
async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await read_request(reader)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


# -- the clients -------------------------------------------------------------------------------------------------------
def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Solve step by step."}, {"role": "user", "content": f"What is {i} + {i}?"}]


class _LazyRequests(Sequence):
    """The N requests, built when the backend takes them: the input list is not counted as client memory."""

    def __init__(self, n: int):
        from evolkit.backends import Sampling

        self.n = n
        self.sampling = Sampling(max_tokens=16)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        from evolkit.backends import Request

        if not 0 <= i < self.n:
            raise IndexError(i)
        return Request(_messages(i), self.sampling)


async def run_evolkit(url: str, n: int, concurrency: int, http_client: str = "auto") -> int:
    from evolkit.backends.openai import OpenAIBackend

    be = OpenAIBackend("bench", base_url=url, api_key="bench", max_concurrency=concurrency, http_client=http_client)
    reqs = _LazyRequests(n)
    ok = 0
    async for _, res in be.stream(reqs):
        ok += res.ok
    await be.aclose()
    return ok


async def run_plain(url: str, n: int, concurrency: int) -> int:
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, http_client=httpx.AsyncClient(limits=limits))
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with sem:
            m = _messages(i)
            try:
                r = await client.chat.completions.create(model="bench", messages=m, max_tokens=16)  # type: ignore[arg-type]
                return bool(r.choices[0].message.content)
            except Exception:
                return False

    ok = sum(await asyncio.gather(*(one(i) for i in range(n))))
    await client.close()
    return ok


def measure(impl: str, url: str, n: int, concurrency: int) -> dict[str, float]:
    """In this (fresh) process: import, then time the run; peak RSS covers the whole process."""
    import openai  # noqa: F401  - imports are not part of the timing

    if impl == "plain":
        coro = run_plain(url, n, concurrency)
    else:
        import evolkit.backends.openai  # noqa: F401

        if impl.endswith("aiohttp"):
            import aiohttp  # noqa: F401
        coro = run_evolkit(url, n, concurrency, http_client=impl.partition("-")[2] or "auto")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    ok = asyncio.run(coro)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "n": n, "ok": ok, "wall_s": wall, "cpu_s": cpu, "rps": n / wall, "peak_rss_mb": peak,
            "rss_after_imports_mb": rss0}


def _measure_in_subprocess(impl: str, url: str, n: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", impl, "--url", url, "--n", str(n), "--concurrency", str(concurrency)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


CLIENTS = ["plain", "evolkit", "evolkit-lean", "evolkit-aiohttp", "evolkit-sdk"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--big", action="store_true", help="add N = 32000")
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the best wall and CPU times are reported")
    ap.add_argument("--clients", nargs="+", choices=CLIENTS, default=["plain", "evolkit"],
                    help="evolkit: OpenAIBackend as configured by default (http_client auto); evolkit-X: with "
                         "http_client X")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure", choices=CLIENTS, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(0))
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args.url, args.n[0], args.concurrency)))
        return
    ns = list(args.n) + ([32000] if args.big else [])
    server, url = start_server()
    rows = []
    try:
        _measure_in_subprocess("plain", url, 200, args.concurrency)  # warm up the server and the page cache
        for n in ns:
            cell = {}
            runs_of: dict[str, list[dict[str, float]]] = {impl: [] for impl in args.clients}
            for _ in range(args.repeat):  # the clients take turns, so a change in the machine's load hits them alike
                for impl in args.clients:
                    runs_of[impl].append(_measure_in_subprocess(impl, url, n, args.concurrency))
            for impl, runs in runs_of.items():
                best = min(runs, key=lambda r: r["wall_s"])
                best["cpu_s"] = min(r["cpu_s"] for r in runs)
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                cell[impl] = best
                assert best["ok"] == n, f"{impl}: only {best['ok']} of {n} requests succeeded"
            rows.append((n, cell))
    finally:
        server.terminate()
        server.wait()
    cpus = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    first = args.clients[0]
    print(f"\nOpenAI-compatible client overhead, instant local stub, concurrency {args.concurrency}, {cpus} CPUs, "
          f"best of {args.repeat}, load average at the end {load}")
    print(f"{'N':>7} {'client':>16} {'wall s':>8} {'CPU s':>7} {'req/s':>8} {'peak RSS MB':>12} "
          f"{'RSS after imports':>18} {'wall / ' + first:>22}")
    for n, cell in rows:
        for impl in args.clients:
            r = cell[impl]
            ratio = f"{r['wall_s'] / cell[first]['wall_s']:.2f}x"
            print(f"{n:>7} {impl:>16} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} {r['rps']:>8.0f} {r['peak_rss_mb']:>12.1f} "
                  f"{r['rss_after_imports_mb']:>18.1f} {ratio:>22}")


if __name__ == "__main__":
    main()
