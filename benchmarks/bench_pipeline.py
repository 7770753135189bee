"""Throughput of evolkit's generation path end to end, against a local OpenAI-compatible stub in its own process.

Two measurements (each in a fresh subprocess; the stub server in another):

* ``latency``: latency hiding. The stub answers every request after ``--latency`` seconds (100 ms); N requests
  (2000) go through ``OpenAIBackend.stream`` with ``--concurrency`` (256) in flight. Ideal wall time is
  N x latency / concurrency; the ratio to it is printed (target: within 1.3x). A plain ``AsyncOpenAI`` loop at the same
  concurrency and a bare-sockets client (no HTTP library: the floor of this machine) are measured beside it.
* ``evolve``: one full Evol-Instruct round through the real stage code (``evolkit.stages.evolve``, run store, request
  cache, prompts, parsing, text rules, decontamination against the GSM8k/MATH test sets, dedup, the teacher's k
  answers, answer extraction and majority vote with the answer checker, writes). The stub writes a new problem for an
  evolution prompt and a step-by-step solution whose final answer mostly agrees across samples for a solve prompt.
  Prints records/s (kept problems and requests per second) and where the time goes: a pyinstrument profile of the
  driver process, its top functions by own time, and the time per phase. Peak RSS is of the whole process tree
  (driver + answer-checker workers), sampled every 200 ms.

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py latency [--n 2000] [--latency 0.1] [--concurrency 256] [--repeat 3]
    .venv/bin/python benchmarks/bench_pipeline.py evolve [--seeds 2000] [--k 4] [--repeat 3] [--top 25]
        [--profiler py-spy|pyinstrument|none]   (the last run is profiled; the others give the timings)

The seeds are GSM8k train problems from the shared data (``EVOLKIT_DATA`` or ../shared/data).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stub_server import chat_completion, http_ok, read_request  # noqa: E402  (benchmarks/ is the script's folder)

WORDS = (
    "apple river stone garden window candle market ladder basket pencil bridge forest harbor cookie marble ticket "
    "wagon lantern meadow orchard engine rocket violin puzzle castle island canyon glacier valley tunnel station "
    "library museum bakery workshop factory farmer painter sailor baker pilot teacher doctor student runner "
    "climber driver weaver tailor carpenter blue green amber silver golden quiet rapid narrow distant ancient "
    "modern hollow bright gentle steady crowded empty heavy light square round"
).split()


# -- the stub server ---------------------------------------------------------------------------------------------------
def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _reply(body: dict, i: int) -> str:
    msgs = body.get("messages") or []
    system = next((m["content"] for m in msgs if m.get("role") == "system"), "")
    last = msgs[-1]["content"] if msgs else body.get("prompt", "")
    if system.startswith("You write math problems"):  # an evolution prompt: a new problem
        h = _h("evolve", last, body.get("seed"), i)
        words = [WORDS[(h >> (3 * j)) % len(WORDS)] for j in range(14)]
        a, b, c = 3 + h % 89, 2 + (h >> 7) % 53, 2 + (h >> 13) % 11
        return (f"A {words[0]} {words[1]} near the {words[2]} {words[3]} holds {a} {words[4]}s and {b} {words[5]}s. "
                f"Each {words[6]} {words[7]} adds {c} more {words[8]}s to the {words[9]} {words[10]}, and the "
                f"{words[11]} {words[12]} takes away {c + 1}. How many {words[13]}s are there in the end?")
    # A solve prompt: the final answer agrees across most samples of the same question.
    h = _h("solve", last)
    ans = h % 97 if _h("agree", last, i) % 10 < 8 else h % 97 + 1 + _h("d", last, i) % 5
    return (f"Step 1: Read the numbers in the problem ({len(last)} characters).\n\n"
            f"Step 2: Combine them step by step: {h % 13} + {h % 17} = {h % 13 + h % 17}.\n\n"
            f"Step 3: Finish the computation.\n\nThe answer is: {ans}")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float, smart: bool) -> None:
    fixed = None
    try:
        while True:
            _, body = await read_request(reader)
            if latency:
                await asyncio.sleep(latency)
            if smart:
                req = json.loads(body)
                n = int(req.get("n") or 1)
                payload = chat_completion([_reply(req, i) for i in range(n)], prompt_tokens=len(body) // 4)
            else:
                if fixed is None:
                    fixed = chat_completion(["Step 1: 2 + 2 = 4.\n\nThe answer is: 4"], completion_tokens=12)
                payload = fixed
            writer.write(http_ok(payload))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(latency: float, smart: bool) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, latency, smart), "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def start_server(latency: float, smart: bool) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, __file__, "--serve", "--latency", str(latency)] + (["--smart"] if smart else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"


# -- process-tree memory -----------------------------------------------------------------------------------------------
class TreeRSS:
    """Peak RSS (MiB) of this process plus all its descendants, sampled every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        import psutil

        total = 0
        for p in [self.proc] + self.proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        mb = total / 2**20
        self.peak = max(self.peak, mb)
        return mb

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> TreeRSS:
        self.sample()
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


# -- latency hiding ----------------------------------------------------------------------------------------------------
async def _evolkit_sdk_loop(url: str, n: int, concurrency: int) -> int:
    return await _evolkit_loop(url, n, concurrency, http_client="sdk")


async def _evolkit_aiohttp_loop(url: str, n: int, concurrency: int) -> int:
    return await _evolkit_loop(url, n, concurrency, http_client="aiohttp")


async def _evolkit_loop(url: str, n: int, concurrency: int, http_client: str = "auto") -> int:
    from evolkit.backends import Request, Sampling
    from evolkit.backends.openai import OpenAIBackend

    be = OpenAIBackend("stub", base_url=url, api_key="bench", max_concurrency=concurrency, http_client=http_client)
    sampling = Sampling(max_tokens=16)
    reqs = [Request([{"role": "user", "content": f"What is {i} + {i}?"}], sampling) for i in range(n)]
    ok = 0
    async for _, res in be.stream(reqs):
        ok += res.ok
    await be.aclose()
    return ok


async def _plain_loop(url: str, n: int, concurrency: int) -> int:
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, http_client=httpx.AsyncClient(limits=limits))
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with sem:
            try:
                r = await client.chat.completions.create(
                    model="stub", messages=[{"role": "user", "content": f"What is {i} + {i}?"}], max_tokens=16)
                return bool(r.choices[0].message.content)
            except Exception:
                return False

    ok = sum(await asyncio.gather(*(one(i) for i in range(n))))
    await client.close()
    return ok


async def _socket_loop(url: str, n: int, concurrency: int) -> int:
    """The floor: ``concurrency`` keep-alive sockets sending the same requests with no HTTP library at all (what the
    machine's sockets and event loop allow)."""
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    it = iter(range(n))
    ok = 0

    async def conn() -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in it:
            body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
                               "max_tokens": 16}).encode()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: stub\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
            ok += bool(json.loads(await reader.readexactly(length))["choices"][0]["message"]["content"])
        writer.close()

    await asyncio.gather(*(conn() for _ in range(min(concurrency, n))))
    return ok


CLIENTS = {"evolkit": "_evolkit_loop", "evolkit-aiohttp": "_evolkit_aiohttp_loop", "evolkit-sdk": "_evolkit_sdk_loop",
           "plain": "_plain_loop", "sockets": "_socket_loop"}


def measure_latency(impl: str, url: str, n: int, concurrency: int) -> dict:
    import evolkit.backends.openai  # noqa: F401  (imports outside the timing)
    import openai  # noqa: F401

    if impl == "evolkit-aiohttp":
        import aiohttp  # noqa: F401

    fn = globals()[CLIENTS[impl]]
    with TreeRSS() as mem:
        t0 = time.perf_counter()
        ok = asyncio.run(fn(url, n, concurrency))
        wall = time.perf_counter() - t0
    return {"impl": impl, "n": n, "ok": ok, "wall_s": wall, "peak_tree_rss_mb": mem.peak}


def cmd_latency(args: argparse.Namespace) -> None:
    server, url = start_server(args.latency, smart=False)
    try:
        _sub(["--measure-latency", "plain", "--url", url, "--n", "200", "--concurrency", str(args.concurrency)])
        runs: dict[str, list[dict]] = {impl: [] for impl in args.clients}
        for _ in range(args.repeat):
            for impl in args.clients:
                r = _sub(["--measure-latency", impl, "--url", url, "--n", str(args.n),
                          "--concurrency", str(args.concurrency)])
                assert r["ok"] == args.n, r
                runs[impl].append(r)
    finally:
        server.terminate()
        server.wait()
    ideal = args.n * args.latency / args.concurrency
    print(f"\nlatency hiding: stub latency {args.latency * 1000:.0f} ms, N = {args.n}, {args.concurrency} in flight, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.repeat} runs (median)")
    print(f"ideal N x latency / concurrency = {ideal:.3f} s")
    print(f"{'client':>11} {'wall s (median)':>16} {'min':>7} {'max':>7} {'x ideal':>8} {'req/s':>8} "
          f"{'tree RSS MB':>12}")
    for impl in args.clients:
        walls = [r["wall_s"] for r in runs[impl]]
        med = statistics.median(walls)
        print(f"{impl:>11} {med:>16.3f} {min(walls):>7.3f} {max(walls):>7.3f} {med / ideal:>8.2f} {args.n / med:>8.0f} "
              f"{max(r['peak_tree_rss_mb'] for r in runs[impl]):>12.1f}")


# -- one evolve round --------------------------------------------------------------------------------------------------
def _seed_file(out: Path, n: int) -> Path:
    from evolkit.settings import data_dir

    src = data_dir() / "gsm8k" / "train.jsonl"
    if not src.exists():
        raise SystemExit(f"{src}: shared data not found (set EVOLKIT_DATA)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return out


def _top_functions(session, top: int) -> list[tuple[float, str]]:
    """pyinstrument: own (wall) time per function over the whole profile, biggest first."""
    own: dict[str, float] = {}

    def walk(frame) -> None:
        key = f"{frame.function} ({Path(frame.file_path or '?').name}:{frame.line_no})"
        if frame.function and not frame.is_synthetic:
            own[key] = own.get(key, 0.0) + frame.total_self_time
        for c in frame.children:
            walk(c)

    walk(session.root_frame())
    return sorted(((t, k) for k, t in own.items()), reverse=True)[:top]


#: Functions whose inclusive on-CPU time is reported as the phases of a round.
PHASES = [
    ("Engine.evolve", "evolution requests (prompts, client, rows, writes)"),
    ("Decontaminator.match_many", "decontamination of the children"),
    ("Deduper.check", "dedup against the pool"),
    ("solve_problems", "answering requests (prompts, client, parsing, checking, writes)"),
    ("majority_answer", "majority vote (answer clustering)"),
    ("RunStore.finish", "final outputs (Parquet, summary)"),
    ("Engine.setup_decontamination", "decontamination index (test sets)"),
    ("CachedBackend.stream", "request cache (SQLite get/put) + the client inside it"),
    ("RequestCache.get", "  cache lookups"),
    ("RequestCache.put", "  cache writes"),
    ("OpenAIBackend._call", "  HTTP client (openai SDK + httpx)"),
    ("ShardWriter.write", "shard writes (JSON, scrub, flush, fsync)"),
    ("solution_rows", "solution rows (extract, check, split steps, records)"),
    ("build_messages", "solve prompts"),
    ("Progress.update", "progress"),
]


def _pyspy_profile(path: Path, top: int) -> dict:
    """Aggregate a py-spy raw (collapsed stacks) file: own samples per function and inclusive samples of PHASES, per
    process (the driver vs. the answer checker's workers)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    driver_total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n_ = int(n)
        frames = stack.split(";")
        total += n_
        is_driver = not any("forkserver" in f or "_worker_main" in f for f in frames)
        if is_driver:
            driver_total += n_
        leaf = frames[-1]
        name = leaf.split(" (")[0]
        where = leaf[leaf.find("(") + 1: leaf.rfind(")")] if "(" in leaf else "?"
        key = f"{name} ({Path(where.split(':')[0]).name}:{where.rsplit(':', 1)[-1]})"
        if not is_driver:
            key = "[checker worker] " + key
        own[key] = own.get(key, 0) + n_
        seen = set()
        for f in frames:
            fn = f.split(" (")[0]
            for ph, _ in PHASES:
                if ph not in seen and (fn == ph or fn.endswith("." + ph) or fn == ph.split(".")[-1] and "." not in ph):
                    seen.add(ph)
                    incl[ph] = incl.get(ph, 0) + n_
    return {"samples": total, "driver_samples": driver_total,
            "top": sorted(((v, k) for k, v in own.items()), reverse=True)[:top], "phases": incl}


def measure_evolve(url: str, seeds: int, k: int, profiler: str, top: int, workdir: str) -> dict:
    import logging
    import signal

    # Imports are not part of the timing.
    import datasketch  # noqa: F401
    import httpx  # noqa: F401
    import openai  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import evolkit.backends.openai  # noqa: F401
    from evolkit.config import RunConfig
    from evolkit.pipeline import Context, run_stage

    logging.basicConfig(level=logging.WARNING)
    work = Path(workdir)
    seed_path = _seed_file(work / "seeds" / "train.jsonl", seeds)
    cfg = RunConfig.model_validate({
        "name": "bench-evolve",
        "backend": {"kind": "openai", "model": "stub", "base_url": url, "max_concurrency": 128},
        "sampling": {"max_tokens": 256},
        "seeds": [{"source": "gsm8k", "path": str(seed_path.parent)}],
        "stages": {"evolve": {"rounds": [{"pool": "seeds", "children_per_parent": 1.0}], "k": k, "plots": False,
                              "max_topups": 0, "decontamination": {"required": False}}},
    })
    run_dir = work / "run"
    out: dict = {}
    with TreeRSS() as mem, Context.open(cfg, run_dir, show_progress=False) as ctx:
        ctx.seeds()
        ctx.checker().check_many([("1", "1.0"), ("x^2", "x**2")])  # start the checker's workers outside the timing
        prof = spy = None
        spy_out = work / "pyspy.txt"
        if profiler == "pyinstrument":
            from pyinstrument import Profiler

            prof = Profiler(interval=0.002, async_mode="disabled")
            prof.start()
        elif profiler == "py-spy":
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--subprocesses", "--format", "raw",
                                    "-r", "200", "-o", str(spy_out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # let it attach
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        summary = run_stage(ctx, "evolve")
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.stop()
            session = prof.last_session
            out["profile_top"] = [(round(t_, 3), name) for t_, name in _top_functions(session, top)]
            out["profile_total_s"] = session.duration
            (work / "profile.txt").write_text(prof.output_text(unicode=False, color=False, show_all=False))
            out["profile_file"] = str(work / "profile.txt")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(120)
            if spy_out.exists():
                out["pyspy"] = _pyspy_profile(spy_out, top)
                out["profile_file"] = str(spy_out)
        stats = {k2: dict(be.stats.__dict__) for k2, be in ctx._backends.items()}
    requests = sum(s["requests"] for s in stats.values())
    out.update({
        "seeds": seeds, "k": k, "wall_s": wall, "driver_cpu_s": cpu, "kept": summary["evolved"],
        "requested_children": summary["requested"], "requests": requests, "eliminated": summary["eliminated"],
        "peak_tree_rss_mb": mem.peak,
    })
    return out


def cmd_evolve(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    profiler = args.profiler
    if profiler == "py-spy" and not shutil.which("py-spy"):
        profiler = "pyinstrument"
    server, url = start_server(0.0, smart=True)
    runs = []
    try:
        for r in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-evolve-") as tmp:
                runs.append(_sub(["--measure-evolve", "--url", url, "--seeds", str(args.seeds), "--k", str(args.k),
                                  "--top", str(args.top), "--workdir", tmp,
                                  "--profiler", profiler if r == args.repeat - 1 else "none"]))
                if "profile_file" in runs[-1]:
                    keep = Path(args.profile_out)
                    keep.write_text(Path(runs[-1]["profile_file"]).read_text())
                    runs[-1]["profile_file"] = str(keep)
    finally:
        server.terminate()
        server.wait()
    plain = [r for r in runs if "pyspy" not in r and "profile_top" not in r] or runs
    walls = [r["wall_s"] for r in plain]
    med = statistics.median(walls)
    r0 = runs[0]
    print(f"\nevolve round on the stub: {args.seeds} GSM8k seeds, k = {args.k}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; {len(plain)} unprofiled run(s)"
          + (", then one profiled" if profiler != "none" and len(runs) > len(plain) else ""))
    print(f"  children requested {r0['requested_children']}, kept {r0['kept']}, requests {r0['requests']} "
          f"(eliminated: {r0['eliminated']})")
    print(f"  wall {med:.2f} s (median of {', '.join(f'{w:.2f}' for w in walls)}); driver CPU "
          f"{statistics.median(r['driver_cpu_s'] for r in plain):.2f} s")
    print(f"  kept problems/s {r0['kept'] / med:.1f}   requests/s {r0['requests'] / med:.1f}   "
          f"completions/s {(r0['requested_children'] + r0['kept'] * args.k) / med:.1f}   "
          f"(per driver CPU second: {r0['requests'] / statistics.median(r['driver_cpu_s'] for r in plain):.1f} "
          f"requests)")
    print(f"  peak RSS of the process tree {max(r['peak_tree_rss_mb'] for r in runs):.0f} MB")
    prof = runs[-1]
    if "pyspy" in prof:
        p = prof["pyspy"]
        rate = 200.0
        print(f"  py-spy profile of the last run (on-CPU samples at {rate:.0f} Hz: {p['samples'] / rate:.2f} CPU s, of "
              f"which driver {p['driver_samples'] / rate:.2f} s; raw stacks in {prof['profile_file']})")
        print("  phases (inclusive CPU s in the driver and its share of the driver's CPU):")
        for ph, label in PHASES:
            v = p["phases"].get(ph, 0)
            print(f"    {v / rate:7.2f} s  {100 * v / max(1, p['driver_samples']):5.1f}%  {ph}: {label}")
        print(f"  top {args.top} functions by own CPU time:")
        for v, name in p["top"]:
            print(f"    {v / rate:7.2f} s  {100 * v / max(1, p['samples']):5.1f}%  {name}")
    elif "profile_top" in prof:
        print(f"  pyinstrument profile of the last run ({prof['profile_total_s']:.2f} s wall; tree in "
              f"{prof['profile_file']}): top {args.top} functions by own wall time")
        for t_, name in prof["profile_top"]:
            print(f"    {t_:7.3f} s  {100 * t_ / prof['profile_total_s']:5.1f}%  {name}")


# -- plumbing ----------------------------------------------------------------------------------------------------------
def _sub(extra: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__] + extra, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["latency", "evolve"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--profiler", choices=["py-spy", "pyinstrument", "none"], default="py-spy",
                    help="profiler of the last evolve run (py-spy: on-CPU samples of the driver and the checker "
                         "workers; falls back to pyinstrument when py-spy is not installed)")
    ap.add_argument("--profile-out", default=str(Path(tempfile.gettempdir()) / "evolkit-bench-evolve-profile.txt"))
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smart", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clients", nargs="+", choices=list(CLIENTS), default=["evolkit", "sockets", "plain"],
                    help="latency: clients to compare (evolkit-sdk / evolkit-aiohttp: OpenAIBackend with http_client sdk / "
                         "aiohttp; sockets: raw "
                         "keep-alive sockets, no HTTP library, the floor)")
    ap.add_argument("--measure-latency", choices=list(CLIENTS), help=argparse.SUPPRESS)
    ap.add_argument("--measure-evolve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.latency, args.smart))
    elif args.measure_latency:
        print(json.dumps(measure_latency(args.measure_latency, args.url, args.n, args.concurrency)))
    elif args.measure_evolve:
        print(json.dumps(measure_evolve(args.url, args.seeds, args.k, args.profiler, args.top, args.workdir)))
    elif args.what == "latency":
        cmd_latency(args)
    elif args.what == "evolve":
        cmd_evolve(args)
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
