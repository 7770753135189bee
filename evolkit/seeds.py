"""Seed problems: GSM8k and MATH from local files (jsonl / json / parquet / a folder) or a Hub dataset id.

* GSM8k: ``{"question", "answer"}``; the gold answer follows ``####`` in the answer.
* MATH: ``{"problem", "solution", "level", "type"[, "unique_id"]}``; the gold answer is the last ``\\boxed{}`` of the solution.

The embedded default is a small packaged sample (100 GSM8k + 100 MATH train problems, see ``evolkit/data/SOURCE.md``).
Paths may start with ``{data}`` for the shared data folder (``EVOLKIT_DATA``). A malformed file raises
:class:`~evolkit.errors.DataError` naming the file and line. Records without a gold answer (a MATH solution without
``\\boxed{...}``, as two of MATH's 7,500 train problems) are skipped with a warning naming them when they are at most
1% of a file; more than that is an error (a wrong file or format).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError
from .records import Problem
from .settings import PACKAGE_DIR, data_dir

log = logging.getLogger("evolkit")

SAMPLE_DIR = PACKAGE_DIR / "data"
REQUIRED = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}
#: Data files evolkit reads: JSON lines, a JSON list of objects, Parquet.
SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")


def expand_path(path: str) -> Path:
    return Path(path.replace("{data}", str(data_dir()))).expanduser()


def missing_data_hint(path: str) -> str:
    """Why a ``{data}/...`` path may be missing: the data folder itself is not there (`` (...)`` or empty)."""
    if "{data}" not in path:
        return ""
    d = data_dir()
    if d.is_dir():
        return ""
    env = os.environ.get("EVOLKIT_DATA")
    src = f"EVOLKIT_DATA={env}" if env else "the default, ../shared/data"
    what = "is not a folder" if d.exists() else "does not exist"
    return f" ({{data}} is {d}, from {src}, which {what}; set EVOLKIT_DATA to the shared data folder)"


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) from a .jsonl, .json (list of objects) or .parquet file, with errors that name file and line."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not a data file")
    if p.suffix not in SUFFIXES:
        raise DataError(f"{p}: unsupported file type {p.suffix or '(no extension)'!r} "
                        f"(expected {', '.join(SUFFIXES)})")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:
            raise DataError(f"{p}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: invalid JSON: {e.msg}") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of objects")
        for i, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{p}: item {i} is not an object")
            yield i, row
        return
    n = 0
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{i}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: expected a JSON object, got {type(row).__name__}")
        n += 1
        yield i, row
    if n == 0:
        raise DataError(f"{p}: no records (only blank lines)")


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


def _level(v: Any) -> int | None:
    m = re.search(r"\d", str(v or ""))
    return int(m.group()) if m else None


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


def _local_file(source: str, path: Path, split: str) -> Path:
    if path.is_dir():
        for ext in (".jsonl", ".parquet", ".json"):
            for cand in (path / f"{split}{ext}", path / source / f"{split}{ext}"):
                if cand.exists():
                    return cand
        raise DataError(f"{path}: no {split}.jsonl / .parquet / .json in this folder")
    return path


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
        import datasets

        try:
            ds = datasets.load_dataset(hub_id, hub_config, split=split)
        except Exception as e:
            raise DataError(f"{hub_id}: could not load split {split!r}: {e}") from None
        return _problems(source, ((f"{hub_id}[{split}] row {i}", i, r) for i, r in enumerate(ds)), split, hub_id)
    if path is None:
        file = SAMPLE_DIR / f"sample_{source}.jsonl"
    else:
        file = expand_path(str(path))
        if not file.exists():
            raise DataError(f"{file}: no such file{missing_data_hint(str(path))}")
        file = _local_file(source, file, split)
    problems = _problems(source, ((f"{file}:{i}", i - 1, r) for i, r in read_rows(file)), split, str(file))
    ids = defaultdict(int)
    for pr in problems:
        ids[pr.id] += 1
    dup = [k for k, v in ids.items() if v > 1]
    if dup:
        raise DataError(f"{file}: duplicate ids, e.g. {dup[0]!r}")
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
