"""Throughput of evolkit.answers on real data: extract the final answer from a solution, then check it against the gold.

Workloads (each with a fresh AnswerChecker, so no cache carries over; worker start-up is excluded from the timing):

* ``math-self``     MATH train+test reference solutions vs their own golds (the default checker: fast path on);
* ``math-sympy``    the same pairs with ``fast_path=False``: every pair goes through math-verify in the pool;
* ``math-cross``    each solution's answer vs the *next* problem's gold (mostly mismatches, mostly math-verify);
* ``gsm8k-self``    GSM8k train+test reference answers vs their golds;
* ``gsm8k-samples`` the GSM8k paper's 4 x 1319 model samples vs the test golds;
* ``prm800k``       the 306 final answers of PRM800K phase-1 test (GPT-4 samples on MATH500) vs the MATH500 golds.

Usage: python benchmarks/bench_answers.py [--workers 2] [--limit N] [--only NAME ...]
Prints one line per workload: items, unique pairs sent to the pool, wall seconds, items/s, fast-path share, CPU
seconds of the parent and of the pool, an estimate of items/s on idle cores (CPU-based, so comparable across runs on a
busy machine), and the verdict counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolkit.answers import AnswerChecker, extract_answer, gsm8k_gold, math_gold  # noqa: E402
from evolkit.settings import data_dir  # noqa: E402


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _workloads(d: Path, limit: int | None) -> dict[str, list[tuple[str, str | None]]]:
    """name -> list of (model/reference text, gold); answers are extracted inside the timed region."""
    math_rows = _jsonl(d / "math" / "train.jsonl") + _jsonl(d / "math" / "test.jsonl")
    gsm_rows = _jsonl(d / "gsm8k" / "train.jsonl") + _jsonl(d / "gsm8k" / "test.jsonl")
    if limit:
        math_rows, gsm_rows = math_rows[:limit], gsm_rows[:limit]
    math_golds = [math_gold(r["solution"]) for r in math_rows]
    w: dict[str, list[tuple[str, str | None]]] = {}
    w["math-self"] = [(r["solution"], g) for r, g in zip(math_rows, math_golds)]
    w["math-sympy"] = w["math-self"]
    w["math-cross"] = [(r["solution"], math_golds[(i + 1) % len(math_golds)]) for i, r in enumerate(math_rows)]
    w["gsm8k-self"] = [(r["answer"], gsm8k_gold(r["answer"])) for r in gsm_rows]
    samples_path = d / "gsm8k" / "example_model_solutions.jsonl"
    if samples_path.exists():
        test = _jsonl(d / "gsm8k" / "test.jsonl")
        keys = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
        w["gsm8k-samples"] = [
            (s[k]["solution"], gsm8k_gold(t["answer"])) for s, t in zip(_jsonl(samples_path), test) for k in keys
        ][: (limit * 4 if limit else None)]
    prm_path = d / "prm800k" / "phase1_test.stepwise-critic.jsonl"
    if prm_path.exists():
        golds = {r["problem"]: math_gold(r["solution"]) for r in _jsonl(d / "math" / "math500_test.jsonl")}
        w["prm800k"] = [
            (f"The answer is: {r['answer']}", golds.get(r["instruction"]))
            for r in _jsonl(prm_path)
            if r["answer"] is not None
        ]
    return w


def run(name: str, items: list[tuple[str, str | None]], workers: int, timeout: float) -> dict:
    with AnswerChecker(workers=workers, timeout=timeout, fast_path=(name != "math-sympy")) as ch:
        ch.check_many([("x^2-1", "(x-1)(x+1)")] * 1)  # start the pool outside the timed region
        ch.stats.clear()
        c0 = time.process_time()
        t0 = time.perf_counter()
        pairs = [(extract_answer(text), gold) for text, gold in items]
        t_extract = time.perf_counter() - t0
        res = ch.check_many(pairs)
        dt = time.perf_counter() - t0
        parent_cpu = time.process_time() - c0
        stats = dict(ch.stats)
    pool_cpu = float(stats.get("worker_cpu_s", 0.0))
    cores = min(workers, os.cpu_count() or 1)
    reasons = Counter(r.reason for r in res)
    fast = sum(r.via == "fast" for r in res)
    return {
        "workload": name,
        "items": len(items),
        "unique_to_pool": stats.get("verify", 0),
        "seconds": round(dt, 2),
        "extract_seconds": round(t_extract, 2),
        "items_per_s": round(len(items) / dt, 1),
        "fast_share": round(fast / max(1, len(items)), 3),
        "parent_cpu_s": round(parent_cpu, 2),
        "pool_cpu_s": round(pool_cpu, 2),
        # what the same work would take on `cores` otherwise idle cores (all CPU serialised over them): independent
        # of other load on the machine, conservative (parent and pool overlap in reality)
        "est_items_per_s_idle": round(len(items) / max(1e-9, (parent_cpu + pool_cpu) / cores), 1),
        "reasons": dict(reasons),
        "kills": stats.get("kills", 0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--limit", type=int, default=None, help="first N records of each data file")
    ap.add_argument("--only", nargs="*", default=None, help="workload names to run")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = ap.parse_args(argv)
    d = data_dir()
    if not (d / "math" / "train.jsonl").exists():
        print(f"shared data not found at {d} (set EVOLKIT_DATA)", file=sys.stderr)
        return 2
    loads = _workloads(d, args.limit)
    names = args.only or list(loads)
    print(f"# evolkit.answers benchmark: workers={args.workers}, cpus={os.cpu_count()}, load={os.getloadavg()[0]:.1f}")
    if not args.json:
        print(
            f"{'workload':14} {'items':>6} {'to_pool':>7} {'sec':>7} {'items/s':>8} {'fast':>6} "
            f"{'cpu_par':>7} {'cpu_pool':>8} {'idle_est/s':>10}  reasons"
        )
    for name in names:
        r = run(name, loads[name], args.workers, args.timeout)
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['workload']:14} {r['items']:6d} {r['unique_to_pool']:7d} {r['seconds']:7.2f} "
                f"{r['items_per_s']:8.1f} {r['fast_share']:6.1%} {r['parent_cpu_s']:7.2f} {r['pool_cpu_s']:8.2f} "
                f"{r['est_items_per_s_idle']:10.1f}  {r['reasons']}"
                + (f" kills={r['kills']}" if r["kills"] else "")
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
