"""Content-addressed request cache in SQLite (inside the run folder).

The key is a hash of (model, messages, sampling parameters, sample offset), so re-running or resuming a run never sends
the same request twice. Only successful results are stored: a failed request is retried on the next run. Like every
file in a run folder, the cache never holds a secret: values of the secret environment variables are replaced by ``***``
in what it stores (a model or a proxy may repeat a key it was shown).
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import threading
import time
from array import array
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..settings import secret_values
from ..types import MakeRows, Rows, StepEnv
from .base import Backend, Completion, Request, Result, Subseq, process_rows


def _scrubbed(result: Result, secrets: list[str]) -> Result:
    def clean(text: str | None) -> str | None:
        for s in secrets:
            if text and s in text:
                text = text.replace(s, "***")
        return text

    comps = [Completion(clean(c.text) or "", c.finish_reason, c.prompt_tokens, c.completion_tokens)
             for c in result.completions]
    return Result(comps, clean(result.error), result.cached, result.attempts)


def _insert_batch(db: sqlite3.Connection, batch: dict[str, str]) -> None:
    """Insert (or replace) ``key -> value`` rows in one statement (one GIL release); ``executemany`` where SQLite has
    no JSON functions."""
    try:
        db.execute("INSERT OR REPLACE INTO results SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
                   "FROM json_each(?)", (json.dumps(list(batch.items())),))
    except sqlite3.OperationalError as e:
        if "json" not in str(e).lower():
            raise
        db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", batch.items())


class RequestCache:
    """The SQLite table of results by request key.

    Writes never wait for the disk on the caller's thread (the event loop): :meth:`put` queues the entry and a writer
    thread commits the queue in one transaction every ``flush_seconds`` (20 ms), on its own connection (WAL, so reads
    go on meanwhile). Entries not yet committed are served from memory, so a ``get`` always sees every ``put`` before
    it; :meth:`flush` and :meth:`close` wait until everything is committed. At most ``max_pending`` entries wait
    for a commit: a ``put`` beyond that waits for the writer (backpressure), so a SIGKILL loses at most that many
    entries (their requests are sent again only if the stage had not written their rows either), whatever the load.
    A failed commit is raised by the next ``put``, ``flush`` or ``close``.

    The writer inserts a batch with one SQL statement over a JSON array (``json_each``): ``executemany`` gives up the
    GIL for every row, and while the event loop's thread is busy each row then waits ~5 ms for it back (measured:
    1,000 rows in 5.2 s against a busy thread, 41 ms as one statement)."""

    def __init__(self, path: str | Path, flush_seconds: float = 0.02, max_pending: int = 256):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_seconds = flush_seconds
        self.max_pending = max(1, max_pending)
        self._lock = threading.Lock()  # the reading connection
        self._secrets = secret_values()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("SELECT key, value FROM results LIMIT 1").fetchall()
        except sqlite3.Error as e:
            from ..errors import DataError

            raise DataError(f"{self.path}: not a usable request cache ({e}); move it away to start the cache afresh "
                            f"(the stages' shards keep every result already written)") from None
        # Write-behind state: key -> JSON not yet committed; the writer thread and its connection start on first put.
        self._pending: dict[str, str] = {}
        self._cond = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        self._committing = False
        self._closing = False
        self._error: BaseException | None = None

    def get(self, key: str) -> Result | None:
        with self._cond:
            value = self._pending.get(key)
        if value is None:
            with self._lock:
                row = self._db.execute("SELECT value FROM results WHERE key=?", (key,)).fetchone()
            value = row[0] if row else None
        return Result.from_json(value) if value is not None else None

    def get_many(self, keys: Sequence[str], chunk: int = 500) -> dict[str, Result]:
        """The cached results of ``keys`` (absent keys are left out), in a few queries instead of one per key."""
        found: dict[str, str] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), chunk):
                part = uniq[i : i + chunk]
                q = f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(part))})"
                found.update(self._db.execute(q, part).fetchall())
        with self._cond:
            for k in uniq:
                v = self._pending.get(k)
                if v is not None:
                    found[k] = v
        return {k: Result.from_json(v) for k, v in found.items()}

    def put(self, key: str, result: Result) -> None:
        if self._secrets:
            result = _scrubbed(result, self._secrets)
        value = result.to_json()
        with self._cond:
            self._raise_error()
            while len(self._pending) >= self.max_pending and key not in self._pending and self._error is None:
                self._cond.wait()  # the writer is behind: wait for its commit (it notifies after each batch)
            self._raise_error()
            self._pending[key] = value
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="request-cache-writer", daemon=True)
                self._writer.start()
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"{self.path}: writing the request cache failed: {err}") from err

    def _write_loop(self) -> None:
        # Another cache object on the same file (a second backend role) may be committing: wait for it.
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=120)
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        return
                    closing = self._closing
                if not closing and len(self._pending) < self.max_pending:
                    time.sleep(self.flush_seconds)  # let a batch gather
                with self._cond:
                    batch = dict(self._pending)
                    self._committing = True
                try:
                    db.execute("BEGIN IMMEDIATE")
                    _insert_batch(db, batch)
                    db.execute("COMMIT")
                except BaseException as e:  # noqa: BLE001 - reported to the caller's next put/flush/close
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    with self._cond:
                        self._error = e
                        for k, v in batch.items():  # drop the batch: it cannot be written
                            if self._pending.get(k) is v:
                                del self._pending[k]
                        self._committing = False
                        self._cond.notify_all()
                    continue
                with self._cond:
                    for k, v in batch.items():
                        if self._pending.get(k) is v:  # unless a newer value came meanwhile
                            del self._pending[k]
                    self._committing = False
                    self._cond.notify_all()
        finally:
            db.close()

    def flush(self) -> None:
        """Wait until every entry put so far is committed."""
        with self._cond:
            while self._pending and self._writer is not None and self._writer.is_alive():
                self._cond.notify_all()
                self._cond.wait(0.1)
            self._raise_error()

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._lock:
            self._db.close()
        with self._cond:
            self._raise_error()


class CachedBackend(Backend):
    """Wraps any backend: cached results come back at once, misses go to the inner backend and are stored.

    The inner backend's results are stored the moment they arrive, whatever the caller is doing meanwhile (a pump
    task drains the inner stream), so a result is durable before any slow post-processing (answer checking) and a
    killed run re-sends at most the requests that were in flight. Results the caller has not taken yet are kept in
    memory up to ``buffer`` of them; beyond that only their index is kept and the result is read back from the cache
    when its turn comes, so memory stays flat when the caller is slower than the model."""

    def __init__(self, inner: Backend, cache: RequestCache, buffer: int = 1024):
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.model = inner.model
        self.buffer = buffer

    def _lookup(self, requests: Sequence[Request], misses: array, chunk: int = 512) -> Iterator[tuple[int, Result]]:
        """Cache lookups a chunk at a time: yields ``(index, hit)`` for the hits of each chunk as it is looked up and
        appends the indices of the misses to ``misses`` (nothing else is kept: memory stays flat)."""
        for start in range(0, len(requests), chunk):
            idx = range(start, min(start + chunk, len(requests)))
            keys = [requests[i].cache_key(self.model) for i in idx]
            found = self.cache.get_many(keys)
            for i, key in zip(idx, keys):
                hit = found.get(key)
                if hit is None:
                    misses.append(i)
                else:
                    yield i, hit

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        misses = array("q")
        for i, hit in self._lookup(requests, misses):
            self.stats.add(hit)
            yield i, hit
        if not misses:
            return
        # Results not taken yet, in arrival order: up to ``buffer`` of them in memory; beyond that only their index
        # (8 bytes; the result is in the cache and read back when its turn comes) until the backlog is drained. Failed
        # results are not cached: they are kept (they are small and rare). Arrival order is kept so that the caller
        # sees items in about the order it asked for them (lazily read items are then read sequentially).
        pending: collections.deque[tuple[int, Result]] = collections.deque()
        spilled = array("q")
        spilled_keys = bytearray()  # the 32-byte cache key of each spilled result (its request is not built again)
        spill_pos = 0
        failed: dict[int, Result] = {}
        arrived = asyncio.Event()
        state: dict[str, Any] = {"done": False, "error": None}

        async def pump() -> None:
            try:
                async for j, res in self.inner.stream(Subseq(requests, misses)):
                    i = misses[j]
                    key = requests[i].cache_key(self.model) if res.ok else None
                    if key is not None:
                        self.cache.put(key, res)
                    self.stats.add(res)
                    if len(spilled) == spill_pos and len(pending) < self.buffer:
                        pending.append((i, res))
                    else:
                        spilled.append(i)
                        spilled_keys.extend(bytes.fromhex(key) if key is not None else bytes(32))  # sha256 hex
                        if key is None:
                            failed[i] = res
                    arrived.set()
            except BaseException as e:  # noqa: BLE001 - raised to the caller
                state["error"] = e
            finally:
                state["done"] = True
                arrived.set()

        task = asyncio.create_task(pump())
        try:
            while True:
                if pending:
                    yield pending.popleft()
                    continue
                if spill_pos < len(spilled):
                    i = spilled[spill_pos]
                    key = spilled_keys[32 * spill_pos : 32 * spill_pos + 32].hex()
                    spill_pos += 1
                    if spill_pos == len(spilled):  # the backlog is drained: start the arrays afresh
                        del spilled[:]
                        del spilled_keys[:]
                        spill_pos = 0
                    res = failed.pop(i, None) or self.cache.get(key)
                    if res is None:  # pragma: no cover - the cache lost an entry it was given
                        res = Result(error="the request cache lost this result")
                    yield i, res
                    continue
                if state["done"]:
                    break
                arrived.clear()
                await arrived.wait()
            if state["error"] is not None:
                raise state["error"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def stream_rows(self, requests: Sequence[Request], items: Sequence[Any], make_rows: MakeRows, env: StepEnv,
                    concurrency: int = 64) -> AsyncIterator[tuple[int, Result, Rows]]:
        if getattr(self.inner, "makes_rows", False):
            return self._remote_rows(requests, items, make_rows, env, concurrency)
        return process_rows(self.stream(requests), items, make_rows, env, concurrency)

    async def _remote_rows(self, requests: Sequence[Request], items: Sequence[Any], make_rows: MakeRows, env: StepEnv,
                           concurrency: int) -> AsyncIterator[tuple[int, Result, Rows]]:
        """An inner backend that makes rows where it runs (Ray workers): hits are answered here, misses go there with
        the row maker, and their results are stored as they come back."""
        misses = array("q")

        async def hit_stream() -> AsyncIterator[tuple[int, Result]]:
            for i, hit in self._lookup(requests, misses):
                self.stats.add(hit)
                yield i, hit

        async for x in process_rows(hit_stream(), items, make_rows, env, concurrency):
            yield x
        if not misses:
            return
        async for j, res, rows in self.inner.stream_rows(Subseq(requests, misses), Subseq(items, misses), make_rows,
                                                         env, concurrency):
            i = misses[j]
            if res.ok:
                self.cache.put(requests[i].cache_key(self.model), res)
            self.stats.add(res)
            yield i, res, rows

    @property
    def supports_json_schema(self) -> bool:  # type: ignore[override]
        return self.inner.supports_json_schema

    def describe(self) -> dict:
        return self.inner.describe()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def close(self) -> None:
        self.inner.close()
        self.cache.close()
