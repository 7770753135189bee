"""Content-addressed request cache in SQLite (inside the run folder).

The key is a hash of (model, messages, sampling parameters, sample offset), so re-running or resuming a run never sends
the same request twice. Only successful results are stored: a failed request is retried on the next run. Like every
file in a run folder, the cache never holds a secret: values of the secret environment variables are replaced by ``***``
in what it stores (a model or a proxy may repeat a key it was shown).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ..settings import secret_values
from .base import Backend, Completion, Request, Result


def _scrubbed(result: Result, secrets: list[str]) -> Result:
    def clean(text: str | None) -> str | None:
        for s in secrets:
            if text and s in text:
                text = text.replace(s, "***")
        return text

    comps = [Completion(clean(c.text) or "", c.finish_reason, c.prompt_tokens, c.completion_tokens)
             for c in result.completions]
    return Result(comps, clean(result.error), result.cached, result.attempts)


class RequestCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._secrets = secret_values()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> Result | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM results WHERE key=?", (key,)).fetchone()
        return Result.from_json(row[0]) if row else None

    def put(self, key: str, result: Result) -> None:
        # Committed at once (WAL): a SIGKILL right after loses nothing that was acknowledged.
        if self._secrets:
            result = _scrubbed(result, self._secrets)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?)", (key, result.to_json()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend(Backend):
    """Wraps any backend: cached results come back at once, misses go to the inner backend and are stored."""

    def __init__(self, inner: Backend, cache: RequestCache):
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.model = inner.model

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        misses: list[int] = []
        keys = [r.cache_key(self.model) for r in requests]
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add(hit)
                yield i, hit
            else:
                misses.append(i)
        if not misses:
            return
        async for j, res in self.inner.stream([requests[i] for i in misses]):
            i = misses[j]
            if res.ok:
                self.cache.put(keys[i], res)
            self.stats.add(res)
            yield i, res

    def describe(self) -> dict:
        return self.inner.describe()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def close(self) -> None:
        self.inner.close()
        self.cache.close()
