"""The WizardMath paper's own answer extraction and scoring, for numbers comparable with the paper.

WizardMath (Luo et al. 2023) evaluates greedy completions of its CoT prompt, which end with ``The answer is: X``:

* **GSM8k**: the completion is cut at its *last* ``"The answer is: "`` (exact spelling, with the colon and a space); the
  first number after it is taken, a fraction ``a/b`` is divided out, and the value is **rounded to an integer** and
  compared with the integer gold answer (the text after ``####``, commas removed). No marker, no number: wrong.
* **MATH**: the text after the last ``"The answer is: "`` up to the first ``".\\n"``, stripped, a final period dropped,
  is compared with the content of the reference solution's last ``\\boxed{}`` after the string normalisation of
  Hendrycks et al. (2021) (:func:`strip_string`): equal strings are correct. No CAS, no numeric tolerance.

This is deliberately *not* evolkit's checker (:mod:`evolkit.answers`): it keeps the protocol's quirks, which are what
make the paper's figures what they are. The ones that matter (see ``tests/test_eval.py``):

* the number pattern takes one optional separator (``[.,/]``) between digit runs, so ``1,234,567`` reads as ``1,234``
  (wrong) while ``1,000`` reads as ``1000``; decimals and fractions are rounded half to even (``2.5`` -> 2,
  ``7/2`` -> 4), so a non-integer answer can count as correct for an integer gold;
* MATH answers are compared as normalised strings: ``\\dfrac14`` = ``\\frac{1}{4}`` = ``1/4``, and exactly ``0.5`` =
  ``\\frac{1}{2}``, but ``0.25`` != ``\\frac14``, ``1,000`` != ``1000``, ``x=3`` = ``3`` only when the left side has
  at most two characters, a unit is dropped only after ``\\text{ `` (with a space), ``\\%`` is dropped; where the
  normalisation fails (``\\frac`` or ``\\sqrt`` with nothing after it, a non-integer ``a/b``, two units) the raw
  strings are compared;
* the MATH gold is the content of the reference solution's last ``\\boxed{...}``; a solution whose last box is an
  ``\\fbox{...}`` has no gold, so no answer can match it;
* a completion without the exact marker ``The answer is: `` is wrong, whatever else it says (``\\boxed{}`` alone is not
  read).

Written from the protocol's description and its inference scripts (WizardLM repo, ``WizardMath/inference``:
``gsm8k_inference.py``, ``MATH_inference.py``, ``util.py``; the V1.0 string comparison, not the sympy ``math_equal``
added later for V1.1); it shares no code with evolkit.answers on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MARKER = "The answer is: "

# One optional separator between two digit runs: "12", "-3", "1,000", "2.5", "3/4", ".5" (but "1,234,567" -> "1,234").
_GSM8K_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")


@dataclass(frozen=True)
class WizardMathVerdict:
    correct: bool
    extracted: str | None  # what the protocol read (GSM8k: the rounded integer as text)
    gold: str | None


# --------------------------------------------------------------------------------------------------------------------
# GSM8k
# --------------------------------------------------------------------------------------------------------------------


def _to_number(token: str) -> float | None:
    if "/" in token:
        num, den = token.split("/", 1)
        num = num.replace(",", "")
        try:
            if float(den) == 0:  # a zero denominator: the numerator alone
                return float(num)
            return float(Fraction(num) / Fraction(den))
        except (ValueError, ZeroDivisionError):
            return None
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def gsm8k_extract(completion: str | None) -> int | None:
    """The integer the protocol reads from a completion, or None (no marker, no number, not finite)."""
    if not completion:
        return None
    parts = completion.split(MARKER)
    if len(parts) < 2:
        return None
    m = _GSM8K_NUMBER.search(parts[-1].strip())
    if not m:
        return None
    value = _to_number(m.group(0))
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return round(value)


def gsm8k_gold(answer_text: str) -> int | None:
    """Integer gold of a GSM8k record: the text after ``#### `` with commas removed (None when not an integer)."""
    idx = answer_text.rfind("####")
    if idx < 0:
        return None
    raw = answer_text[idx + 4 :].strip().replace(",", "")
    try:
        return int(raw)
    except ValueError:
        try:
            v = float(raw)
        except ValueError:
            return None
        return int(v) if v.is_integer() else None


def score_gsm8k(completion: str | None, gold: int | str | None) -> WizardMathVerdict:
    """GSM8k verdict; ``gold`` is the integer gold or the record's full answer text (with ``#### N``)."""
    if isinstance(gold, str):
        g = gsm8k_gold(gold) if "####" in gold else gsm8k_gold("#### " + gold)
    else:
        g = gold
    pred = gsm8k_extract(completion)
    ok = pred is not None and g is not None and float(pred) == float(g)
    return WizardMathVerdict(ok, None if pred is None else str(pred), None if g is None else str(g))


# --------------------------------------------------------------------------------------------------------------------
# MATH
# --------------------------------------------------------------------------------------------------------------------


def last_boxed(solution: str | None) -> str | None:
    """The last ``\\boxed{...}`` (else the last ``\\fbox{...}``) of a solution including the command, or None.

    Braces are counted from the command on, without regard to escapes; the protocol has no brace-less ``\\boxed 5``."""
    if not solution:
        return None
    start = solution.rfind("\\boxed")
    if start < 0:
        start = solution.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(solution)):
        ch = solution[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return solution[start : i + 1]
    return None


def unbox(boxed: str | None) -> str | None:
    """``\\boxed{X}`` -> ``X``; anything else (``\\fbox{X}`` included) -> None, as the protocol's ``remove_boxed``."""
    if boxed is None or not boxed.startswith("\\boxed{") or not boxed.endswith("}"):
        return None
    return boxed[len("\\boxed{") : -1]


def math_gold(solution: str) -> str | None:
    """Gold answer of a MATH record the protocol's way: the content of the solution's last box (None when that box is
    an ``\\fbox``: such a problem can never be scored correct under the protocol)."""
    return unbox(last_boxed(solution))


def math_extract(completion: str | None) -> str | None:
    """The text after the last ``The answer is: ``, up to the first ``.\\n``, stripped, one final period dropped."""
    if not completion:
        return None
    parts = completion.split(MARKER)
    if len(parts) < 2:
        return None
    ans = parts[-1].split(".\n")[0].strip()
    if ans.endswith("."):
        ans = ans[:-1]
    return ans.strip()


# The normalisation below raises where the protocol's code raises (an empty argument after ``\\frac`` or ``\\sqrt``,
# a non-integer ``a/b``, two units): :func:`is_equiv` then compares the raw strings, as the protocol does.


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{x}`` -> ``\\frac{1}{x}``; braced arguments are left alone."""
    pieces = s.split("\\frac")
    out = pieces[0]
    for rest in pieces[1:]:
        out += "\\frac"
        if rest[0] == "{":  # IndexError on "\\frac" with nothing after it: the protocol's fallback
            out += rest
            continue
        if len(rest) < 2:
            return s  # malformed: give up, keep the input
        a, b, tail = rest[0], rest[1], rest[2:]
        out += "{" + a + "}" + (b + tail if b == "{" else "{" + b + "}" + tail)
    return out


def _fix_slash(s: str) -> str:
    """``a/b`` with integer ``a`` and ``b`` (and nothing else) -> ``\\frac{a}{b}``; a non-integer side raises."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    ia, ib = int(parts[0]), int(parts[1])  # ValueError: the protocol's fallback to raw strings
    if s != f"{ia}/{ib}":
        return s
    return "\\frac{" + str(ia) + "}{" + str(ib) + "}"


def _remove_right_units(s: str) -> str:
    """Everything from ``\\text{ `` (with the space) on goes; two of them raise (the protocol asserts one)."""
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise ValueError("more than one unit")
    return parts[0]


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (the single next character becomes the argument)."""
    if "\\sqrt" not in s:
        return s
    pieces = s.split("\\sqrt")
    out = pieces[0]
    for rest in pieces[1:]:
        if rest[0] != "{":  # IndexError on "\\sqrt" with nothing after it: the protocol's fallback
            rest = "{" + rest[0] + "}" + rest[1:]
        out += "\\sqrt" + rest
    return out


def strip_string(s: str) -> str:
    """The Hendrycks et al. (2021) MATH answer normalisation as WizardMath's ``util.py`` has it, step by step in its
    order. Raises on the inputs the protocol's code raises on (see :func:`is_equiv`)."""
    s = s.replace("\n", "")
    s = s.replace("\\!", "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")  # percent signs
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:  # "x = 5" / "k=5" -> "5"
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_slash(s)
    return s


def is_equiv(a: str | None, b: str | None) -> bool:
    """Hendrycks equivalence: both missing is equal, one missing is not, else equal normalised strings; when the
    normalisation fails on either, equal raw strings."""
    if a is None and b is None:
        return True
    if a is None or b is None:
        return False
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # noqa: BLE001 - the protocol falls back to raw equality
        return a == b


def score_math(completion: str | None, gold: str | None) -> WizardMathVerdict:
    """MATH verdict; ``gold`` is the boxed content (see :func:`math_gold`)."""
    pred = math_extract(completion)
    if pred is None:
        return WizardMathVerdict(False, None, gold)
    return WizardMathVerdict(is_equiv(pred, gold), pred, gold)


def score(bench_kind: str, completion: str | None, gold: str | int | None) -> WizardMathVerdict:
    """``bench_kind``: ``gsm8k`` or ``math`` (MATH500 is ``math``)."""
    if bench_kind == "gsm8k":
        return score_gsm8k(completion, gold)
    return score_math(completion, None if gold is None else str(gold))


def vote_key(bench_kind: str, extracted: str | None) -> str | None:
    """What majority voting groups by under this protocol (the integer for GSM8k, the normalised string for MATH)."""
    if extracted is None:
        return None
    return extracted if bench_kind == "gsm8k" else strip_string(extracted)
