"""The run store: one folder per run, the only way data moves between stages.

```
RUN_DIR/
  config.yaml            the resolved config (secrets scrubbed)
  manifest.json          finished stages: outputs, counts, summary, timing
  cache.sqlite           the request cache (see evolkit.backends.cache)
  <stage>/<name>.shard-00000.jsonl   records appended as results arrive (one shard per session, fsynced)
  <stage>/<name>.parquet            written when the stage completes, rows in a deterministic order
  <stage>/*.png, summary.json       plots and figures of the stage
```

Resume: a generation step writes each item's rows as ONE line (a *group record*: key, ok, rows), so an item is either
wholly durable or not at all, whatever k is; :class:`GroupReader` indexes the records by key (the latest one wins, a
torn last line left by a SIGKILL is ignored and its item redone). Stage outputs are written to Parquet in row groups
(:class:`ParquetSink`) in a deterministic order, so a resumed run equals an uninterrupted one and memory stays flat.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import DataError
from .settings import secret_values

SECRET_KEY_RE = re.compile(r"(api[_-]?key|token|secret|password)$", re.I)
_JSON_COLS = b"evolkit.json_columns"
#: Rows per Parquet row group of the run's outputs: what a writer buffers and a lazy reader caches. Small groups keep a
#: streaming stage's memory flat (2,000-row groups cost ~20 MiB more at 32k rows: benchmarks/bench_memory.py).
ROW_GROUP = 500


def scrub(obj: Any, secrets: list[str] | None = None) -> Any:
    """Replace secret-looking keys' values and any known secret value by ``***`` (recursively)."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {
            k: ("***" if SECRET_KEY_RE.search(str(k)) and isinstance(v, str) and v else scrub(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            if s in obj:
                obj = obj.replace(s, "***")
        return obj
    return obj


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


#: A secret-looking key in JSON text (``"api_key": ...``, the end of a key that SECRET_KEY_RE matches): such rows take
#: the full :func:`scrub` path. ``_KEY_HINTS`` is a cheap prefilter on the lower-cased text (the regex is slower).
_SECRET_KEY_JSON_RE = re.compile(r'(api[_-]?key|token|secret|password)(\\n)?"\s*:', re.I)
_KEY_HINTS = ('key"', 'token"', 'secret"', 'password"', '\\n"')


class _Syncer:
    """fsyncs one file descriptor in a helper thread when asked, so the caller (the event loop) never waits on the disk.
    Requests made while an fsync runs are coalesced into the next one."""

    def __init__(self, fd: int):
        self.fd = fd
        self._cond = threading.Condition()
        self._wanted = False
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="shard-fsync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._wanted = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._stop:
                    self._cond.wait()
                if not self._wanted:
                    return
                self._wanted = False
                self._busy = True
            try:
                os.fsync(self.fd)
            except OSError:  # pragma: no cover - the final fsync in close() reports real problems
                pass
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def stop(self) -> None:
        """Wait for a running fsync, drop pending ones (the caller fsyncs at the end itself), end the thread."""
        with self._cond:
            self._stop = True
            self._wanted = False
            self._cond.notify_all()
        self._thread.join()


class ShardWriter:
    """Appends JSON lines to a new shard; each write reaches the OS at once (a SIGKILL loses nothing written) and the
    file is fsynced every ``fsync_every`` rows in a helper thread (the writer does not wait for the disk) and on close.

    Secret values (and values of secret-looking keys) are scrubbed: a row is encoded once and scrubbed (then encoded
    again) only when its text shows a secret or such a key, which gives the same line as scrubbing every row."""

    def __init__(self, path: Path, fsync_every: int = 64, secrets: list[str] | None = None):
        self.path = path
        self._f = open(path, "ab")
        self._pos = self._f.tell()
        self._n = 0
        self.fsync_every = fsync_every
        self._secrets = secret_values() if secrets is None else secrets
        needles = set(self._secrets)
        needles.update(json.dumps(s, ensure_ascii=False)[1:-1] for s in self._secrets)
        self._needles = sorted(needles)
        self._syncer: _Syncer | None = None

    def _line(self, row: dict[str, Any]) -> str:
        line = json.dumps(row, ensure_ascii=False)
        if self._secrets:
            low = line.lower()
            if any(s in line for s in self._needles) or (
                    any(h in low for h in _KEY_HINTS) and _SECRET_KEY_JSON_RE.search(line)):
                line = json.dumps(scrub(row, self._secrets), ensure_ascii=False)
        return line

    def write(self, row: dict[str, Any]) -> int:
        """Append one record; returns its byte offset in the shard."""
        line = (self._line(row) + "\n").encode("utf-8")
        offset = self._pos
        self._f.write(line)
        self._f.flush()
        self._pos += len(line)
        self._n += 1
        if self._n % self.fsync_every == 0:
            if self._syncer is None:
                self._syncer = _Syncer(self._f.fileno())
            self._syncer.request()
        return offset

    def write_group(self, key: Hashable, ok: bool, rows: list[dict[str, Any]]) -> int:
        """Append every row of one item as one record (see :class:`GroupReader`); returns its byte offset."""
        return self.write({"key": key, "ok": bool(ok), "rows": rows})

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            if self._syncer is not None:
                self._syncer.stop()
                self._syncer = None
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_output_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Refuse a folder that cannot be made or written: it (or a folder above it) is a file, or the nearest existing
    folder above it is not writable. Called before anything is written, so a bad ``-o``/``--local`` changes nothing."""
    path = Path(path)
    for parent in [path, *path.absolute().parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "it is a file" if parent == path else f"{parent} is a file"
                raise DataError(f"{path}: cannot be the {what}: {where}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise DataError(f"{path}: cannot be the {what}: cannot write in {parent} (not writable)")
            break
    return path


#: What a run folder holds (see the module docstring): a folder holding anything else is not a run folder.
RUN_FOLDER_ENTRIES = frozenset({"config.yaml", "manifest.json", "cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm",
                                "cache.sqlite-journal", "seeds", "sft", "evolve", "irm", "prm", "review", "calibration",
                                "dataset"})


def foreign_entries(path: Path) -> list[str]:
    """Entries of an existing folder that a run folder never holds (``*.tmp`` files of a killed write are evolkit's own;
    hidden files such as ``.gitkeep`` do not count)."""
    return sorted(p.name for p in path.iterdir()
                  if p.name not in RUN_FOLDER_ENTRIES and not p.name.endswith(".tmp") and not p.name.startswith("."))


class RunStore:
    def __init__(self, root: str | os.PathLike[str], create: bool = True):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        #: Called with the stage name before a stage's outputs are written (the pipeline refuses to finish a stage
        #: whose requests failed: it raises, and nothing of that stage is written).
        self.before_finish: Any = None

    # -- config and manifest ---------------------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.root / "cache.sqlite"

    def save_config(self, config: dict[str, Any]) -> None:
        _atomic_write(self.root / "config.yaml", yaml.safe_dump(scrub(config), sort_keys=False, allow_unicode=True))

    def load_config(self) -> dict[str, Any]:
        p = self.root / "config.yaml"
        if not p.exists():
            return {}
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not a valid run config (not UTF-8 text: {e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f"{p}:{mark.line + 1}" if mark else str(p)
            raise DataError(f"{at}: not a valid run config ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{p}: not a valid run config (not a mapping)")
        return data

    def update_manifest(self, **fields: Any) -> None:
        """Set top-level manifest fields (e.g. the prompt files a run has read)."""
        m = self.manifest()
        m.update(scrub(fields))
        _atomic_write(self.manifest_path, json.dumps(m, indent=2, ensure_ascii=False))

    def set_status(self, stage: str, status: str, **fields: Any) -> None:
        """Record a stage that did not finish (e.g. ``failed``, with a reason): it is not done, so it runs again."""
        info = dict(self.stage_info(stage))
        info.update(fields, status=status)
        self._set_stage(stage, info)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.manifest_path}: not a valid run manifest ({e}); start a new run folder, or delete "
                            f"the file to redo every stage from the shards and the request cache") from None
        if not isinstance(m, dict) or not isinstance(m.get("stages"), dict):
            raise DataError(f"{self.manifest_path}: not a valid run manifest (no 'stages' mapping)")
        return m

    def is_done(self, stage: str) -> bool:
        return self.manifest()["stages"].get(stage, {}).get("status") == "done"

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.manifest()["stages"].get(stage, {})

    def _set_stage(self, stage: str, info: dict[str, Any]) -> None:
        m = self.manifest()
        m["stages"][stage] = scrub(info)
        _atomic_write(self.manifest_path, json.dumps(m, indent=2, ensure_ascii=False))

    def invalidate(self, stage: str, clear_shards: bool = False) -> None:
        """Forget that a stage finished. Its shards stay (a re-run resumes from them) unless ``clear_shards``: a stage
        redone with other settings starts from nothing (the request cache still answers identical requests)."""
        m = self.manifest()
        if m["stages"].pop(stage, None) is not None:
            _atomic_write(self.manifest_path, json.dumps(m, indent=2, ensure_ascii=False))
        if clear_shards and (self.root / stage).is_dir():
            for shard in (self.root / stage).glob("*.shard-*.jsonl"):
                shard.unlink()

    # -- records ---------------------------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _shards(self, stage: str, name: str) -> list[Path]:
        return sorted(self.stage_dir(stage).glob(f"{name}.shard-*.jsonl"))

    def writer(self, stage: str, name: str) -> ShardWriter:
        """A writer on a fresh shard of ``stage/name`` (earlier shards are kept: they are the resume state)."""
        shards = self._shards(stage, name)
        nxt = 0 if not shards else int(shards[-1].name.rsplit("-", 1)[1].split(".")[0]) + 1
        return ShardWriter(self.stage_dir(stage) / f"{name}.shard-{nxt:05d}.jsonl")

    def iter_partial(self, stage: str, name: str) -> Iterator[dict[str, Any]]:
        """Rows appended so far (all shards in order). A torn last line (killed mid-write) is skipped."""
        for shard in self._shards(stage, name):
            with open(shard, "rb") as f:
                for n, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        break  # torn write at the end of a killed session
                    yield _parse_line(line, shard, n)

    def groups(self, stage: str, name: str) -> GroupReader:
        """The group records of ``stage/name`` written so far, by key."""
        return GroupReader(self._shards(stage, name))

    def sink(self, stage: str, name: str, row_group_size: int = ROW_GROUP) -> ParquetSink:
        """A streaming Parquet writer for the output ``stage/name`` (pass it to :meth:`finish` once written)."""
        return ParquetSink(self.stage_dir(stage) / f"{name}.parquet", row_group_size=row_group_size)

    def finish(
        self,
        stage: str,
        outputs: dict[str, Iterable[dict[str, Any]] | ParquetSink],
        summary: dict[str, Any] | None = None,
        started: float | None = None,
        **fields: Any,
    ) -> None:
        """Write each output as Parquet (rows, or a :class:`ParquetSink` already written), then mark the stage done."""
        if self.before_finish is not None:
            self.before_finish(stage)
        files = {}
        for name, rows in outputs.items():
            if isinstance(rows, ParquetSink):
                sink = rows
            else:
                sink = self.sink(stage, name)
                for r in rows:
                    sink.write(r)
            sink.close()
            files[name] = {"path": str(sink.path.relative_to(self.root)), "rows": sink.rows}
        info = {
            "status": "done",
            "outputs": files,
            "summary": summary or {},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if started is not None:
            info["seconds"] = round(time.time() - started, 2)
        info.update(fields)
        if summary is not None:
            _atomic_write(self.stage_dir(stage) / "summary.json", json.dumps(scrub(summary), indent=2, ensure_ascii=False))
        self._set_stage(stage, info)

    def has_output(self, stage: str, name: str) -> bool:
        return (self.root / stage / f"{name}.parquet").exists()

    def load(self, stage: str, name: str) -> list[dict[str, Any]]:
        return list(self.iter_output(stage, name))

    def iter_output(self, stage: str, name: str, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        """The rows of a finished output, read batch by batch."""
        path = self.root / stage / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: stage {stage!r} has no output {name!r} yet (run that stage first)")
        return iter_parquet(path, batch_size)

    def table(self, stage: str, name: str, convert: Any = None, columns: list[str] | None = None) -> ParquetTable:
        """A finished output as a read-only sequence read row group by row group (see :class:`ParquetTable`)."""
        path = self.root / stage / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: stage {stage!r} has no output {name!r} yet (run that stage first)")
        return ParquetTable(path, convert, columns=columns)

    def outputs(self) -> dict[str, dict[str, Path]]:
        """All finished outputs: {stage: {name: parquet path}}."""
        res: dict[str, dict[str, Path]] = {}
        for stage, info in self.manifest()["stages"].items():
            for name, o in info.get("outputs", {}).items():
                res.setdefault(stage, {})[name] = self.root / o["path"]
        return res


_ARROW_POOL_SET = False


def _arrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``. The first call puts Arrow on the system allocator (unless
    ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise): its default pool (mimalloc) keeps tens of MiB of freed row groups
    for reuse, which is what a long streaming run must not hold (see docs/performance.md)."""
    global _ARROW_POOL_SET
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not _ARROW_POOL_SET:
        _ARROW_POOL_SET = True
        if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            pa.set_memory_pool(pa.system_memory_pool())
    return pa, pq


def _parse_line(line: bytes, path: Path, n: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}:{n}: not a JSON record ({e}): the shard is damaged; remove that line to redo its item, "
                        f"or re-run the stage with --force") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{n}: not a JSON object: the shard is damaged")
    return row


def _key_str(key: Any) -> str:
    return key if isinstance(key, str) else json.dumps(key, separators=(",", ":"))


def key_digest(key: Any) -> bytes:
    """A 16-byte digest of a record key (what :class:`GroupReader` indexes; 120 bits: collisions are out of reach).
    The last byte is never zero: numpy's ``S16`` values drop trailing zero bytes, which would make a digest ending in
    zeros compare unequal to itself read back from an array."""
    return hashlib.blake2b(_key_str(key).encode("utf-8"), digest_size=15).digest() + b"\x01"


class KeyIndex:
    """A compact map from 16-byte key digests to 64-bit values: sorted numpy arrays (24 bytes an entry) plus a small
    dict of recent entries, merged into the arrays when it fills. A later value for a digest replaces the earlier."""

    RECENT = 4096

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype="S16")
        self._vals = np.empty(0, dtype=np.uint64)
        self._recent: dict[bytes, int] = {}

    def __setitem__(self, digest: bytes, value: int) -> None:
        self._recent[digest] = value
        if len(self._recent) >= self.RECENT:
            self._merge()

    def _merge(self) -> None:
        if not self._recent:
            return
        keys = np.fromiter(self._recent.keys(), dtype="S16", count=len(self._recent))
        vals = np.fromiter(self._recent.values(), dtype=np.uint64, count=len(self._recent))
        self._recent = {}
        pos = np.searchsorted(self._keys, keys)
        inside = pos < len(self._keys)
        same = np.zeros(len(keys), dtype=bool)
        same[inside] = self._keys[pos[inside]] == keys[inside]
        self._vals[pos[same]] = vals[same]  # replaced in place
        new = ~same
        if new.any():
            k = np.concatenate([self._keys, keys[new]])
            v = np.concatenate([self._vals, vals[new]])
            order = np.argsort(k, kind="stable")
            self._keys, self._vals = k[order], v[order]

    def get(self, digest: bytes) -> int | None:
        v = self._recent.get(digest)
        if v is not None:
            return v
        i = int(np.searchsorted(self._keys, digest))
        if i < len(self._keys) and self._keys[i] == digest:
            return int(self._vals[i])
        return None

    def get_many(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, values)`` for an ``S16`` array of digests."""
        self._merge()
        pos = np.searchsorted(self._keys, digests)
        found = pos < len(self._keys)
        found[found] = self._keys[pos[found]] == digests[found]
        vals = np.zeros(len(digests), dtype=np.uint64)
        vals[found] = self._vals[pos[found]]
        return found, vals

    def values(self) -> np.ndarray:
        self._merge()
        return self._vals

    def __len__(self) -> int:
        self._merge()
        return len(self._keys)


#: A group record's place: shard number (16 bits), byte offset (46 bits) and success (1 bit) in one integer.
def _pack(shard: int, offset: int, ok: bool) -> int:
    return (offset << 17) | (shard << 1) | int(bool(ok))


class GroupReader:
    """The group records of one output (``{"key", "ok", "rows"}`` lines over its shards), indexed by key.

    Only a 16-byte digest of each key and the record's place are kept in memory (:class:`KeyIndex`); rows are read from
    disk when asked for. The latest record of a key wins (a failed item retried later is replaced by its new record);
    a torn last line is ignored (its item is not done)."""

    def __init__(self, shards: list[Path]):
        self.shards = list(shards)
        self._index = KeyIndex()
        self._files: dict[int, Any] = {}
        for s_i, shard in enumerate(self.shards):
            with open(shard, "rb") as f:
                pos = 0
                for n, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        break
                    rec = _parse_line(line, shard, n)
                    if "key" not in rec or not isinstance(rec.get("rows"), list):
                        raise DataError(f"{shard}:{n}: not a group record (key, ok, rows): the shard is damaged or "
                                        f"was written by another version of evolkit; re-run the stage with --force")
                    self._index[key_digest(rec["key"])] = _pack(s_i, pos, bool(rec.get("ok")))
                    pos += len(line)

    def add(self, shard: Path, key: Any, offset: int, ok: bool) -> None:
        """Index a record just written (by :meth:`ShardWriter.write_group`)."""
        try:
            s_i = self.shards.index(shard)
        except ValueError:
            self.shards.append(shard)
            s_i = len(self.shards) - 1
        self._index[key_digest(key)] = _pack(s_i, offset, ok)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: Any) -> bool:
        return self._index.get(key_digest(key)) is not None

    def ok(self, key: Any) -> bool:
        """Whether the item's latest record is a success (a failed item is done again on resume)."""
        v = self._index.get(key_digest(key))
        return bool(v is not None and v & 1)

    def ok_many(self, digests: np.ndarray) -> np.ndarray:
        """:meth:`ok` of many keys at once, given as an ``S16`` array of :func:`key_digest` values."""
        found, vals = self._index.get_many(digests)
        return found & ((vals & np.uint64(1)) == 1)

    def failed(self) -> int:
        return int(((self._index.values() & np.uint64(1)) == 0).sum())

    def get(self, key: Any) -> list[dict[str, Any]] | None:
        """The rows of ``key`` (None when it has no record)."""
        v = self._index.get(key_digest(key))
        if v is None:
            return None
        s_i, offset = (v >> 1) & 0xFFFF, v >> 17
        f = self._files.get(s_i)
        if f is None:
            f = self._files[s_i] = open(self.shards[s_i], "rb")
        f.seek(offset)
        return _parse_line(f.readline(), self.shards[s_i], 0)["rows"]

    def rows(self, keys: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """The rows of ``keys``, in that order (keys without a record are skipped)."""
        for k in keys:
            rows = self.get(k)
            if rows:
                yield from rows

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _scrub_row(row: dict[str, Any], needles: list[str], secrets: list[str]) -> dict[str, Any]:
    """``row`` with secret values replaced (a cheap text check first: most rows hold none)."""
    text = json.dumps(row, ensure_ascii=False, default=str)
    if any(s in text for s in needles):
        return scrub(row, secrets)
    return row


class ParquetSink:
    """Writes rows to Parquet in row groups, so memory stays flat whatever the output's size.

    Free-form dict columns are stored as JSON text (listed in the file's metadata and decoded on read). Each group is
    written to a part file as it fills; :meth:`close` merges the parts into the final file under one schema (a column
    that was all null in one group and typed in another is promoted) and moves it into place atomically. Secret
    values are scrubbed from every row."""

    def __init__(self, path: Path, row_group_size: int = ROW_GROUP, secrets: list[str] | None = None):
        self.path = Path(path)
        self.row_group_size = row_group_size
        self.rows = 0
        self._buf: list[dict[str, Any]] = []
        self._parts: list[Path] = []
        self._json_cols: set[str] = set()
        self._closed = False
        self._secrets = secret_values() if secrets is None else secrets
        needles = set(self._secrets)
        needles.update(json.dumps(x, ensure_ascii=False)[1:-1] for x in self._secrets)
        self._needles = sorted(needles)
        for old in self.path.parent.glob(f"{self.path.name}.part-*"):
            old.unlink()

    def write(self, row: dict[str, Any]) -> None:
        if self._needles:
            row = _scrub_row(row, self._needles, self._secrets)
        self._buf.append(row)
        self.rows += 1
        if len(self._buf) >= self.row_group_size:
            self._flush()

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self.write(r)

    def _flush(self) -> None:
        pa, pq = _arrow()
        rows, self._buf = self._buf, []
        if not rows:
            return
        json_cols = {k for r in rows for k, v in r.items() if isinstance(v, dict)}
        self._json_cols |= json_cols
        if json_cols:
            rows = [{k: (json.dumps(v, sort_keys=True) if k in json_cols and isinstance(v, dict) else v)
                     for k, v in r.items()} for r in rows]
        part = self.path.with_name(f"{self.path.name}.part-{len(self._parts):05d}")
        pq.write_table(pa.Table.from_pylist(rows), part)
        self._parts.append(part)

    def close(self) -> None:
        pa, pq = _arrow()
        if self._closed:
            return
        self._flush()
        self._closed = True
        tmp = self.path.with_name(self.path.name + ".tmp")
        meta = {_JSON_COLS: json.dumps(sorted(self._json_cols)).encode()}
        if not self._parts:
            pq.write_table(pa.table({}).replace_schema_metadata(meta), tmp)
        elif len(self._parts) == 1:
            t = pq.read_table(self._parts[0])
            pq.write_table(t.replace_schema_metadata(meta), tmp)
        else:
            schemas = [pq.read_schema(p) for p in self._parts]
            try:
                schema = pa.unify_schemas(schemas, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                schema = None
            names = schema.names if schema is not None else []
            try:
                if schema is None:
                    raise pa.ArrowInvalid("no common schema")
                with pq.ParquetWriter(tmp, schema.with_metadata(meta)) as w:
                    for p in self._parts:
                        t = pq.read_table(p)
                        for c in names:
                            if c not in t.column_names:
                                t = t.append_column(c, pa.nulls(len(t), schema.field(c).type))
                        w.write_table(t.select(names).cast(schema.with_metadata(meta)))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                # Types that do not cast group by group: merge in memory (rare; only nested columns).
                t = pa.concat_tables([pq.read_table(p) for p in self._parts], promote_options="permissive")
                pq.write_table(t.replace_schema_metadata(meta), tmp)
        os.replace(tmp, self.path)
        for p in self._parts:
            p.unlink(missing_ok=True)
        self._parts = []

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def write_parquet(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rows to Parquet. Free-form dict columns (e.g. sampling parameters) are stored as JSON text and decoded on read."""
    sink = ParquetSink(path)
    sink.write_many(rows)
    sink.close()


def _decode(rows: list[dict[str, Any]], json_cols: list[str]) -> list[dict[str, Any]]:
    for r in rows:
        for c in json_cols:
            if r.get(c) is not None:
                r[c] = json.loads(r[c])
    return rows


def iter_parquet(path: Path, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file written by evolkit, batch by batch."""
    _, pq = _arrow()

    f = pq.ParquetFile(path)
    json_cols = json.loads((f.schema_arrow.metadata or {}).get(_JSON_COLS, b"[]"))
    for batch in f.iter_batches(batch_size=batch_size):
        yield from _decode(batch.to_pylist(), json_cols)


def read_parquet(path: Path) -> list[dict[str, Any]]:
    _, pq = _arrow()

    table = pq.read_table(path)
    json_cols = json.loads((table.schema.metadata or {}).get(_JSON_COLS, b"[]"))
    return _decode(table.to_pylist(), json_cols)


class ParquetTable(Sequence):  # type: ignore[type-arg]
    """The rows of a Parquet file as a read-only sequence, read one row group at a time.

    ``table[i]`` reads the row group holding row ``i`` (only ``columns`` when given; ``convert`` applied to each of
    its rows, e.g. ``Problem.model_validate``) and keeps the last ``cache_groups`` groups, so sequential and nearly sequential access
    (what a generation step does) reads each group about once; iterating streams the groups in order. Memory holds a
    few row groups whatever the file's size."""

    def __init__(self, path: Path, convert: Any = None, cache_groups: int = 8, columns: list[str] | None = None):
        _, pq = _arrow()

        self.path = Path(path)
        self.convert = convert
        self.columns = columns
        self.cache_groups = max(1, cache_groups)
        self._pf = pq.ParquetFile(self.path)
        md = self._pf.metadata
        self._json_cols = json.loads((self._pf.schema_arrow.metadata or {}).get(_JSON_COLS, b"[]"))
        self._starts = [0]
        for g in range(md.num_row_groups):
            self._starts.append(self._starts[-1] + md.row_group(g).num_rows)
        self._cache: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _group(self, g: int) -> list[Any]:
        rows = self._cache.get(g)
        if rows is not None:
            self._cache[g] = self._cache.pop(g)  # most recently used last
            return rows
        rows = _decode(self._pf.read_row_group(g, columns=self.columns).to_pylist(), self._json_cols)
        if self.convert is not None:
            rows = [self.convert(r) for r in rows]
        self._cache[g] = rows
        while len(self._cache) > self.cache_groups:
            del self._cache[next(iter(self._cache))]
        return rows

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        g = bisect.bisect_right(self._starts, i) - 1
        return self._group(g)[i - self._starts[g]]

    def __iter__(self) -> Iterator[Any]:
        for g in range(len(self._starts) - 1):
            yield from self._group(g)

    def column(self, name: str) -> Iterator[Any]:
        """One column's values in row order, group by group (without converting rows)."""
        for g in range(len(self._starts) - 1):
            yield from self._pf.read_row_group(g, columns=[name]).column(0).to_pylist()
