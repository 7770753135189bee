"""Dedup + decontamination of a ~96k-problem evolved pool against the GSM8k + MATH test problems (~6.8k).

The pool is synthesised from the shared data's GSM8k and MATH *train* problems (~15k seeds, as in WizardMath): each seed
plus variants made the way evolutions look (numbers changed, a constraint or a question appended, a sentence dropped),
with planted exact duplicates, near duplicates (one word changed) and lightly reworded test problems. Only the dedup and
decontamination work is timed (reading the test files and building the index included; synthesis excluded).

    .venv/bin/python benchmarks/bench_dedup.py            # 96k problems, 2 cores
    .venv/bin/python benchmarks/bench_dedup.py --n 20000  # smaller

Prints seconds per phase, peak RSS and what was removed (and how many planted items were found). Target: <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import time
from pathlib import Path

CORES = int(os.environ.get("BENCH_CORES", "2"))
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, str(CORES))
if hasattr(os, "sched_setaffinity"):
    try:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:CORES]))
    except OSError:
        pass

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolkit import filters  # noqa: E402
from evolkit.settings import data_dir  # noqa: E402

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "marbles", "stamps", "books", "tickets", "coins", "pencils", "cookies", "shells", "cards", "bolts"]
NUM = re.compile(r"\d+")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(path: Path, field: str) -> list[str]:
    return [json.loads(line)[field] for line in path.read_text().splitlines() if line.strip()]


def variant(q: str, rng: random.Random) -> str:
    """An evolution-like variant: numbers changed plus an added constraint, question or a dropped sentence."""
    q = NUM.sub(lambda m: str(int(m.group()) + rng.randint(1, 9)), q)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 90), rng.randint(2, 30)
    kind = rng.random()
    if kind < 0.35:
        return q + f" In addition, {name} must set aside {a} {item} and may use at most {b} of the rest."
    if kind < 0.65:
        return q + f" Afterwards {name} splits the result into {b} equal groups and adds {a} to one of them; how large is it?"
    if kind < 0.85:
        sents = re.split(r"(?<=[.?!])\s+", q)
        return f"{name} has {a} {item}. " + " ".join(sents[-2:])
    return f"At the fair, {name} has {a} {item} and gets {b} more, then gives away {rng.randint(1, a)}. How many are left?"


def reword(q: str) -> str:
    for x, y in (("How many", "How much"), ("What is", "Find"), (" the ", " a ")):
        if x in q:
            q = q.replace(x, y, 1)
            break
    return "Question: " + q.replace(",", " ,") + " Show your work."


def synthesise(n: int, seed: int = 0) -> tuple[list[str], dict[str, set[int]]]:
    d = data_dir()
    seeds = load(d / "gsm8k" / "train.jsonl", "question") + load(d / "math" / "train.jsonl", "problem")
    tests = load(d / "gsm8k" / "test.jsonl", "question") + load(d / "math" / "test.jsonl", "problem")
    rng = random.Random(seed)
    pool = list(seeds)
    planted: dict[str, set[int]] = {"exact": set(), "near": set(), "test": set()}
    while len(pool) < n:
        r = rng.random()
        i = len(pool)
        if r < 0.02:
            src = pool[rng.randrange(i)]
            pool.append("  " + src.upper().replace(",", " , ") + " ")
            planted["exact"].add(i)
        elif r < 0.04:
            src = pool[rng.randrange(i)]
            words = src.split()
            if len(words) < 60:  # one changed word keeps Jaccard >= ~0.9 (word 3-grams) only in long enough texts
                continue
            j = rng.randrange(len(words))
            words[j] = words[j] + "s"
            pool.append(" ".join(words))
            planted["near"].add(i)
        elif r < 0.05:
            t = rng.choice(tests)
            if len(filters.tokenize(t)) < 20:
                continue
            pool.append(reword(t))
            planted["test"].add(i)
        else:
            pool.append(variant(rng.choice(seeds), rng))
    return pool, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96_000, help="pool size (default 96000)")
    ap.add_argument("--near", type=float, default=0.85, help="dedup near-duplicate threshold (Jaccard)")
    ap.add_argument("--num-perm", type=int, default=128)
    args = ap.parse_args()
    d = data_dir()
    test_files = [d / "gsm8k" / "test.jsonl", d / "math" / "test.jsonl", d / "math" / "math500_test.jsonl"]
    if not all(p.exists() for p in test_files):
        sys.exit(f"shared data not found under {d} (set EVOLKIT_DATA)")
    t = time.perf_counter()
    pool, planted = synthesise(args.n)
    synth_s = time.perf_counter() - t
    rss0 = rss_mb()
    ids = [f"p{i}" for i in range(len(pool))]

    c0, t0 = cpu_s(), time.perf_counter()
    dc = filters.Decontaminator.from_files(test_files, num_perm=args.num_perm)
    t1 = time.perf_counter()
    enc = dc.hasher.encode(pool)  # tokenised once, shared by both steps
    te = time.perf_counter()
    hits = dc.match_many(pool, encoded=enc)
    t2 = time.perf_counter()
    keep = [i for i, h in enumerate(hits) if h is None]
    dd = filters.Deduper(near_threshold=args.near, num_perm=args.num_perm)
    sub = filters.TextHasher.subset(enc, keep)
    dups = dd.check([ids[i] for i in keep], [pool[i] for i in keep], encoded=sub)
    t3, c3 = time.perf_counter(), cpu_s()

    removed_test = {i for i, h in enumerate(hits) if h is not None}
    removed_dup = {keep[j] for j, m in enumerate(dups) if m is not None}
    kinds: dict[str, int] = {}
    for h in hits:
        if h is not None:
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
    for m in dups:
        if m is not None:
            kinds["dup_" + m.kind] = kinds.get("dup_" + m.kind, 0) + 1
    print(f"pool: {len(pool):,} problems (synthesised in {synth_s:.1f} s) vs {len(dc):,} test problems; "
          f"{CORES} cores; num_perm {args.num_perm}; dedup near threshold {args.near}")
    print(f"decontamination index build: {t1 - t0:6.2f} s")
    print(f"tokenise + hash the pool:    {te - t1:6.2f} s")
    print(f"decontamination match:       {t2 - te:6.2f} s")
    print(f"dedup (exact + MinHash LSH): {t3 - t2:6.2f} s")
    print(f"total:                       {t3 - t0:6.2f} s wall, {c3 - c0:.2f} s CPU   (target <= 60 s; "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"peak RSS: {rss_mb():,.0f} MB (after synthesis, before timing: {rss0:,.0f} MB)")
    print(f"removed: {len(removed_test):,} contaminated + {len(removed_dup):,} duplicates; by kind: {kinds}")
    for name, idx in planted.items():
        found = idx & (removed_test if name == "test" else removed_dup | removed_test)
        print(f"planted {name:5s}: {len(idx):5d}, removed {len(found):5d} ({100 * len(found) / max(1, len(idx)):.1f}%)")


if __name__ == "__main__":
    main()
