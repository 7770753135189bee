"""The paper's scale on one machine: the default 8-round Evol-Instruct schedule from the full GSM8k + MATH train sets
(~15k seeds) to ~96k problems, k = 4 answers each, on an instant content-aware stub; then the same run killed during
round 5 and resumed, which must end with the same outputs.

Everything the evolve stage does runs for real: evolution prompts, text rules, decontamination against the GSM8k test,
MATH test and MATH500 sets, exact + MinHash dedup over the whole pool, the teacher's k answers, answer extraction and
majority vote with the answer checker, the request cache, shards, and the Parquet outputs. The stub
(``benchmarks/stub_server.py``) writes a new word problem with numbers for an evolution prompt and a step-by-step
solution whose final answer agrees across most samples for a solve prompt, so the growth plan holds.

Printed: wall time of the uninterrupted run, requests/s and completions/s (counted at the stub), peak RSS of the run's
process tree (the CLI process and its answer-checker workers; sampled every 0.2 s), the growth reached, then the kill
(when round 5's answers are being written), the resumed run's time, the requests it sent again, and the comparison of
every output row for row with the uninterrupted run. Goals: <= 15 min and <= 1 GiB peak RSS on 2 cores.

Usage (long: run it by hand)::

    EVOLKIT_DATA=/path/to/shared/data .venv/bin/python benchmarks/bench_scale.py [--work DIR] [--concurrency 128]
        [--kill-round 5] [--kill-lines 2000] [--no-kill] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_memory import TreePeak  # noqa: E402
from benchmarks.stub_server import Stub  # noqa: E402

CONFIG = """\
name: bench-scale
seed: 0
backend: {{kind: openai, model: stub, base_url: "{url}", api_key_env: BENCH_STUB_KEY, max_concurrency: {concurrency}}}
sampling: {{temperature: 0.7, max_tokens: 512}}
seeds:
  - {{source: gsm8k, path: "{{data}}/gsm8k/train.jsonl"}}
  - {{source: math, path: "{{data}}/math/train.jsonl"}}
stages:
  evolve:
    k: 4
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_STUB_KEY": "bench"}


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "evolkit.cli", *args, "--no-progress"]


def timed_run(args: list[str], kill_when: object = None, profile: Path | None = None) -> dict:
    """Run the CLI in its own process group; sample its tree's RSS; kill it (SIGKILL to the group) when
    ``kill_when()`` turns true; with ``profile``, record it with py-spy (raw stacks, 50 Hz, with its checker workers).
    Returns wall time, peak RSS and whether it was killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(_cli(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    mem = TreePeak(proc.pid, every=0.2)
    spy = None
    if profile is not None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen([exe, "record", "--pid", str(proc.pid), "--subprocesses", "--format", "raw", "-r",
                                str(SPY_RATE), "-o", str(profile)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    if kill_when is not None:
        while proc.poll() is None:
            if kill_when():  # type: ignore[operator]
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
    _, err = proc.communicate()
    peak = mem.stop()
    wall = time.perf_counter() - t0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(300)
    if not killed and proc.returncode != 0:
        raise SystemExit(f"evolkit {' '.join(args)} failed ({proc.returncode}):\n{err.decode()[-4000:]}")
    return {"wall_s": wall, "peak_mib": peak, "killed": killed}


SPY_RATE = 50
#: Where the time goes (inclusive on-CPU seconds of these functions, from the py-spy stacks).
PHASES = [
    ("Engine.evolve", "evolution requests (prompts, client, rows, shard writes)"),
    ("solve_problems", "answer requests (prompts, client, answer extraction and checks, shard writes)"),
    ("OpenAIBackend._call", "  of which the HTTP client"),
    ("solution_rows", "  of which solution rows (extract, check, split steps, records)"),
    ("Eliminator.check", "text rules"),
    ("Decontaminator.match_many", "decontamination (filters)"),
    ("Deduper.check", "dedup against the pool (filters)"),
    ("Deduper.add", "seeds into the dedup index (filters)"),
    ("Engine.setup_decontamination", "decontamination index of the test sets (filters)"),
    ("majority_answer", "majority vote (answer checker)"),
    ("AnswerChecker.acheck_many", "answer checks from the event loop (answer checker)"),
    ("AnswerChecker.check_many", "all answer checks in the driver (answer checker)"),
    ("Engine._decide", "marking solutions, keep/eliminate records"),
    ("CachedBackend._lookup", "request cache lookups"),
    ("RequestCache.put", "request cache writes"),
    ("GroupReader.get", "reading records back from shards"),
    ("ShardWriter.write", "shard writes"),
    ("write_outputs", "final Parquet outputs"),
    ("Engine._close_round", "each round's kept problems (scratch Parquet)"),
]


def profile_summary(path: Path) -> list[str]:
    """Inclusive on-CPU seconds of :data:`PHASES` in the driver, and the checker workers' total."""
    incl: dict[str, int] = {}
    driver = workers = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if any("Condition.wait" in f or "select (" in f for f in frames[-2:]):
            continue  # idle helper threads (py-spy counts a thread waiting on a lock as busy)
        if any("forkserver" in f or "_worker_main" in f or "pebble" in f for f in frames):
            workers += int(n)
            continue
        driver += int(n)
        names = {f.split(" (")[0] for f in frames}
        for ph, _ in PHASES:
            if ph in names or any(x.endswith("." + ph) for x in names):
                incl[ph] = incl.get(ph, 0) + int(n)
    out = [f"profile (py-spy, {SPY_RATE} Hz): driver {driver / SPY_RATE:.0f} CPU s, answer-checker workers "
           f"{workers / SPY_RATE:.0f} CPU s; inclusive driver CPU by phase:"]
    for ph, label in PHASES:
        v = incl.get(ph, 0)
        out.append(f"  {v / SPY_RATE:7.1f} s {100 * v / max(1, driver):5.1f}%  {ph}: {label}")
    return out


def _lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        try:
            with open(p, "rb") as f:
                n += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            pass
    return n


def compare(a: Path, b: Path) -> list[str]:
    """Differences between the Parquet outputs (and the evolve summary's figures) of two run folders."""
    from evolkit.store import iter_parquet

    problems = []
    names = sorted({str(p.relative_to(a)) for p in a.glob("*/*.parquet")} |
                   {str(p.relative_to(b)) for p in b.glob("*/*.parquet")})
    for name in names:
        pa, pb = a / name, b / name
        if not (pa.exists() and pb.exists()):
            problems.append(f"{name}: only in {'the first' if pa.exists() else 'the second'} run")
            continue
        n = 0
        for n, (x, y) in enumerate(zip(iter_parquet(pa), iter_parquet(pb), strict=False), 1):
            if x != y:
                problems.append(f"{name}: row {n - 1} differs")
                break
        import pyarrow.parquet as pq

        ra, rb = pq.ParquetFile(pa).metadata.num_rows, pq.ParquetFile(pb).metadata.num_rows
        if ra != rb:
            problems.append(f"{name}: {ra} rows vs {rb}")
    sa, sb = (json.loads((d / "evolve" / "summary.json").read_text()) for d in (a, b))
    for key in ("rounds", "growth", "eliminated", "evolved", "requested"):
        if sa.get(key) != sb.get(key):
            problems.append(f"summary.json: {key} differs")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="folder for the two runs (default: a temporary folder, removed at the end)")
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--kill-round", type=int, default=5)
    ap.add_argument("--kill-lines", type=int, default=2000,
                    help="kill when the round's answer shard holds this many records")
    ap.add_argument("--no-kill", action="store_true", help="only the uninterrupted run")
    ap.add_argument("--profile", action="store_true",
                    help="record the uninterrupted run with py-spy and print where its time goes (slows it a little)")
    args = ap.parse_args()
    from evolkit.settings import data_dir

    if not (data_dir() / "gsm8k" / "train.jsonl").exists():
        raise SystemExit(f"{data_dir()}: shared data not found (set EVOLKIT_DATA)")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, Stub() as stub:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cfg = work / "scale.yaml"
        cfg.write_text(CONFIG.format(url=stub.url, concurrency=args.concurrency))
        load0 = os.getloadavg()
        print(f"bench_scale: default 8-round schedule, k = 4, {os.cpu_count()} CPUs, load at start "
              f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f}", flush=True)

        # 1. The uninterrupted run.
        ref = work / "ref"
        s0 = stub.stats()
        prof = work / "pyspy.txt" if args.profile else None
        r = timed_run(["evolve", str(cfg), "-o", str(ref)], profile=prof)
        s1 = stub.stats()
        req, comp = s1["requests"] - s0["requests"], s1["completions"] - s0["completions"]
        summary = json.loads((ref / "evolve" / "summary.json").read_text())
        seconds = json.loads((ref / "manifest.json").read_text())["stages"]
        print(f"uninterrupted: wall {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min; seeds stage "
              f"{seconds['seeds'].get('seconds', 0):.0f} s, evolve {seconds['evolve'].get('seconds', 0):.0f} s), "
              f"{req} requests ({req / r['wall_s']:.0f}/s), {comp} completions ({comp / r['wall_s']:.0f}/s), "
              f"peak tree RSS {r['peak_mib']:.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True)
        print(f"  seeds {summary['seeds']} -> pool {summary['pool']} (growth {summary['growth']['achieved']}x, planned "
              f"{summary['growth']['planned']}x); children requested {summary['requested']}; eliminated "
              f"{summary['eliminated']}", flush=True)
        for rd in summary["rounds"]:
            print(f"  round {rd['round']}: pool {rd['pool']:>8}, parents {rd['parents']:>6}, requested "
                  f"{rd['requested']:>6}, kept {rd['kept']:>6} (planned {rd['planned']:.0f}), passes {rd['passes']}")
        if prof is not None and prof.exists():
            print("\n".join(profile_summary(prof)) + f"\n  (raw stacks: {prof})", flush=True)
        if args.no_kill:
            return

        # 2. The same run killed during round `kill_round` (while its answers are written), then resumed.
        killed = work / "killed"
        shard_glob = f"round{args.kill_round:02d}_solutions.shard-*.jsonl"
        s0 = stub.stats()
        k = timed_run(["evolve", str(cfg), "-o", str(killed)],
                      kill_when=lambda: _lines(sorted((killed / "evolve").glob(shard_glob))) >= args.kill_lines)
        at = _lines(sorted((killed / "evolve").glob(shard_glob)))
        s1 = stub.stats()
        print(f"killed: SIGKILL after {k['wall_s']:.0f} s with {at} round-{args.kill_round} answer records written "
              f"(killed: {k['killed']}); {s1['requests'] - s0['requests']} requests so far; peak tree RSS "
              f"{k['peak_mib']:.0f} MiB", flush=True)
        res = timed_run(["evolve", "-o", str(killed), "--resume"])
        s2 = stub.stats()
        total = s2["requests"] - s0["requests"]
        print(f"resumed: wall {res['wall_s']:.0f} s, {s2['requests'] - s1['requests']} requests; killed + resumed sent "
              f"{total} requests vs {req} uninterrupted ({total - req:+d} sent again); peak tree RSS "
              f"{res['peak_mib']:.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True)
        diffs = compare(ref, killed)
        if diffs:
            print("outputs DIFFER from the uninterrupted run:\n  " + "\n  ".join(diffs))
            raise SystemExit(1)
        n = sum(1 for _ in ref.glob("*/*.parquet"))
        print(f"outputs: the {n} Parquet files of the killed + resumed run equal the uninterrupted run's row for row")


if __name__ == "__main__":
    main()
