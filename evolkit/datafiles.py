"""Rows of a data set given as a local file / folder or a Hugging Face Hub dataset id: the one loader every reader uses.

Seeds (:mod:`evolkit.seeds`), benchmarks (:mod:`evolkit.eval.bench`), the contamination check
(:mod:`evolkit.contamination`) and the decontamination test files (:mod:`evolkit.filters`) all read through
:func:`load_table`, so they accept the same inputs and fail the same way:

* a ``.jsonl`` file (one JSON object per line; blank lines are skipped), a ``.json`` file (a list of objects, or an
  object holding one) or a ``.parquet`` file;
* a folder holding ``<split>.jsonl`` / ``.parquet`` / ``.json`` (optionally in a named sub-folder, e.g. ``gsm8k/``);
* a Hub dataset id (``openai/gsm8k`` with config ``main``), read with ``datasets.load_dataset``.

Paths may start with ``{data}`` for the shared data folder (``EVOLKIT_DATA``). Bad input raises
:class:`~evolkit.errors.DataError` naming the file and line (or the Hub id and split).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .settings import data_dir

#: File types a data set may come in, in the order a folder is searched.
EXTENSIONS = (".jsonl", ".parquet", ".json")


def expand_path(path: str | Path) -> Path:
    """``{data}/x`` -> the shared data folder's ``x``; ``~`` expanded."""
    return Path(str(path).replace("{data}", str(data_dir()))).expanduser()


def looks_local(source: str) -> bool:
    """Whether ``source`` names a local file or folder rather than a Hub dataset id."""
    return "{data}" in source or source.startswith((".", "/", "~")) or expand_path(source).exists() or bool(
        re.search(r"\.(jsonl|json|parquet)$", source))


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) from a .jsonl, .json (list of objects) or .parquet file, with errors that name file and line.

    Line numbers count from 1 (for .json: the item number, for .parquet: the row number)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not a data file")
    if p.suffix not in (*EXTENSIONS, ".ndjson"):
        raise DataError(f"{p}: unsupported file type {p.suffix or '(no extension)'!r} "
                        f"(expected {', '.join(EXTENSIONS)})")
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


def find_file(folder: Path, split: str, subfolders: Sequence[str] = (), any_file: bool = False) -> Path:
    """The data file of ``split`` in a folder: ``<split>.jsonl`` / ``.parquet`` / ``.json``, also inside each of
    ``subfolders``; with ``any_file``, else the first data file of the folder (sorted by name)."""
    for ext in EXTENSIONS:
        for cand in [folder / f"{split}{ext}"] + [folder / sub / f"{split}{ext}" for sub in subfolders]:
            if cand.exists():
                return cand
    if any_file:
        found = sorted(p for ext in EXTENSIONS for p in folder.glob(f"*{ext}"))
        if found:
            return found[0]
        raise DataError(f"{folder}: no jsonl / parquet / json file in this folder")
    raise DataError(f"{folder}: no {split}.jsonl / .parquet / .json in this folder")


@dataclass
class Table:
    """The rows of one data set and where they came from.

    ``rows`` holds (number, row): the line number (from 1) for a local file, the row index (from 0) for a Hub dataset;
    :meth:`where` turns a number into ``file:line`` or ``hub_id[split] row i`` for messages."""

    name: str  # the file path, or "hub_id[split]"
    path: Path | None  # the local file; None for a Hub dataset
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def where(self, number: int) -> str:
        return f"{self.path}:{number}" if self.path is not None else f"{self.name} row {number}"

    def located(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(``file:line`` or ``hub_id[split] row i``, row) for every row."""
        for n, row in self.rows:
            yield self.where(n), row

    def __len__(self) -> int:
        return len(self.rows)


def load_hub(hub_id: str, hub_config: str | None = None, split: str = "train") -> Table:
    """A split of a Hub dataset (``datasets.load_dataset``)."""
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as e:  # noqa: BLE001 - any failure of the Hub client is a data error for the user
        raise DataError(f"{hub_id}: could not load split {split!r}: {e}") from None
    return Table(f"{hub_id}[{split}]", None, [(i, dict(r)) for i, r in enumerate(ds)])


def load_table(source: str | Path | None = None, *, hub_id: str | None = None, hub_config: str | None = None,
               split: str = "train", subfolders: Sequence[str] = (), any_file: bool = False) -> Table:
    """Rows of a local file or folder (``source``), or of a Hub dataset (``hub_id``, or a ``source`` that does not
    look like a local path). A folder is searched with :func:`find_file`."""
    if hub_id is None and source is not None and not isinstance(source, Path) and not looks_local(source):
        hub_id = source
    if hub_id is not None:
        return load_hub(hub_id, hub_config, split)
    if source is None:
        raise DataError("no data file or Hub dataset id given")
    path = expand_path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file{missing_data_hint(str(source))}")
    file = find_file(path, split, subfolders, any_file) if path.is_dir() else path
    return Table(str(file), file, list(read_rows(file)))


def missing_data_hint(path: str) -> str:
    """Why a ``{data}/...`` path may be missing: the data folder itself is not there."""
    import os

    if "{data}" not in path:
        return ""
    d = data_dir()
    if d.is_dir():
        return ""
    env = os.environ.get("EVOLKIT_DATA")
    src = f"EVOLKIT_DATA={env}" if env else "the default, ../shared/data"
    what = "is not a folder" if d.exists() else "does not exist"
    return f" ({{data}} is {d}, from {src}, which {what}; set EVOLKIT_DATA to the shared data folder)"
