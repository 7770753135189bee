"""Row validation before publishing: ``validate_rows`` on a 100k-row config, against the plain library paths.

Rows are synthesised in the shape the stages write (``sft``: Alpaca fields + prompt/completion, a few hundred
characters each; ``prm``: 3-8 steps with labels and scores; ``irm_rankings``: 4 nested variants). Timed, per config:

* ``validate_rows``: what ``evolkit publish`` runs (validation + normalisation to the records' field order);
* ``jsonschema all rows``: ``Draft202012Validator(schema)`` built once, ``is_valid`` on every row;
* ``pydantic strict``: ``Model.model_validate(row, strict=True)`` on every row (no JSON Schema involved);
* ``with 1% bad rows``: ``validate_rows`` on the same rows with every 100th row broken (the error path);
* ``scrub secrets``: ``evolkit.publish.Scrubber.rows`` with two secret values set (what a publish adds when keys are in
  the environment).

    .venv/bin/python benchmarks/bench_validate.py                 # 100k rows, sft prm irm_rankings
    .venv/bin/python benchmarks/bench_validate.py --n 20000 --configs sft

Prints seconds and rows/s per line, and the machine load.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the", "apples", "cost", "dollars", "each", "so", "she", "buys", "more", "than", "twice", "as", "many",
         "total", "number", "of", "per", "day", "how", "much", "left", "after", "selling", "half", "remaining")


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) if i % 7 else str(rng.randint(1, 999)) for i in range(n))


def sft_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        q = _text(rng, 40) + "?"
        out = "\n".join(f"Step {k + 1}: {_text(rng, 25)}." for k in range(4)) + f"\nThe answer is: {i % 97}"
        rows.append({"id": f"sft-{i}", "problem_id": f"gsm8k-train-{i:05d}", "kind": "math", "source": "gsm8k",
                     "instruction": q, "input": "", "output": out,
                     "prompt": "Below is an instruction ...\n\n### Instruction:\n" + q + "\n\n### Response:",
                     "completion": out, "gold_answer": str(i % 97), "model": "teacher", "round": i % 3})
    return rows


def prm_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        k = rng.randint(3, 8)
        labels = [rng.random() < 0.8 for _ in range(k)]
        rows.append({"id": f"prm-{i}", "problem_id": f"math-{i}", "prompt": _text(rng, 40),
                     "completions": [_text(rng, 20) for _ in range(k)], "labels": labels, "labeller": "judge",
                     "label_source": "model", "step_scores": [float(x) for x in labels], "final_correct": labels[-1],
                     "source": "sft", "solution_model": "teacher", "labeller_model": "judge-model"})
    return rows


def irm_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        variants = [{"id": f"v{i}-{j}", "text": _text(rng, 40), "evolver": "e1" if j % 2 else "e2",
                     "operation": "add_constraints", "rank": j + 1, "definition": rng.random(),
                     "precision": rng.random(), "integrity": rng.random()} for j in range(4)]
        rows.append({"id": f"rank-{i}", "instruction_id": f"gsm8k-{i}", "instruction": _text(rng, 40),
                     "variants": variants, "judge": "judge-model", "consistent": True, "label_source": "model",
                     "agreement": None})
    return rows


MAKERS: dict[str, Callable[[int, random.Random], list[dict[str, Any]]]] = {
    "sft": sft_rows, "prm": prm_rows, "irm_rankings": irm_rows}
BREAK = {"sft": ("completion", None), "prm": ("labels", "yes"), "irm_rankings": ("judge", 3)}


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--configs", nargs="+", default=list(MAKERS), choices=list(MAKERS))
    args = ap.parse_args()

    from jsonschema import Draft202012Validator

    from evolkit.publish import PublishError, load_schema, validate_rows
    from evolkit.records import PUBLISHED

    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.n:,} rows per config")
    print(f"{'config':<13} {'what':<24} {'seconds':>8} {'rows/s':>10}")
    for config in args.configs:
        rng = random.Random(0)
        rows = MAKERS[config](args.n, rng)
        schema = load_schema(config)
        validator = Draft202012Validator(schema)
        model = PUBLISHED[config]
        lines = [
            ("validate_rows", lambda: validate_rows(config, rows)),
            ("jsonschema all rows", lambda: [validator.is_valid(r) for r in rows]),
            ("pydantic strict", lambda: [model.model_validate(r, strict=True) for r in rows]),
        ]
        field, value = BREAK[config]
        bad = [dict(r, **{field: value}) if i % 100 == 0 else r for i, r in enumerate(rows)]

        def broken() -> None:
            try:
                validate_rows(config, bad)
            except PublishError:
                return
            raise AssertionError("broken rows were accepted")

        lines.append(("with 1% bad rows", broken))
        try:
            from evolkit.publish import Scrubber
        except ImportError:  # an evolkit without secret scrubbing of rows
            Scrubber = None
        if Scrubber is not None:
            scrubber = Scrubber(["sk-bench-0123456789abcdef", "hf_bench0123456789"])
            lines.append(("scrub secrets", lambda: scrubber.rows(rows)))
        for what, fn in lines:
            s = timed(fn)
            print(f"{config:<13} {what:<24} {s:8.2f} {args.n / s:10,.0f}", flush=True)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
