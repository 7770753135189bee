"""Answer equivalence: :class:`AnswerChecker` (math-verify in a pool of killable worker processes) and
:func:`majority_answer` (self-consistency vote by equivalence).

Cheap cases are decided in the calling process (missing answer, identical normalised strings, two plain numbers, two
simple fractions/decimals: the *fast path*); everything else goes to ``math-verify`` (sympy) in a ``pebble``
:class:`~pebble.ProcessPool` of warm workers, where two scalar expressions that differ numerically are called different
without sympy's costly ``simplify``. Each item has two limits:

* a CPU budget (``timeout``, seconds of the worker's CPU): the worker arms a CPU-time timer (``ITIMER_PROF``) around
  the item, whose signal (SIGPROF, default action: terminate) ends a worker that overruns it whatever it is doing,
  even deep in a C-level big-integer computation; a busy machine that starves the worker of CPU does not cut an item
  short;
* a wall-clock limit (``wall_timeout``), pebble's per-task timeout: the worker is stopped whatever its CPU use.

A killed worker is replaced by the pool and its item gets ``reason="timeout"``. Verdicts are cached per pair, except
failures of the pool itself (a worker that died otherwise, a pool that could not start), which are tried again on the
next call.

The pool uses the ``forkserver`` (or ``spawn``) start method, which re-imports the parent's ``__main__`` script in
each worker: a script that uses :class:`AnswerChecker` needs the usual ``if __name__ == "__main__":`` guard (without
it, the worker refuses to recurse and the items get ``reason="error"``).

Pair order convention: everywhere a pair is taken it is ``(answer, gold)`` (candidate first, reference second).
``math-verify`` is not symmetric in a few corners (an equation as gold vs a bare value as answer); we call it with
``allow_set_relation_comp=True`` so that intervals and inequalities compare both ways.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import re
import signal
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction
from typing import Any

from pebble import ProcessExpired, ProcessPool

from .extract import _PLAIN_NUM_RE, normalize_answer

__all__ = ["REASONS", "AnswerChecker", "CheckResult", "majority_answer"]

log = logging.getLogger(__name__)

#: A worker's CPU budget per item is enforced with a CPU-time timer where the platform has one (not Windows: there the
#: wall clock only).
_CPU_LIMITS = hasattr(signal, "setitimer") and hasattr(signal, "ITIMER_PROF") and hasattr(signal, "SIGPROF")

# --------------------------------------------------------------------------------------------------------------------
# Fast path (in the calling process)
# --------------------------------------------------------------------------------------------------------------------

def _plain_number(s: str) -> Decimal | None:
    if len(s) > 400 or not _PLAIN_NUM_RE.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def _numbers_equal(a: str, b: str, da: Decimal, db: Decimal) -> bool:
    """Same rule as math-verify for two numbers: exact for integers, rounded to 6 decimals when a decimal is
    involved."""
    if da == db:
        return True
    if "." not in a and "." not in b:
        return False
    with localcontext() as ctx:
        ctx.prec = 500
        q = Decimal("0.000001")
        try:
            return da.quantize(q) == db.quantize(q)
        except InvalidOperation:
            return False


_DEC = r"(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})"
_FRAC_RE = re.compile(r"([-+]?)\\frac\{([-+]?)(" + _DEC + r")\}\{([-+]?)(" + _DEC + r")\}")
_SLASH_RE = re.compile(r"([-+]?)(" + _DEC + r")/(" + _DEC + r")")


def _simple_rational(s: str) -> tuple[Fraction, bool] | None:
    """``(value, has_decimal_point)`` for a normalised plain number, ``\\frac{p}{q}`` or ``p/q`` (signs allowed),
    else None. Used to decide such pairs without sympy."""
    if len(s) > 100:
        return None
    try:
        if _PLAIN_NUM_RE.fullmatch(s):
            return Fraction(s), "." in s
        m = _FRAC_RE.fullmatch(s)
        if m:
            sign = -1 if (m.group(1) == "-") ^ (m.group(2) == "-") ^ (m.group(4) == "-") else 1
            num, den = m.group(3), m.group(5)
        else:
            m = _SLASH_RE.fullmatch(s)
            if not m:
                return None
            sign = -1 if m.group(1) == "-" else 1
            num, den = m.group(2), m.group(3)
        d = Fraction(den)
        if d == 0:
            return None
        return sign * Fraction(num) / d, "." in num or "." in den
    except (ValueError, ZeroDivisionError):
        return None


def _prepare_for_verify(ans: str) -> str:
    """What the worker wraps in ``\\boxed{}``: one line, no math-mode dollars, no ``\\!``."""
    s = ans.strip().replace("\n", " ")
    s = re.sub(r"(?<!\\)\$", "", s)
    s = s.replace("\\!", "")
    return s.strip()


# --------------------------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------------------------

REASONS = ("match", "mismatch", "no_answer", "timeout", "error")


@dataclass(frozen=True)
class CheckResult:
    """Verdict for one ``(answer, gold)`` pair.

    ``reason`` is one of ``match``, ``mismatch``, ``no_answer`` (either side missing/empty), ``timeout`` (the
    comparison overran the per-item limit; the worker was killed), ``error`` (the comparison raised or a worker died).
    ``via`` tells who decided: ``fast`` (in the calling process), ``cache``, ``verify`` (math-verify in a worker)."""

    equal: bool
    reason: str
    detail: str = ""
    via: str = "fast"


def _rationals_equal(ra: tuple[Fraction, bool], rb: tuple[Fraction, bool]) -> bool:
    (fa, deca), (fb, decb) = ra, rb
    if deca or decb:  # math-verify: a float on either side -> compare rounded to 6 decimals
        return round(fa, 6) == round(fb, 6)
    return fa == fb


_PERCENT_RE = re.compile(r"(.+?)\\?%")
_CHOICE_RE = re.compile(r"\(?([A-Z])\)?")


def _percent_verdict(na: str, nb: str) -> CheckResult | None:
    """A percentage against a number (``50\\%`` = ``50`` = ``0.5`` = ``\\frac12``) or a percentage; None when this
    is not such a pair of plain numbers / simple fractions."""
    pa, pb = _PERCENT_RE.fullmatch(na), _PERCENT_RE.fullmatch(nb)
    if not pa and not pb:
        return None
    ra = _simple_rational(pa.group(1) if pa else na)
    rb = _simple_rational(pb.group(1) if pb else nb)
    if ra is None or rb is None:
        return None
    if pa and pb:
        eq = _rationals_equal(ra, rb)
    else:
        pct, other = (ra, rb) if pa else (rb, ra)
        eq = _rationals_equal(pct, other) or _rationals_equal((pct[0] / 100, pct[1]), other)
    return CheckResult(eq, "match" if eq else "mismatch", "percent")


def _choices(s: str) -> frozenset[str] | None:
    """The letters of a multiple-choice answer (``C``, ``(C)``, ``A,C``, ``\\text{(A)},\\text{(C)}``), else None."""
    items = re.sub(r"\\text\{([^{}]*)\}", r"\1", s).split(",")
    letters = [_CHOICE_RE.fullmatch(x) for x in items]
    if not all(letters):
        return None
    return frozenset(m.group(1) for m in letters)  # type: ignore[union-attr]


def _fast_verdict(a: str | None, b: str | None, fast_path: bool = True) -> CheckResult | None:
    if a is None or b is None:
        return CheckResult(False, "no_answer", "missing answer" if a is None else "missing gold")
    na, nb = normalize_answer(a), normalize_answer(b)
    if not na or not nb:
        return CheckResult(False, "no_answer", "empty answer" if not na else "empty gold")
    if not fast_path:
        return None
    if na == nb:
        return CheckResult(True, "match", "same normalised string")
    da, db = _plain_number(na), _plain_number(nb)
    if da is not None and db is not None:
        eq = _numbers_equal(na, nb, da, db)
        return CheckResult(eq, "match" if eq else "mismatch", "numbers")
    ra, rb = _simple_rational(na), _simple_rational(nb)
    if ra is not None and rb is not None:
        eq = _rationals_equal(ra, rb)
        return CheckResult(eq, "match" if eq else "mismatch", "rationals")
    if "%" in na or "%" in nb:
        got = _percent_verdict(na, nb)
        if got is not None:
            return got
    ca, cb = _choices(na), _choices(nb)
    if ca is not None and cb is not None:  # choice letters, in any order
        return CheckResult(ca == cb, "match" if ca == cb else "mismatch", "choices")
    return None


# ---- worker side --------------------------------------------------------------------------------------------------

_WORKER_STATE: dict = {}


def _worker_setup(memory_limit_mb: int | None) -> None:
    if memory_limit_mb:
        try:
            import resource

            lim = int(memory_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        except (ImportError, ValueError, OSError):
            pass
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    from functools import lru_cache

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    @lru_cache(maxsize=8192)
    def _parse(s: str):
        return tuple(parse("\\boxed{" + s + "}", extraction_config=cfg, parsing_timeout=None))

    _WORKER_STATE["parse"] = _parse
    _WORKER_STATE["verify"] = verify
    # Warm up (first use of the LaTeX grammar and of simplify costs ~0.5 s of CPU) before reporting ready, so that
    # this cost is not charged to the first item's timeout.
    try:
        _worker_check("\\frac{\\sqrt{2}}{2}x^2-1", "(x-1)(x+1)", quick=False)
        _worker_check("\\{1,2\\}", "(1,2]", quick=False)
        _parse.cache_clear()
    except Exception:  # noqa: BLE001
        pass


def _worker_check(a: str, b: str, quick: bool = True) -> tuple[bool, str, str]:
    parse_ = _WORKER_STATE["parse"]
    verify = _WORKER_STATE["verify"]
    gold = parse_(b)
    pred = parse_(a)
    if not gold:
        return False, "mismatch", "gold not parsed"
    if not pred:
        return False, "mismatch", "answer not parsed"
    if quick and _numeric_mismatch(gold, pred):
        return False, "mismatch", "numeric values differ"
    ok = verify(list(gold), list(pred), timeout_seconds=None, allow_set_relation_comp=True)
    return bool(ok), ("match" if ok else "mismatch"), ""


def _numeric_mismatch(gold: tuple, pred: tuple) -> bool:
    """True when two parsed answers are provably different, decided numerically instead of by ``simplify``.

    math-verify ends a failed comparison of two expressions with ``simplify(gold - pred)``, which costs tens to
    hundreds of milliseconds; most wrong answers are simply different numbers or polynomials. We claim "different"
    only for a plain pair of scalar expressions (no relation, set, tuple, matrix, percentage, undefined function, or
    text-like symbol product, which math-verify treats specially), whose string forms differ, and whose values at a
    fixed rational point differ by more than 1e-6 relative (math-verify's float rounding is 6 decimals, so it
    could not call them equal either). Anything else: False (math-verify decides)."""
    from sympy import E, Expr, Float, MatrixBase, Mul, Rational, Symbol, UnevaluatedExpr
    from sympy.core.function import AppliedUndef

    ge = [x for x in gold if not isinstance(x, str)]
    pe = [x for x in pred if not isinstance(x, str)]
    if len(ge) != 1 or len(pe) != 1:
        return False
    gs = {x.strip() for x in gold if isinstance(x, str)}
    ps = {x.strip() for x in pred if isinstance(x, str)}
    if gs & ps:
        return False
    g, p = ge[0], pe[0]
    for e in (g, p):
        if type(e).__module__.startswith("latex2sympy2_extended"):  # its own FiniteSet / logic classes
            return False
        if not isinstance(e, Expr) or isinstance(e, (Symbol, MatrixBase)) or e.is_Relational:
            return False
        if e.has(UnevaluatedExpr) or e.atoms(AppliedUndef):
            return False
        if isinstance(e, Mul) and all(x == E or isinstance(x, Symbol) for x in e.args):
            return False
        if e.is_Matrix or getattr(e, "is_Boolean", False):
            return False
    syms = sorted(g.free_symbols | p.free_symbols, key=lambda x: x.name)
    if len(syms) > 8:
        return False
    # fixed, "generic" positive rational values: an identity that fails at one point is not an identity
    point = {x: Rational(37 + 11 * k, 23 + 2 * k) for k, x in enumerate(syms)}
    try:
        vg = complex(g.evalf(40, subs=point))
        vp = complex(p.evalf(40, subs=point))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return False
    for v in (vg, vp):
        if v != v or abs(v) == float("inf"):
            return False
    scale = max(1.0, abs(vg), abs(vp))
    if scale > 1e12 and (g.has(Float) or p.has(Float)):
        return False  # float precision of huge values: let math-verify decide
    return abs(vg - vp) > 1e-6 * scale



_CPU_MARK = [0.0]  # the worker's CPU clock when it last finished an item (or its set-up)


def _worker_init(memory_limit_mb: int | None) -> None:  # pragma: no cover - runs in the worker process
    """Pool initializer: math-verify warmed up, a CPU overrun fatal at once (SIGPROF's default action).

    A set-up that fails is remembered rather than raised, so that every item then says why (``worker cannot start``)
    instead of the pool failing without a reason."""
    try:
        if _CPU_LIMITS:
            signal.signal(signal.SIGPROF, signal.SIG_DFL)
        _worker_setup(memory_limit_mb)
    except BaseException as e:  # noqa: BLE001
        _WORKER_STATE["fatal"] = f"{type(e).__name__}: {e}"
    _CPU_MARK[0] = time.process_time()


def _set_cpu_limit(seconds: float | None) -> None:
    """End this process after ``seconds`` more of its CPU time (SIGPROF); None disarms the timer."""
    if _CPU_LIMITS:
        signal.setitimer(signal.ITIMER_PROF, max(seconds, 1e-3) if seconds is not None else 0.0)


def _verify_chunk(items: list[tuple[str, str]], cpu_budget: float) -> list[tuple[bool, str, str, float]]:  # worker
    """A pool task: the items in order, each with its own CPU budget."""
    return [_verify_task(a, b, cpu_budget) for a, b in items]


def _verify_task(a: str, b: str, cpu_budget: float) -> tuple[bool, str, str, float]:  # pragma: no cover - worker
    """One item in a worker: ``(equal, reason, detail, CPU seconds since the previous item ended)``."""
    fatal = _WORKER_STATE.get("fatal")
    if fatal is not None:
        return False, "error", f"worker cannot start: {fatal}", 0.0
    _set_cpu_limit(cpu_budget)
    try:
        eq, reason, detail = _worker_check(a, b)
    except MemoryError:
        eq, reason, detail = False, "error", "MemoryError"
    except RecursionError:
        eq, reason, detail = False, "error", "RecursionError"
    except Exception as e:  # noqa: BLE001
        eq, reason, detail = False, "error", f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        _set_cpu_limit(None)  # never while pebble's own code runs (it may hold the pool's channel lock)
    now = time.process_time()
    spent, _CPU_MARK[0] = now - _CPU_MARK[0], now
    return bool(eq), reason, detail, spent


# ---- parent side --------------------------------------------------------------------------------------------------

_WORKER_NAME = "evolkit-answer-worker"
_PRELOAD_SET = False


class _WorkerContext:
    """The multiprocessing context handed to pebble: the chosen start method's, with the worker processes it starts
    named (a worker re-running an unguarded ``__main__`` script can tell it is one) and recorded (for
    :meth:`AnswerChecker.worker_pids`). Everything else is the wrapped context's."""

    def __init__(self, start_method: str):
        global _PRELOAD_SET
        if start_method == "forkserver" and "forkserver" in mp.get_all_start_methods():
            self._ctx = mp.get_context("forkserver")
            if not _PRELOAD_SET:
                # The fork server imports the heavy modules once, so that a replaced worker starts in milliseconds
                # (takes effect when this process starts its fork server, i.e. unless something already did).
                self._ctx.set_forkserver_preload(["sympy", "math_verify", __name__])
                _PRELOAD_SET = True
        else:
            self._ctx = mp.get_context("spawn")
        self.processes: weakref.WeakSet[Any] = weakref.WeakSet()  # pebble drops a dead worker: it goes from here too
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def Process(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["name"] = _WORKER_NAME
        proc = self._ctx.Process(*args, **kwargs)
        self.processes.add(proc)
        self.started += 1
        return proc


_LIVE_CHECKERS: weakref.WeakSet[AnswerChecker] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - interpreter exit
    """Stop the workers of checkers nobody closed (their processes would otherwise keep the interpreter from exiting)."""
    for ch in list(_LIVE_CHECKERS):
        try:
            ch.close()
        except Exception:  # noqa: BLE001
            pass


class AnswerChecker:
    """Decides answer equivalence with math-verify in killable worker processes (a ``pebble`` process pool).

    ``workers``: pool size (default: CPU count, at most 4). ``timeout``: seconds of CPU per item before its worker is
    killed (a CPU-time timer in the worker; where the platform has none, wall-clock seconds). ``wall_timeout``
    (default ``max(3*timeout, timeout+5)``): the hard wall-clock limit per item, whatever the CPU use, so an item is
    never cut short just because the machine is busy, and never runs longer than ``wall_timeout``. ``start_method``:
    ``forkserver`` (default) or ``spawn``; never ``fork`` (the parent may hold threads or torch). ``memory_limit_mb``:
    address-space limit of each worker (a runaway expression fails with MemoryError, reason ``error``).
    ``cache_size``: LRU entries of (answer, gold) -> result. ``max_batch``: most items per pool task (consecutive
    items in one worker share its parse cache). ``startup_timeout``: seconds the pool may go without finishing any
    item before the waiting items are given up as errors and the pool is restarted (worker start-up, importing
    math-verify, must fit in it). ``fast_path=False`` sends every answered pair to math-verify (for benchmarks and for
    auditing the fast path; missing answers are still decided locally).

    Thread-safe: concurrent calls share the pool. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        *,
        start_method: str = "forkserver",
        memory_limit_mb: int | None = 4096,
        cache_size: int = 100_000,
        max_batch: int = 32,
        startup_timeout: float = 120.0,
        fast_path: bool = True,
        wall_timeout: float | None = None,
    ):
        if workers is None:
            workers = max(1, min(4, os.cpu_count() or 1))
        self.workers = max(1, int(workers))
        self.timeout = float(timeout)
        self.start_method = start_method
        self.memory_limit_mb = memory_limit_mb
        self.cache_size = int(cache_size)
        self.max_batch = max(1, int(max_batch))
        self.startup_timeout = float(startup_timeout)
        self.fast_path = bool(fast_path)
        self.wall_timeout = float(wall_timeout) if wall_timeout is not None else max(3 * self.timeout, self.timeout + 5)
        self._cache: OrderedDict[tuple[str, str], CheckResult] = OrderedDict()
        self._pool: ProcessPool | None = None
        self._ctx: _WorkerContext | None = None
        self._lock = threading.RLock()
        self._finished = 0  # pool tasks finished (any outcome): the progress the watchdog looks for
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats: Counter = Counter()
        _LIVE_CHECKERS.add(self)

    # -- lifecycle --

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Stop the workers and the helper threads. Idempotent."""
        with self._lock:
            self._closed = True
            self._stop_pool()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (for tests and monitoring)."""
        procs = self._ctx.processes if self._ctx is not None and self._pool is not None else []
        return [p.pid for p in procs if p.pid is not None and p.is_alive()]

    # -- public checks --

    def equivalent(self, a: str | None, b: str | None) -> bool:
        """True when answer ``a`` is equivalent to gold ``b``."""
        return self.check_many([(a, b)])[0].equal

    def check(self, a: str | None, b: str | None) -> CheckResult:
        return self.check_many([(a, b)])[0]

    def check_many(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[CheckResult]:
        """Verdicts for ``(answer, gold)`` pairs, in order. Never raises for bad inputs; never hangs past
        ``wall_timeout`` per item (plus worker start-up)."""
        results: list[CheckResult | None] = [None] * len(pairs)
        todo: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            if self._closed:
                raise RuntimeError("AnswerChecker is closed")
            for i, (a, b) in enumerate(pairs):
                a = a if a is None or isinstance(a, str) else str(a)
                b = b if b is None or isinstance(b, str) else str(b)
                fast = _fast_verdict(a, b, self.fast_path)
                if fast is not None:
                    results[i] = fast
                    self.stats["fast"] += 1
                    continue
                key = (_prepare_for_verify(a), _prepare_for_verify(b))
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    results[i] = CheckResult(hit.equal, hit.reason, hit.detail, "cache")
                    self.stats["cache"] += 1
                    continue
                todo.setdefault(key, []).append(i)
        if todo:
            self._verify_all(todo, results)
        return results  # type: ignore[return-value]

    async def acheck_many(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[CheckResult]:
        """:meth:`check_many` from an asyncio event loop, without blocking it (runs in a helper thread; concurrent
        calls run concurrently and share the pool)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="answer-checker")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.check_many, list(pairs))

    async def aequivalent(self, a: str | None, b: str | None) -> bool:
        return (await self.acheck_many([(a, b)]))[0].equal

    # -- pool --

    def _start_pool(self) -> ProcessPool:
        if mp.current_process().name == _WORKER_NAME:
            # We are a worker re-running the parent's main script (spawn/forkserver do that): never recurse.
            raise RuntimeError(
                "AnswerChecker used at import time of a __main__ script: put the calling code under "
                "`if __name__ == '__main__':` (needed with the spawn/forkserver start methods)"
            )
        self._ctx = _WorkerContext(self.start_method)
        return ProcessPool(max_workers=self.workers, initializer=_worker_init, initargs=(self.memory_limit_mb,),
                           context=self._ctx)

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if self._ctx is not None:
            self.stats["workers_started"] += self._ctx.started
            self._ctx.started = 0
        if pool is not None:
            try:
                pool.stop()
                pool.join(timeout=10)
            except Exception:
                log.debug("answer checker: stopping the pool failed", exc_info=True)

    def _submit(self, batch: list[tuple[str, str]]) -> cf.Future:
        """One pool task for ``batch`` (consecutive items: a worker's parse cache serves neighbours that share an
        expression). Called under the lock. A pool that cannot take work gives a failed future, not an exception."""
        if self._pool is not None and not self._pool.active:  # broken (e.g. its workers could not start): replace
            self._stop_pool()
        if self._pool is None:
            self._pool = self._start_pool()  # lazy: workers start with the first item
        wall = (self.wall_timeout if _CPU_LIMITS else self.timeout) * len(batch)
        try:
            fut = self._pool.schedule(_verify_chunk, args=(batch, self.timeout), timeout=wall)
        except Exception as e:  # noqa: BLE001
            fut = cf.Future()
            fut.set_exception(e)
        else:
            fut.add_done_callback(self._count_finished)
        return fut

    def _count_finished(self, _fut: cf.Future) -> None:
        self._finished += 1

    def _verify_all(self, todo: dict[tuple[str, str], list[int]], results: list[CheckResult | None]) -> None:
        """Verdicts of ``todo`` (item -> positions in ``results``) from the pool, collected as they arrive.

        Items go in chunks of consecutive ones (up to ``max_batch``, smaller when there are few), at most two chunks
        per worker at a time (pebble looks at every queued task ten times a second: thousands of queued tasks would
        cost the parent milliseconds per look). A chunk whose worker was killed (an item overran its limit) is sent
        again one item per task, so that only the item at fault gets ``timeout``. When the pool finishes nothing at all
        for ``startup_timeout + wall_timeout`` (workers that cannot start), the pool is restarted and the waiting items
        fail (not cached)."""
        pending = deque(todo)
        singles: deque[tuple[str, str]] = deque()  # items of a chunk whose worker was killed
        active: dict[cf.Future, list[tuple[str, str]]] = {}
        window = 2 * self.workers
        quiet = self.startup_timeout + self.wall_timeout
        seen, since = self._finished, time.monotonic()
        try:
            while pending or singles or active:
                while (pending or singles) and len(active) < window and not self._closed:
                    if singles:
                        batch = [singles.popleft()]
                    else:
                        size = max(1, min(self.max_batch, len(pending) // (2 * self.workers)))
                        batch = [pending.popleft() for _ in range(min(size, len(pending)))]
                    with self._lock:
                        active[self._submit(batch)] = batch
                done, _ = cf.wait(active, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                if not done and (self._closed or (self._finished == seen and time.monotonic() - since > quiet)):
                    if not self._closed:
                        with self._lock:
                            self._stop_pool()
                    done = set(active)  # given up: collected as cancelled, the rest below
                    pending.clear()
                    singles.clear()
                if self._finished != seen:
                    seen, since = self._finished, time.monotonic()
                with self._lock:
                    for fut in done:
                        batch = active.pop(fut)
                        verdicts = self._verdicts(fut, len(batch))
                        if verdicts is None:
                            singles.extend(batch)
                            continue
                        for key, (res, infra) in zip(batch, verdicts):
                            if not infra:  # a failure of the pool itself is tried again next time
                                self._cache[key] = res
                            for i in todo[key]:
                                results[i] = res
                            self.stats["verify"] += 1
                            self.stats[res.reason] += 1
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        except BaseException:
            # interrupted (KeyboardInterrupt, ...): the items this call started are dropped (pebble stops a worker
            # whose item is cancelled)
            for fut in active:
                fut.cancel()
            raise
        given_up = CheckResult(False, "error", "worker pool: the check was given up (no progress, or closed)", "verify")
        for positions in todo.values():
            for i in positions:
                if results[i] is None:
                    results[i] = given_up

    def _verdicts(self, fut: cf.Future, n: int) -> list[tuple[CheckResult, bool]] | None:
        """Each item's verdict and whether it is a failure of the pool itself (not cached); None when a chunk of
        several items lost its worker to a limit (its items are then checked one by one)."""
        if not fut.done():  # given up by the watchdog or close(): pebble stops its worker
            fut.cancel()
        try:
            out = fut.result(timeout=0)
        except cf.TimeoutError:  # pebble's wall-clock limit
            self.stats["kills"] += 1
            if n > 1:
                return None
            detail = f"over {self.wall_timeout:g} s of wall time; worker killed"
            return [(CheckResult(False, "timeout", detail, "verify"), False)]
        except ProcessExpired as e:
            if _CPU_LIMITS and e.exitcode == -signal.SIGPROF:
                self.stats["kills"] += 1
                if n > 1:
                    return None
                return [(CheckResult(False, "timeout", f"over {self.timeout:g} s of CPU; worker killed", "verify"), False)]
            self.stats["crashes"] += 1
            if n > 1:
                return None
            return [(CheckResult(False, "error", f"worker died (exit code {e.exitcode})", "verify"), True)]
        except cf.CancelledError:
            res = CheckResult(False, "error", "worker pool: the check was given up (no progress, or closed)", "verify")
            return [(res, True)] * n
        except Exception as e:  # noqa: BLE001 - the pool broke (BrokenProcessPool, ...)
            return [(CheckResult(False, "error", f"worker pool failed: {type(e).__name__}: {e}", "verify"), True)] * n
        verdicts = []
        for eq, reason, detail, cpu in out:
            self.stats["worker_cpu_s"] += cpu
            verdicts.append((CheckResult(eq, reason, detail, "verify"), detail.startswith("worker cannot start")))
        return verdicts


# --------------------------------------------------------------------------------------------------------------------
# Majority vote
# --------------------------------------------------------------------------------------------------------------------


def majority_answer(answers: Sequence[str | None], checker: AnswerChecker) -> tuple[str | None, float]:
    """Self-consistency vote: cluster ``answers`` by equivalence and return (representative of the largest cluster,
    its share of *all* samples, None answers included in the denominator).

    Answers are first grouped by :func:`normalize_answer`; groups are then merged greedily, largest first, into the
    first earlier cluster whose leader is equivalent (one batched :meth:`AnswerChecker.check_many` call for all leader
    pairs). The representative is the most frequent raw spelling of the winning cluster's leading group. Ties go to
    the cluster seen first. Returns ``(None, 0.0)`` when there is no answer at all."""
    total = len(answers)
    if total == 0:
        return None, 0.0
    groups: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = normalize_answer(a)
        if not key:
            continue
        groups.setdefault(key, []).append(a)
        order.setdefault(key, i)
    if not groups:
        return None, 0.0
    keys = sorted(groups, key=lambda k: (-len(groups[k]), order[k]))
    reps = {k: Counter(groups[k]).most_common(1)[0][0] for k in keys}
    pair_idx = [(i, j) for j in range(len(keys)) for i in range(j)]
    verdicts = checker.check_many([(reps[keys[j]], reps[keys[i]]) for i, j in pair_idx]) if pair_idx else []
    eq = {(i, j): v.equal for (i, j), v in zip(pair_idx, verdicts)}
    leaders: list[int] = []
    size: dict[int, int] = {}
    first: dict[int, int] = {}
    for j in range(len(keys)):
        home = next((lead for lead in leaders if eq.get((lead, j))), None)
        if home is None:
            leaders.append(j)
            size[j] = len(groups[keys[j]])
            first[j] = order[keys[j]]
        else:
            size[home] += len(groups[keys[j]])
            first[home] = min(first[home], order[keys[j]])
    best = min(leaders, key=lambda lead: (-size[lead], first[lead]))
    return reps[keys[best]], size[best] / total
