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

Resume: a stage lists the keys it already has (:meth:`RunStore.done_keys`) and only does the rest; a torn last line left
by a SIGKILL is ignored. The final Parquet is sorted by a stage-given key, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .settings import secret_values

SECRET_KEY_RE = re.compile(r"(api[_-]?key|token|secret|password)$", re.I)
_JSON_COLS = b"evolkit.json_columns"


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
        self._f = open(path, "a", encoding="utf-8")
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

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(self._line(row) + "\n")
        self._f.flush()
        self._n += 1
        if self._n % self.fsync_every == 0:
            if self._syncer is None:
                self._syncer = _Syncer(self._f.fileno())
            self._syncer.request()

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


class RunStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- config and manifest ---------------------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.root / "cache.sqlite"

    def save_config(self, config: dict[str, Any]) -> None:
        _atomic_write(self.root / "config.yaml", yaml.safe_dump(scrub(config), sort_keys=False, allow_unicode=True))

    def load_config(self) -> dict[str, Any]:
        p = self.root / "config.yaml"
        return yaml.safe_load(p.read_text()) if p.exists() else {}

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {"stages": {}}

    def is_done(self, stage: str) -> bool:
        return self.manifest()["stages"].get(stage, {}).get("status") == "done"

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.manifest()["stages"].get(stage, {})

    def _set_stage(self, stage: str, info: dict[str, Any]) -> None:
        m = self.manifest()
        m["stages"][stage] = scrub(info)
        _atomic_write(self.manifest_path, json.dumps(m, indent=2, ensure_ascii=False))

    def invalidate(self, stage: str) -> None:
        """Forget that a stage finished (its shards stay: a re-run resumes from them)."""
        m = self.manifest()
        if m["stages"].pop(stage, None) is not None:
            _atomic_write(self.manifest_path, json.dumps(m, indent=2, ensure_ascii=False))

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
            with open(shard, encoding="utf-8") as f:
                for line in f:
                    if not line.endswith("\n"):
                        break  # torn write at the end of a killed session
                    yield json.loads(line)

    def done_keys(self, stage: str, name: str, key: str | Callable[[dict[str, Any]], Any] = "id") -> set[Any]:
        get = key if callable(key) else (lambda r: r[key])
        return {get(r) for r in self.iter_partial(stage, name)}

    def finish(
        self,
        stage: str,
        outputs: dict[str, list[dict[str, Any]]],
        summary: dict[str, Any] | None = None,
        started: float | None = None,
    ) -> None:
        """Write each output as Parquet (and JSONL for eyes and diffs), then mark the stage done in the manifest."""
        files = {}
        for name, rows in outputs.items():
            path = self.stage_dir(stage) / f"{name}.parquet"
            write_parquet(path, rows)
            files[name] = {"path": str(path.relative_to(self.root)), "rows": len(rows)}
        info = {
            "status": "done",
            "outputs": files,
            "summary": summary or {},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if started is not None:
            info["seconds"] = round(time.time() - started, 2)
        if summary is not None:
            _atomic_write(self.stage_dir(stage) / "summary.json", json.dumps(scrub(summary), indent=2, ensure_ascii=False))
        self._set_stage(stage, info)

    def has_output(self, stage: str, name: str) -> bool:
        return (self.root / stage / f"{name}.parquet").exists()

    def load(self, stage: str, name: str) -> list[dict[str, Any]]:
        path = self.root / stage / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: stage {stage!r} has no output {name!r} yet (run that stage first)")
        return read_parquet(path)

    def outputs(self) -> dict[str, dict[str, Path]]:
        """All finished outputs: {stage: {name: parquet path}}."""
        res: dict[str, dict[str, Path]] = {}
        for stage, info in self.manifest()["stages"].items():
            for name, o in info.get("outputs", {}).items():
                res.setdefault(stage, {})[name] = self.root / o["path"]
        return res


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows to Parquet. Free-form dict columns (e.g. sampling parameters) are stored as JSON text and decoded on read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    json_cols = sorted({k for r in rows for k, v in r.items() if isinstance(v, dict)})
    if json_cols:
        rows = [{k: (json.dumps(v, sort_keys=True) if k in json_cols else v) for k, v in r.items()} for r in rows]
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    meta = dict(table.schema.metadata or {})
    meta[_JSON_COLS] = json.dumps(json_cols).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    json_cols = json.loads((table.schema.metadata or {}).get(_JSON_COLS, b"[]"))
    rows = table.to_pylist()
    for r in rows:
        for c in json_cols:
            if r.get(c) is not None:
                r[c] = json.loads(r[c])
    return rows


def sort_rows(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    return sorted(rows, key=key)
