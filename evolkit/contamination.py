"""Test-set contamination of a dataset (``evolkit contamination``): n-gram and near-duplicate overlap with the GSM8k /
MATH / MATH500 test problems, by the evolve stage's decontamination (:class:`evolkit.filters.Decontaminator`)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import DataError
from .eval.bench import BENCHMARKS, load_benchmark

CONTAMINATION_DOC = """\
Compare a dataset (a local jsonl / json / parquet file or folder, or a Hub dataset id) with the benchmark test sets,
with the evolve stage's decontamination (evolkit.filters.Decontaminator). A row is flagged for a test problem when:

* exact: their normalised texts (lower-case words) are equal;
* ngram: they share a word n-gram (default 13, the GPT-3 decontamination test; n-grams found in 3 or more test
  problems are boilerplate and do not count), or the row contains a whole test problem shorter than n words;
* near: MinHash LSH proposes the pair and the test problem is estimated to be at least --threshold (default 0.7)
  contained in the row, with every number of the test problem present in the row.

Prints counts per benchmark with examples (the row, the test problem, the evidence) and writes every flagged row
with -o.
"""

_AUTO_FIELDS = ("question", "problem", "instruction", "prompt", "query", "input", "text")


def load_texts(dataset: str, split: str = "train", hub_config: str | None = None,
               fields: list[str] | None = None, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(row labels, texts) of a dataset's text field(s) from a local file/folder or a Hub dataset id."""
    from .datafiles import load_table

    table = load_table(dataset, hub_config=hub_config, split=split, any_file=True)
    rows = [r for _, r in table.rows]
    where = table.name
    if limit:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{where}: no rows")
    if not fields:
        found = next((f for f in _AUTO_FIELDS if isinstance(rows[0].get(f), str)), None)
        if found is None:
            raise DataError(f"{where}: none of the fields {', '.join(_AUTO_FIELDS)}; name one with --field "
                            f"(the first row has {', '.join(map(str, rows[0]))})")
        fields = [found]
    missing = [f for f in fields if f not in rows[0]]
    if missing:
        raise DataError(f"{table.where(table.rows[0][0])}: the first row has no field {missing[0]!r} (it has "
                        f"{', '.join(map(str, rows[0]))})")
    labels = [str(r.get("id") or r.get("unique_id") or i) for i, r in enumerate(rows)]
    texts = ["\n".join(str(r.get(f) or "") for f in fields) for r in rows]
    return labels, texts


def _short(text: str, n: int = 240) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def contamination_report(
    labels: list[str], texts: list[str], benches: list[str], ngram: int = 13, threshold: float | None = 0.7,
    examples: int = 5,
) -> dict[str, Any]:
    """Per benchmark: how many dataset rows contain a test problem (by kind), how many test problems are hit, examples.

    The matching is :class:`evolkit.filters.Decontaminator` (the evolve stage's decontamination): ``exact`` (same
    normalised text), ``ngram`` (a shared word ``ngram``-gram, or a whole short test problem inside the row), ``near``
    (MinHash estimate of the test problem's containment in the row >= ``threshold``, with all its numbers present)."""
    from . import filters

    report: dict[str, Any] = {"rows": len(texts), "ngram": ngram, "threshold": threshold, "benchmarks": {}}
    for bench in benches:
        items = load_benchmark(bench)
        deco = filters.Decontaminator([filters.BenchmarkItem(it.id, bench, it.question) for it in items], ngram=ngram,
                                      near_threshold=threshold)
        flagged = []
        kinds: Counter = Counter()
        for label, text, m in zip(labels, texts, deco.match_many(texts)):
            if m is None:
                continue
            kinds[m.kind] += 1
            flagged.append({"row": label, "text": text, "test_id": m.test_id, "test_problem": m.test_text,
                            "kind": m.kind, "score": m.score, "evidence": m.evidence})
        report["benchmarks"][bench] = {
            "test_problems": len(items),
            "rows_flagged": len(flagged),
            "rows_flagged_share": len(flagged) / max(1, len(texts)),
            "by_kind": {k: kinds[k] for k in ("exact", "ngram", "near")},
            "test_problems_hit": len({f["test_id"] for f in flagged}),
            "flagged": flagged,
            "examples": [
                {**f, "text": _short(f["text"]), "test_problem": _short(f["test_problem"])} for f in flagged[:examples]
            ],
        }
    return report


def cmd_contamination(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .store import check_output_folder

    if args.ngram < 3:
        raise ConfigError(f"--ngram must be at least 3, got {args.ngram}")
    if not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be in [0, 1] (0 = off), got {args.threshold}")
    for flag, v in (("--limit", args.limit), ("--examples", args.examples)):
        if v is not None and v < (1 if flag == "--limit" else 0):
            raise ConfigError(f"{flag} must be at least {1 if flag == '--limit' else 0}, got {v}")
    if args.output:
        if Path(args.output).is_dir():
            raise ConfigError(f"-o {args.output}: is a folder; give the report's file name")
        check_output_folder(Path(args.output).parent, "report's folder")
    labels, texts = load_texts(args.dataset, args.split, args.hub_config, args.field, args.limit)
    benches = args.bench or ["gsm8k", "math"]
    rep = contamination_report(labels, texts, benches, args.ngram, args.threshold or None, args.examples)
    rep["dataset"] = args.dataset
    print(f"{args.dataset}: {len(texts)} rows; exact = same normalised text, ngram = a shared {args.ngram}-word "
          f"sequence (or a whole short test problem), near = the test problem >= {args.threshold} contained (MinHash)")
    for bench, r in rep["benchmarks"].items():
        k = r["by_kind"]
        print(f"\n{bench} test ({r['test_problems']} problems): {r['rows_flagged']} rows flagged "
              f"({100 * r['rows_flagged_share']:.2f}%; exact {k['exact']}, ngram {k['ngram']}, near {k['near']}), "
              f"{r['test_problems_hit']} test problems hit")
        for ex in r["examples"]:
            how = f"shares \"{ex['evidence']}\"" if ex["kind"] == "ngram" else ex["evidence"]
            print(f"  - row {ex['row']} ~ {ex['test_id']} ({ex['kind']}: {how})\n      row:  {ex['text']}\n"
                  f"      test: {ex['test_problem']}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        for r in rep["benchmarks"].values():
            r.pop("examples", None)
        out.write_text(json.dumps(rep, indent=2, ensure_ascii=False))
        print(f"\nfull report: {out}")
    return 0


def add_commands(sub: Any) -> None:

    p = sub.add_parser(
        "contamination",
        help="n-gram and near-duplicate overlap between a dataset and the GSM8k / MATH test sets",
        description=CONTAMINATION_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="a local file/folder (jsonl / json / parquet) or a Hub dataset id")
    p.add_argument("--split", default="train", help="split of a Hub dataset or a folder (default train)")
    p.add_argument("--hub-config")
    p.add_argument("--field", action="append",
                   help="text field(s) to compare (default: the first of question, problem, instruction, prompt, "
                   "query, input, text)")
    p.add_argument("--bench", action="append", choices=list(BENCHMARKS),
                   help="benchmarks to compare with (repeatable; default gsm8k and math)")
    p.add_argument("--ngram", type=int, default=13, help="word n-gram length for exact overlap (default 13)")
    p.add_argument("--threshold", type=float, default=0.7,
                   help="near duplicates: estimated containment of the test problem in the row (default 0.7; 0 = off)")
    p.add_argument("--examples", type=int, default=5, help="examples per benchmark in the report")
    p.add_argument("--limit", type=int, help="the first N dataset rows only")
    p.add_argument("-o", "--output", help="write the full report (JSON, with every flagged row) here")
    p.set_defaults(func=cmd_contamination)

