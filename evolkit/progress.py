"""Progress with ETA for long work: a live bar on a terminal, a log line every ~10% (or 30 s) elsewhere (CI, files)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_s(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, stream: TextIO | None = None, enabled: bool = True):
        self.total = max(0, total)
        self.desc = desc
        self.done = 0
        self.failed = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = self.enabled and self.stream.isatty()
        self.t0 = time.monotonic()
        self._last_log = self.t0
        self._next_pct = 10

    def line(self) -> str:
        el = time.monotonic() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / self.total if self.total else 100
        fail = f", {self.failed} failed" if self.failed else ""
        eta_s = _fmt_s(eta) if eta == eta else "?"
        return f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%{fail}) {rate:.1f}/s elapsed {_fmt_s(el)} ETA {eta_s}"

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        if not self.enabled:
            return
        now = time.monotonic()
        pct = 100 * self.done / self.total
        if self.tty:
            if now - self._last_log > 0.1 or self.done >= self.total:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
                self._last_log = now
        elif pct >= self._next_pct or now - self._last_log > 30:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_log = now
            while self._next_pct <= pct:
                self._next_pct += 10

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
