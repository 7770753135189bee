"""Final-answer extraction, answer equivalence and step splitting.

Three parts:

* **Extraction** (pure Python, cheap, safe on any input): :func:`extract_answer` pulls the final answer out of a
  model's text (``The answer is: X`` > ``#### X`` > last ``\\boxed{X}``/``\\fbox{X}`` > Minerva ``Final Answer: ...``
  > colon-less ``the answer is X`` > a line ``A: X``); :func:`gsm8k_gold` and :func:`math_gold` read the reference
  answers of the two datasets; :func:`normalize_answer` makes a display / string key.
* **Equivalence**: :class:`AnswerChecker` decides whether two answers are mathematically the same. Cheap cases are
  decided in the calling process (missing answer, identical normalised strings, two plain numbers, two simple
  fractions/decimals); everything else goes to ``math-verify`` (sympy) in a pool of worker processes, where two
  scalar expressions that differ numerically are called different without sympy's costly ``simplify``. Each item has
  a hard timeout: a worker that overruns it is killed (SIGKILL) and replaced, and the item gets ``reason="timeout"``.
  Results are cached per pair. :func:`majority_answer` clusters sampled answers by equivalence (self-consistency).
* **Step splitting** for process reward models: :func:`split_steps` never cuts inside a LaTeX block.

The pool uses the ``forkserver`` (or ``spawn``) start method, which re-imports the parent's ``__main__`` script in
each worker: a script that uses :class:`AnswerChecker` needs the usual ``if __name__ == "__main__":`` guard (without
it, the worker refuses to recurse and the items get ``reason="error"``).

Pair order convention: everywhere a pair is taken it is ``(answer, gold)`` (candidate first, reference second).
``math-verify`` is not symmetric in a few corners (an equation as gold vs a bare value as answer); we call it with
``allow_set_relation_comp=True`` so that intervals and inequalities compare both ways.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from decimal import Decimal, InvalidOperation, localcontext
from multiprocessing.connection import wait as _mp_wait
from typing import Iterable, Sequence

__all__ = [
    "AnswerChecker",
    "CheckResult",
    "extract_answer",
    "find_boxed",
    "gsm8k_gold",
    "majority_answer",
    "math_gold",
    "normalize_answer",
    "split_steps",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS_RE = re.compile(r"the\s+answer\s+is\b[ \t]*:?", re.IGNORECASE)
_MINERVA_RE = re.compile(r"final\s+answer\s*:\s*(?:the\s+final\s+answer\s+is\s*:?)?", re.IGNORECASE)
_HOPE_RE = re.compile(r"\.?\s*I\s+hope\s+it\s+is\s+correct\.?\s*$", re.IGNORECASE)
_CALC_RE = re.compile(r"<<[^<>\n]*>>")  # GSM8k calculator annotations
_A_LINE_RE = re.compile(r"(?m)^[ \t]*A:[ \t]*(\S.*)$")


def _brace_end(text: str, open_idx: int) -> int | None:
    """Index just past the brace matching ``text[open_idx] == '{'``, or None when unbalanced.

    A backslash escapes the next character (so ``\\{`` and ``\\}`` do not count)."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def find_boxed(text: str, last: bool = True) -> str | None:
    """Content of the last (or first) ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces (nested braces are fine).

    Also accepts the brace-less form ``\\boxed 5``. An unbalanced (truncated) box is skipped in favour of an earlier
    complete one. Returns the stripped content, or None when there is no complete, non-empty box."""
    if not text or "\\" not in text:
        return None
    matches = list(_BOX_RE.finditer(text))
    if last:
        matches.reverse()
    for m in matches:
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _brace_end(text, j)
            if end is None:
                continue
            content = text[j + 1 : end - 1].strip()
        elif j > m.end():  # "\boxed 5": one token after a space
            tok = re.match(r"[^\s$.,;]+", text[j:])
            if not tok:
                continue
            content = tok.group(0)
        else:
            continue
        if content:
            return content
    return None


def _clean_tail(x: str) -> str | None:
    """Tidy the text that follows an answer marker: one line, no surrounding $ / ** / \\( \\), no final period."""
    x = _CALC_RE.sub("", x).strip()
    if not x:
        return None
    boxed = find_boxed(x)
    if boxed is not None:
        return boxed
    if _BOX_RE.search(x):  # an empty or unclosed box: no answer here
        return None
    for _ in range(3):
        before = x
        x = x.strip()
        if x.endswith("."):
            x = x[:-1].rstrip()
        if x.startswith("**") and x.endswith("**") and len(x) > 4:
            x = x[2:-2]
        if x.startswith("$$") and x.endswith("$$") and len(x) > 4:
            x = x[2:-2]
        elif x.startswith("$") and x.endswith("$") and len(x) > 2 and not x.endswith("\\$"):
            x = x[1:-1]
        if x.startswith("\\(") and x.endswith("\\)"):
            x = x[2:-2]
        if x.startswith("\\[") and x.endswith("\\]"):
            x = x[2:-2]
        if x == before:
            break
    x = x.strip()
    if x.startswith("$") and re.match(r"\$\s*[-\d.]", x) and x.count("$") == 1:  # currency: "$18"
        x = x[1:].strip()
    return x or None


def _after_marker(text: str, pos: int) -> str | None:
    """The rest of the line from ``pos``; when that is empty, the next non-empty line."""
    nl = text.find("\n", pos)
    line = text[pos:] if nl < 0 else text[pos:nl]
    if line.strip():
        return _clean_tail(line)
    if nl < 0:
        return None
    for nxt in text[nl + 1 :].split("\n"):
        if nxt.strip():
            return _clean_tail(nxt)
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model's text, or None.

    Priority: ``The answer is: X`` (WizardMath's format; last occurrence, case-insensitive, rest of the line, trailing
    period dropped) > ``#### X`` (last) > last ``\\boxed{X}`` / ``\\fbox{X}`` (balanced braces) > Minerva
    ``Final Answer: The final answer is X. I hope it is correct.`` / ``Final Answer: X`` > ``The answer is X``
    without a colon > a line ``A: X`` (the format of the GSM8k paper's released model samples).

    The colon-less ``the answer is X`` ranks below ``####`` and boxes because it is ordinary prose in reference
    solutions ("so the answer is $2^5 = \\boxed{32}$", "checking the answer is necessary because ..."): it is used
    only when no stronger marker exists. When its line holds a box, the box content is returned."""
    if not text:
        return None
    strong = weak = None
    for m in _ANSWER_IS_RE.finditer(text):
        if m.group(0).rstrip().endswith(":"):
            strong = m
        else:
            weak = m
    if strong is not None:
        got = _after_marker(text, strong.end())
        if got:
            return got
    idx = text.rfind("####")
    if idx >= 0:
        got = _after_marker(text, idx + 4)
        if got:
            return got
    boxed = find_boxed(text)
    if boxed is not None:
        return boxed
    last = None
    for last in _MINERVA_RE.finditer(text):
        pass
    if last is not None:
        nl = text.find("\n", last.end())
        line = text[last.end() :] if nl < 0 else text[last.end() : nl]
        line = _HOPE_RE.sub("", line)
        got = _clean_tail(line)
        if got:
            return got
    if weak is not None:
        got = _after_marker(text, weak.end())
        if got:
            return got
    a_last = None
    for a_last in _A_LINE_RE.finditer(text):
        pass
    if a_last is not None:
        return _clean_tail(a_last.group(1))
    return None


def gsm8k_gold(answer_text: str) -> str | None:
    """Gold answer of a GSM8k record: the text after ``####``, stripped, commas removed."""
    if not answer_text:
        return None
    idx = answer_text.rfind("####")
    if idx < 0:
        return None
    gold = answer_text[idx + 4 :].strip().replace(",", "")
    return gold or None


def math_gold(solution: str) -> str | None:
    """Gold answer of a MATH record: the content of the solution's last ``\\boxed{}`` / ``\\fbox{}``."""
    return find_boxed(solution)


# --------------------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------------------

_PLAIN_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_UNIT_WORD = r"[A-Za-z][A-Za-z.]*(?:\s+[A-Za-z][A-Za-z.]*)*"
_TRAILING_UNIT_RE = re.compile(
    r"(?<=\S)\s*\\(?:text|textbf|mbox|mathrm)\{\s*" + _UNIT_WORD + r"\s*\}(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$"
)
_WHOLE_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")


def normalize_answer(ans: str | None) -> str:
    """A canonical string for display and as a cheap equality key (not a full CAS normal form).

    Strips ``$``, ``\\!`` and spacing macros, ``\\left``/``\\right``, ``\\displaystyle``, a surrounding ``\\boxed{}``, a
    trailing text unit (``5\\text{ cm}`` -> ``5``), degree marks; ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12`` ->
    ``\\frac{1}{2}``; thousands commas and trailing zeros in plain numbers (``1,000.0`` -> ``1000``); all whitespace."""
    if ans is None:
        return ""
    s = str(ans).strip()
    if not s:
        return ""
    if len(s) > 10_000:  # no clever work on huge inputs
        return re.sub(r"\s+", "", s)
    s = s.replace("\n", " ")
    inner = find_boxed(s)
    if inner is not None and s.startswith(("\\boxed", "\\fbox")) and s.endswith("}"):
        s = inner
    s = s.replace("\\$", "")
    s = re.sub(r"(?<!\\)\$", "", s)
    s = s.replace("\\!", "")
    s = re.sub(r"\\[,;: ]", " ", s)
    s = s.replace("~", " ")
    s = re.sub(r"\\(?:left|right)\s*\.", "", s)
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\(?:displaystyle|textstyle)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\s*\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = re.sub(r"\\degree(?![A-Za-z])|°", "", s)
    s = s.strip()
    s = _TRAILING_UNIT_RE.sub("", s).strip()
    m = _WHOLE_TEXT_RE.fullmatch(s)
    if m:
        s = m.group(1).strip()
    s = s.replace("{,}", ",")
    s = re.sub(r"\s+", "", s)
    if s.endswith(".") and not _PLAIN_NUM_RE.fullmatch(s):
        s = s[:-1]
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if _PLAIN_NUM_RE.fullmatch(s):
        s = _canon_number(s)
    return s


def _canon_number(s: str) -> str:
    sign = ""
    if s[0] in "+-":
        sign, s = ("-" if s[0] == "-" else ""), s[1:]
    if "." in s:
        ip, fp = s.split(".", 1)
        fp = fp.rstrip("0")
    else:
        ip, fp = s, ""
    ip = ip.lstrip("0") or "0"
    out = ip + ("." + fp if fp else "")
    if out == "0":
        sign = ""
    return sign + out


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


_INT = r"\d{1,30}"
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
# Checker
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
        (fa, deca), (fb, decb) = ra, rb
        if deca or decb:  # math-verify: a float on either side -> compare rounded to 6 decimals
            eq = round(fa, 6) == round(fb, 6)
        else:
            eq = fa == fb
        return CheckResult(eq, "match" if eq else "mismatch", "rationals")
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


def _worker_main(conn, memory_limit_mb: int | None) -> None:  # pragma: no cover - runs in the child process
    try:
        _worker_setup(memory_limit_mb)
    except BaseException as e:  # noqa: BLE001
        try:
            conn.send(("fatal", f"{type(e).__name__}: {e}"))
        finally:
            return
    conn.send(("ready", time.process_time()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        for idx, a, b in msg:
            try:
                eq, reason, detail = _worker_check(a, b)
            except MemoryError:
                eq, reason, detail = False, "error", "MemoryError"
            except RecursionError:
                eq, reason, detail = False, "error", "RecursionError"
            except Exception as e:  # noqa: BLE001
                eq, reason, detail = False, "error", f"{type(e).__name__}: {str(e)[:200]}"
            try:
                conn.send((idx, eq, reason, detail, time.process_time()))
            except (EOFError, OSError, BrokenPipeError):
                return


# ---- parent side --------------------------------------------------------------------------------------------------


_WORKER_NAME = "evolkit-answer-worker"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") and "SC_CLK_TCK" in os.sysconf_names else 100


def _proc_cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU seconds of a process, from /proc (Linux); None when unavailable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


class _Worker:
    __slots__ = ("proc", "conn", "state", "inflight", "deadline", "started", "item_wall", "item_cpu")

    def __init__(self, ctx, memory_limit_mb):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main, args=(child_conn, memory_limit_mb), daemon=True, name=_WORKER_NAME
        )
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.state = "starting"
        self.inflight: deque = deque()
        self.deadline = 0.0
        self.item_wall = 0.0  # when the current item started (wall clock, parent's monotonic)
        self.item_cpu = 0.0  # the worker's CPU time when the current item started (as it reported)
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:  # noqa: BLE001
            pass
        self.proc.join(timeout=2.0)
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        self.state = "dead"


_FORKSERVER_PRELOAD_DONE = False


def _get_context(start_method: str):
    global _FORKSERVER_PRELOAD_DONE
    if start_method == "forkserver" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        if not _FORKSERVER_PRELOAD_DONE:
            # Import the heavy modules once in the fork server, so that a replaced worker starts in milliseconds.
            # Has an effect only if nothing in this process started the fork server yet.
            try:
                from multiprocessing import forkserver as _fs

                if getattr(_fs._forkserver, "_forkserver_pid", None) is None:
                    ctx.set_forkserver_preload(["sympy", "math_verify", "evolkit.answers"])
            except Exception:  # noqa: BLE001
                pass
            _FORKSERVER_PRELOAD_DONE = True
        return ctx
    return mp.get_context("spawn")


class AnswerChecker:
    """Decides answer equivalence with math-verify in killable worker processes.

    ``workers``: pool size (default: CPU count, at most 4). ``timeout``: seconds of CPU per item before its worker is
    killed (measured from ``/proc``; where that is unavailable, wall-clock seconds). ``wall_timeout`` (default
    ``max(3*timeout, timeout+5)``): the hard wall-clock limit per item, whatever the CPU use — so an item is never
    cut short just because the machine is busy, and never runs longer than ``wall_timeout``.
    ``start_method``: ``forkserver`` (default) or ``spawn``; never ``fork`` (the parent may hold threads or torch).
    ``memory_limit_mb``: address-space limit of each worker (a runaway expression fails with MemoryError, reason
    ``error``). ``cache_size``: LRU entries of (answer, gold) -> result. ``startup_timeout``: seconds a worker may take
    to import math-verify. ``fast_path=False`` sends every answered pair to math-verify (for benchmarks and for
    auditing the fast path; missing answers are still decided locally).

    Thread-safe: concurrent calls are serialised. Use as a context manager or call :meth:`close`."""

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
        self._pool: list[_Worker] = []
        self._ctx = None
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats: Counter = Counter()

    # -- lifecycle --

    def __enter__(self) -> "AnswerChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Stop the workers (politely, then by force) and the helper thread. Idempotent."""
        with self._lock:
            self._closed = True
            for w in self._pool:
                if w.state != "dead":
                    try:
                        w.conn.send(None)
                    except Exception:  # noqa: BLE001
                        pass
            for w in self._pool:
                if w.state != "dead":
                    w.proc.join(timeout=1.0)
                    w.kill()
            self._pool = []
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (for tests and monitoring)."""
        return [w.proc.pid for w in self._pool if w.state != "dead" and w.proc.pid is not None]

    # -- public checks --

    def equivalent(self, a: str | None, b: str | None) -> bool:
        """True when answer ``a`` is equivalent to gold ``b``."""
        return self.check_many([(a, b)])[0].equal

    def check(self, a: str | None, b: str | None) -> CheckResult:
        return self.check_many([(a, b)])[0]

    def check_many(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[CheckResult]:
        """Verdicts for ``(answer, gold)`` pairs, in order. Never raises for bad inputs; never hangs past
        ``timeout`` per item (plus worker start-up)."""
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
                keys = list(todo)
                try:
                    verdicts = self._run_pool(keys)
                except BaseException:
                    # interrupted (KeyboardInterrupt, ...): busy workers hold stale work; drop them
                    for w in self._pool:
                        if w.state != "idle":
                            w.kill()
                    self._pool = [w for w in self._pool if w.state != "dead"]
                    raise
                for key, res in zip(keys, verdicts):
                    if not (res.reason == "error" and res.detail.startswith("worker ")):  # infrastructure: retry later
                        self._cache[key] = res
                    for i in todo[key]:
                        results[i] = res
                    self.stats["verify"] += 1
                    self.stats[res.reason] += 1
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return results  # type: ignore[return-value]

    async def acheck_many(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[CheckResult]:
        """:meth:`check_many` from an asyncio event loop, without blocking it (runs in a helper thread)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer-checker")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.check_many, list(pairs))

    async def aequivalent(self, a: str | None, b: str | None) -> bool:
        return (await self.acheck_many([(a, b)]))[0].equal

    # -- pool --

    def _spawn(self) -> _Worker:
        if mp.current_process().name == _WORKER_NAME:
            # We are a worker re-running the parent's main script (spawn/forkserver do that): never recurse.
            raise RuntimeError(
                "AnswerChecker used at import time of a __main__ script: put the calling code under "
                "`if __name__ == '__main__':` (needed with the spawn/forkserver start methods)"
            )
        if self._ctx is None:
            self._ctx = _get_context(self.start_method)
        self.stats["workers_started"] += 1
        return _Worker(self._ctx, self.memory_limit_mb)

    def _ensure_pool(self) -> None:
        self._pool = [w for w in self._pool if w.state != "dead" and w.proc.is_alive()]
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())

    def _run_pool(self, keys: list[tuple[str, str]]) -> list[CheckResult]:
        out: list[CheckResult | None] = [None] * len(keys)
        remaining = [len(keys)]
        pending: deque[int] = deque(range(len(keys)))
        self._ensure_pool()
        fatal: list = [None, 0]  # last start-up failure, count

        def put(i: int, res: CheckResult) -> None:
            if out[i] is None:
                remaining[0] -= 1
            out[i] = res

        def replace(w: _Worker, verdict_for_head: CheckResult | None) -> None:
            if w.inflight and verdict_for_head is not None:
                put(w.inflight.popleft(), verdict_for_head)
            pending.extendleft(reversed(w.inflight))
            w.inflight.clear()
            w.kill()
            self._pool[self._pool.index(w)] = self._spawn()

        def assign(w: _Worker) -> None:
            size = max(1, min(self.max_batch, len(pending) // (2 * self.workers) or 1))
            batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            w.inflight.extend(batch)
            try:
                w.conn.send([(i, keys[i][0], keys[i][1]) for i in batch])
            except Exception:  # noqa: BLE001
                replace(w, None)
                return
            w.state = "busy"
            w.item_wall = time.monotonic()
            w.deadline = w.item_wall + self.timeout

        while remaining[0] > 0:
            if fatal[0] is not None and fatal[1] >= 2 * self.workers:
                for i in range(len(out)):
                    if out[i] is None:
                        put(i, CheckResult(False, "error", f"worker cannot start: {fatal[0]}", "verify"))
                break
            for w in list(self._pool):
                if w.state == "idle" and pending:
                    assign(w)
            live = [w for w in self._pool if w.state in ("starting", "busy")]
            if not live:  # cannot happen while items remain, but never spin
                self._ensure_pool()
                continue
            now = time.monotonic()
            deadlines = [(w.started + self.startup_timeout) if w.state == "starting" else w.deadline for w in live]
            ready = _mp_wait([w.conn for w in live], timeout=max(0.0, min(deadlines) - now))
            now = time.monotonic()
            by_conn = {id(w.conn): w for w in live}
            for conn in ready:
                w = by_conn[id(conn)]
                try:
                    while True:
                        msg = conn.recv()
                        if w.state == "starting":
                            if msg[0] == "ready":
                                w.state = "idle"
                                w.item_cpu = float(msg[1])
                            else:  # ("fatal", text)
                                fatal[0], fatal[1] = msg[1], fatal[1] + 1
                                replace(w, None)
                            break
                        idx, eq, reason, detail, cpu = msg
                        if w.inflight and w.inflight[0] == idx:
                            w.inflight.popleft()
                        elif idx in w.inflight:
                            w.inflight.remove(idx)
                        put(idx, CheckResult(bool(eq), reason, detail, "verify"))
                        self.stats["worker_cpu_s"] += max(0.0, float(cpu) - w.item_cpu)
                        w.item_wall, w.item_cpu = now, float(cpu)
                        w.deadline = now + self.timeout
                        if not w.inflight:
                            w.state = "idle"
                            break
                        if not conn.poll():
                            break
                except (EOFError, OSError):
                    if w.state == "starting":
                        fatal[0], fatal[1] = "worker exited during start-up", fatal[1] + 1
                    self.stats["crashes"] += 1
                    w.proc.join(timeout=0.5)
                    code = w.proc.exitcode
                    replace(w, CheckResult(False, "error", f"worker died (exit code {code})", "verify"))
            for w in list(self._pool):  # overdue workers: kill and replace
                if w.state == "busy" and now >= w.deadline:
                    wall = now - w.item_wall
                    cpu_now = _proc_cpu_seconds(w.proc.pid)
                    cpu = None if cpu_now is None else cpu_now - w.item_cpu
                    if cpu is not None and cpu < self.timeout * 0.98 and wall < self.wall_timeout:
                        # Starved of CPU (busy machine), not stuck: give it the rest of its CPU budget.
                        w.deadline = now + min(max(0.05, self.timeout - cpu), self.wall_timeout - wall)
                        continue
                    self.stats["kills"] += 1
                    spent = f"{wall:.1f}s wall" + ("" if cpu is None else f", {cpu:.1f}s CPU")
                    replace(w, CheckResult(False, "timeout", f"{spent}; worker killed", "verify"))
                elif w.state == "starting" and now >= w.started + self.startup_timeout:
                    fatal[0], fatal[1] = "start-up timeout", fatal[1] + 1
                    replace(w, None)
        return out  # type: ignore[return-value]


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


# --------------------------------------------------------------------------------------------------------------------
# Step splitting
# --------------------------------------------------------------------------------------------------------------------

_STEP_MARKER_RE = re.compile(
    r"(?:^|(?<=\n)|(?<=[.!?])[ \t]+)[ \t>]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*"
    r"step[ \t]*\d+[ \t]*(?:\*\*|__)?[ \t]*[:.)]",
    re.IGNORECASE,
)
_BEGIN_RE = re.compile(r"\\begin\s*\{([^{}]+)\}")
_LATEXY_STRONG = set("\\^_{}")


def _find_unescaped(text: str, token: str, start: int) -> int:
    i = start
    while True:
        j = text.find(token, i)
        if j < 0:
            return -1
        k, bs = j - 1, 0
        while k >= 0 and text[k] == "\\":
            bs += 1
            k -= 1
        if bs % 2 == 0:
            return j
        i = j + 1


def _latex_spans(text: str) -> list[tuple[int, int]]:
    """Half-open spans of LaTeX blocks: ``$$..$$``, ``\\[..\\]``, ``\\(..\\)``, ``\\begin{x}..\\end{x}``
    (nesting aware), inline ``$..$``. A multi-line inline ``$..$`` counts only when it looks like math (see
    :func:`_multiline_inline_ok`), so that currency signs in word problems do not glue lines together."""
    spans: list[tuple[int, int]] = []
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c == "\\":
            if text.startswith("\\[", i):
                j = _find_unescaped(text, "\\]", i + 2)
                if j >= 0:
                    spans.append((i, j + 2))
                    i = j + 2
                    continue
            elif text.startswith("\\(", i):
                j = _find_unescaped(text, "\\)", i + 2)
                if j >= 0:
                    spans.append((i, j + 2))
                    i = j + 2
                    continue
            elif text.startswith("\\begin", i):
                m = _BEGIN_RE.match(text, i)
                if m:
                    end = _match_end_env(text, m.group(1), m.end())
                    if end is not None:
                        spans.append((i, end))
                        i = end
                        continue
            i += 2
            continue
        if c == "$":
            if text.startswith("$$", i):
                j = text.find("$$", i + 2)
                while j >= 0 and text[j - 1] == "\\":
                    j = text.find("$$", j + 1)
                if j >= 0:
                    spans.append((i, j + 2))
                    i = j + 2
                    continue
                i += 2
                continue
            j = _find_unescaped(text, "$", i + 1)
            if j >= 0:
                content = text[i + 1 : j]
                if "\n" not in content:
                    spans.append((i, j + 1))
                    i = j + 1
                    continue
                if _multiline_inline_ok(text, i, j, content):
                    spans.append((i, j + 1))
                    i = j + 1
                    continue
        i += 1
    return spans


def _multiline_inline_ok(text: str, i: int, j: int, content: str) -> bool:
    """Whether ``text[i:j+1]`` (a ``$...$`` crossing a line break) is math rather than two currency signs."""
    if len(content) >= 4000 or re.search(r"\n[ \t]*\n", content):
        return False
    after = text[j + 1 : j + 2]
    before = text[max(0, i - 40) : i].rstrip(" \t")[-1:]
    if after.isdigit() or after in ("<", ".") and text[j + 2 : j + 3].isdigit() or after == "<" or before.isdigit():
        return False  # "$10 ... $<<..>>" / "$5 ... $.50" / "6$\n": currency
    core = _CALC_RE.sub("", content)
    strong = any(ch in _LATEXY_STRONG for ch in core)
    head = core.lstrip()[:1]
    if not strong and (head.isdigit() or head == "." or "=" not in core):
        return False
    return True


def _match_end_env(text: str, name: str, pos: int) -> int | None:
    pat = re.compile(r"\\(begin|end)\s*\{" + re.escape(name) + r"\}")
    depth = 1
    for m in pat.finditer(text, pos):
        depth += 1 if m.group(1) == "begin" else -1
        if depth == 0:
            return m.end()
    return None


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    # spans are sorted and disjoint; binary search
    lo, hi = 0, len(spans)
    while lo < hi:
        mid = (lo + hi) // 2
        s, e = spans[mid]
        if pos < s:
            hi = mid
        elif pos >= e:
            lo = mid + 1
        else:
            return True
    return False


def _cut(text: str, cuts: Iterable[tuple[int, int]]) -> list[str]:
    """Split ``text`` removing each ``[start, end)`` separator; strip and drop empty pieces."""
    out, prev = [], 0
    for s, e in sorted(cuts):
        if s < prev:
            continue
        out.append(text[prev:s])
        prev = e
    out.append(text[prev:])
    return [p.strip() for p in out if p.strip()]


def split_steps(text: str | None) -> list[str]:
    """Split a solution into reasoning steps (for process reward models).

    1. Explicit markers ``Step 1:`` ... ``Step k:`` (case-insensitive; also ``**Step 1:**``, ``## Step 1.``) at a line
       start or after a sentence end: each step starts at its marker (text before the first marker, if any, is its
       own step).
    2. Otherwise blank-line separated paragraphs, when there are at least two.
    3. Otherwise single lines, when there are at least two.
    4. Otherwise the whole text as one step.

    Never cuts inside a LaTeX block (see :func:`_latex_spans`). Steps are stripped; empty ones are dropped."""
    if not text or not text.strip():
        return []
    spans = _latex_spans(text)
    markers = [m for m in _STEP_MARKER_RE.finditer(text) if not _inside(m.end() - 1, spans)]
    if markers:
        starts = []
        for m in markers:
            s = m.start()
            while s < len(text) and text[s] in " \t\n":
                s += 1
            starts.append(s)
        pieces = _cut(text, [(s, s) for s in starts])
        if pieces:
            return pieces
    para = [(m.start(), m.end()) for m in re.finditer(r"\n[ \t]*\n\s*", text) if not _inside(m.start(), spans)]
    if para:
        pieces = _cut(text, para)
        if len(pieces) >= 2:
            return pieces
    lines = [(m.start(), m.end()) for m in re.finditer(r"\n", text) if not _inside(m.start(), spans)]
    if lines:
        pieces = _cut(text, lines)
        if len(pieces) >= 2:
            return pieces
    return [text.strip()]
