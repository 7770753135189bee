"""Seed problems: GSM8k and MATH from local files (jsonl / json / parquet / a folder) or a Hub dataset id.

* GSM8k: ``{"question", "answer"}``; the gold answer follows ``####`` in the answer.
* MATH: ``{"problem", "solution", "level", "type"[, "unique_id"]}``; the gold answer is the last ``\\boxed{}`` of the solution.

The embedded default is a small packaged sample (100 GSM8k + 100 MATH train problems, see ``evolkit/data/SOURCE.md``).
Files are read by :mod:`evolkit.datafiles` (paths may start with ``{data}`` for the shared data folder,
``EVOLKIT_DATA``); a malformed file raises :class:`~evolkit.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .datafiles import expand_path, load_table, read_rows
from .errors import DataError
from .records import Problem
from .settings import PACKAGE_DIR

log = logging.getLogger("evolkit.seeds")

#: ``expand_path`` and ``read_rows`` live in :mod:`evolkit.datafiles` (re-exported here for the stages' imports).
__all__ = ["expand_path", "load_problems", "load_seeds", "problem_from_row", "read_rows", "sample"]

SAMPLE_DIR = PACKAGE_DIR / "data"
REQUIRED = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}


def _level(v: Any) -> int | None:
    m = re.search(r"\d", str(v or ""))
    return int(m.group()) if m else None


class NoGold(DataError):
    """A record whose solution holds no gold answer."""


#: Records without a gold answer are skipped (with a warning naming them) when they are at most this share of a file:
#: MATH's train set has two (an empty ``\boxed{}``). More than that means a wrong file or format: an error.
MAX_NO_GOLD_SHARE = 0.01


def _problems(source: str, rows: Iterable[tuple[str, int, dict[str, Any]]], split: str, what: str) -> list[Problem]:
    """Problems of ``(where, index, row)`` records; records without a gold answer are skipped if they are few."""
    problems: list[Problem] = []
    no_gold: list[NoGold] = []
    for where, idx, row in rows:
        try:
            problems.append(problem_from_row(source, row, idx, split, where))
        except NoGold as e:
            no_gold.append(e)
    if no_gold:
        total = len(problems) + len(no_gold)
        if len(no_gold) > MAX_NO_GOLD_SHARE * total:
            raise DataError(f"{no_gold[0]} ({len(no_gold)} of {total} records of {what} lack a gold answer)")
        log.warning("%s: skipped %d of %d records without a gold answer: %s", what, len(no_gold), total,
                    "; ".join(str(e) for e in no_gold[:5]))
    return problems


def problem_from_row(source: str, row: dict[str, Any], idx: int, split: str, where: str) -> Problem:
    from .answers import gsm8k_gold, math_gold

    for f in REQUIRED[source]:
        if f not in row:
            raise DataError(f"{where}: missing field {f!r} (a {source} record needs {', '.join(REQUIRED[source])})")
        if not isinstance(row[f], str) or not row[f].strip():
            raise DataError(f"{where}: field {f!r} must be a non-empty string")
    if source == "gsm8k":
        gold = gsm8k_gold(row["answer"])
        if gold is None:
            raise DataError(f"{where}: field 'answer' has no '#### <answer>' line")
        pid = str(row.get("id") or f"gsm8k-{split}-{idx:05d}")
        return Problem(
            id=pid, source="gsm8k", split=split, question=row["question"].strip(), gold_answer=gold,
            reference_solution=row["answer"], root_id=pid,
        )
    gold = math_gold(row["solution"])
    if gold is None:
        raise NoGold(f"{where}: field 'solution' has no \\boxed{{<answer>}} (the gold answer of a MATH record)")
    pid = str(row.get("unique_id") or row.get("id") or f"math-{split}-{idx:05d}")
    pid = pid if pid.startswith("math") else f"math-{pid}"
    return Problem(
        id=pid.replace(".json", ""), source="math", split=split, question=row["problem"].strip(), gold_answer=gold,
        reference_solution=row["solution"], level=_level(row.get("level")), type=row.get("type"),
        root_id=pid.replace(".json", ""),
    )


def load_problems(
    source: str,
    path: str | Path | None = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
) -> list[Problem]:
    """All problems of one source. With neither ``path`` nor ``hub_id``, the packaged sample."""
    if source not in REQUIRED:
        raise DataError(f"unknown seed source {source!r} (known: {', '.join(REQUIRED)})")
    if hub_id:
        table = load_table(hub_id=hub_id, hub_config=hub_config, split=split)
        return _problems(source, ((table.where(i), i, r) for i, r in table.rows), split, table.name)
    file = SAMPLE_DIR / f"sample_{source}.jsonl" if path is None else Path(str(path))
    table = load_table(file, split=split, subfolders=(source,))
    problems = _problems(source, ((table.where(i), i - 1, r) for i, r in table.rows), split, table.name)
    ids = defaultdict(int)
    for pr in problems:
        ids[pr.id] += 1
    dup = [k for k, v in ids.items() if v > 1]
    if dup:
        raise DataError(f"{table.name}: duplicate ids, e.g. {dup[0]!r}")
    return problems


def sample(problems: list[Problem], n: int | None, seed: int = 0, stratify: bool = True) -> list[Problem]:
    """``n`` problems, seeded; for MATH stratified by (level, type) with proportional allocation (largest remainder)."""
    if n is None or n >= len(problems):
        return list(problems)
    rng = random.Random(seed)
    strata: dict[Any, list[Problem]] = defaultdict(list)
    for p in problems:
        strata[(p.level, p.type) if stratify else None].append(p)
    if len(strata) == 1:
        return [problems[i] for i in sorted(rng.sample(range(len(problems)), n))]
    total = len(problems)
    quotas = {k: n * len(v) / total for k, v in strata.items()}
    alloc = {k: int(q) for k, q in quotas.items()}
    rest = n - sum(alloc.values())
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - alloc[k]), str(k)))[:rest]:
        alloc[k] += 1
    chosen: set[str] = set()
    for k in sorted(strata, key=str):
        chosen.update(p.id for p in rng.sample(strata[k], alloc[k]))
    return [p for p in problems if p.id in chosen]


def load_seeds(sources: list[Any], seed: int = 0) -> list[Problem]:
    """Seeds from config ``SeedSource`` entries, each sampled, concatenated in config order."""
    out: list[Problem] = []
    for i, s in enumerate(sources):
        probs = load_problems(s.source, s.path, s.hub_id, s.hub_config, s.split)
        if getattr(s, "pick", "random") == "easiest":
            out.extend(easiest(probs, s.n))
        else:
            out.extend(sample(probs, s.n, seed=seed + i, stratify=s.stratify))
    return out


def easiest(problems: list[Problem], n: int | None) -> list[Problem]:
    """The ``n`` easiest problems (lowest MATH level, fewest reference steps, shortest question), in file order."""
    from .answers import split_steps

    def difficulty(p: Problem) -> tuple[int, int, int]:
        return (p.level or 0, len(split_steps(p.reference_solution or "")), len(p.question))

    if n is None or n >= len(problems):
        return list(problems)
    chosen = {p.id for p in sorted(problems, key=difficulty)[:n]}
    return [p for p in problems if p.id in chosen]
