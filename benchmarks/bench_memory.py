"""Peak memory of the sft stage and of one evolve round as the number of seed problems grows (target: flat).

For each size (default 2,000 / 32,000 / 128,000 problems) the benchmark writes a synthetic GSM8k-style seed file
(unique problems with a ``#### N`` gold answer, see ``benchmarks/stub_server.py``), runs the seeds stage, then, each in
its own process, ``evolkit sft`` (k = 1) and ``evolkit evolve`` (one round: 0.675 children per seed, k = 4 answers,
decontamination against the GSM8k / MATH test sets, dedup, the Parquet outputs) against an instant content-aware
stub server. The peak RSS of the stage's whole process tree (the CLI process and its answer-checker workers; the stub
runs outside it) is sampled every 50 ms. Printed: peak tree RSS per size and stage, wall time, and the growth from the
first size to the others (target: <= 30 MiB from 2k to 32k, bounded at 128k).

Usage::

    .venv/bin/python benchmarks/bench_memory.py [--sizes 2000 32000 128000] [--stages sft evolve] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stub_server import Stub, write_seed_file  # noqa: E402

CONFIG = """\
name: bench-memory
seed: 0
backend: {{kind: openai, model: stub, base_url: "{url}", api_key_env: BENCH_STUB_KEY, max_concurrency: 128}}
sampling: {{temperature: 0.7, max_tokens: 256}}
seeds:
  - {{source: gsm8k, path: "{seeds}"}}
stages:
  sft: {{k: 1, fewshot: 2}}
  evolve:
    rounds: [{{pool: seeds, children_per_parent: 0.675}}]
    k: 4
    plots: false
{dedup}"""


class TreePeak:
    """Peak RSS (MiB) of process ``pid`` plus all its descendants, sampled every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.05):
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def sample(self) -> None:
        import psutil

        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total / 2**20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_STUB_KEY": "bench"}


def run_seeds(cfg: Path, run_dir: Path) -> None:
    code = ("import sys; from evolkit.config import load_config; from evolkit.pipeline import Context, run_stage\n"
            "with Context.open(load_config(sys.argv[1]), sys.argv[2], show_progress=False) as ctx:\n"
            "    run_stage(ctx, 'seeds')\n")
    subprocess.run([sys.executable, "-c", code, str(cfg), str(run_dir)], env=_env(), check=True)


def measure_stage(stage: str, cfg: Path, run_dir: Path) -> dict:
    """``evolkit <stage> --resume`` in its own process; returns wall time and the peak RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "evolkit.cli", stage, str(cfg), "-o", str(run_dir), "--resume",
                             "--no-progress"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mem = TreePeak(proc.pid)
    _, err = proc.communicate()
    peak = mem.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"evolkit {stage} failed ({proc.returncode}):\n{err.decode()[-4000:]}")
    info = json.loads((run_dir / "manifest.json").read_text())["stages"][stage]
    return {"stage": stage, "peak_mib": peak, "wall_s": wall, "requests": info.get("requests", {}).get("requests"),
            "outputs": {k: v["rows"] for k, v in info.get("outputs", {}).items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 32000, 128000])
    ap.add_argument("--stages", nargs="+", choices=["sft", "evolve"], default=["sft", "evolve"])
    ap.add_argument("--no-near-dedup", action="store_true",
                    help="evolve without MinHash near-dedup (exact dedup stays): isolates the dedup index's share")
    ap.add_argument("--keep", help="keep the run folders under this folder (default: a temporary folder, removed)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, Stub() as stub:
        base = Path(args.keep) if args.keep else Path(tmp)
        for n in args.sizes:
            work = base / f"n{n}"
            seeds = write_seed_file(work / "seeds" / "train.jsonl", n)
            cfg = work / "config.yaml"
            dedup = "    dedup: {near_threshold: null}\n" if args.no_near_dedup else ""
            cfg.write_text(CONFIG.format(url=stub.url, seeds=seeds, dedup=dedup))
            run_dir = work / "run"
            run_seeds(cfg, run_dir)
            results[n] = {}
            for stage in args.stages:
                r = measure_stage(stage, cfg, run_dir)
                results[n][stage] = r
                print(f"  n={n:>7} {stage:>6}: peak tree RSS {r['peak_mib']:7.1f} MiB, {r['wall_s']:7.1f} s, "
                      f"{r['requests']} requests, outputs {r['outputs']} (load {os.getloadavg()[0]:.1f})",
                      flush=True)

    first = args.sizes[0]
    print(f"\npeak RSS of the stage's process tree (MiB), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'stage':>7} " + " ".join(f"{n:>10}" for n in args.sizes) + "   growth from " + f"{first}")
    for stage in args.stages:
        peaks = [results[n][stage]["peak_mib"] for n in args.sizes]
        growth = ", ".join(f"{n}: {p - peaks[0]:+.1f}" for n, p in zip(args.sizes[1:], peaks[1:]))
        print(f"{stage:>7} " + " ".join(f"{p:>10.1f}" for p in peaks) + f"   {growth}")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
