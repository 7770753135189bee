"""Final-answer extraction and normalisation (pure Python, cheap, safe on any input).

* :func:`extract_answer` pulls the final answer out of a model's text (``The answer is: X`` > ``#### X`` > last
  ``\\boxed{X}``/``\\fbox{X}`` > Minerva ``Final Answer: ...`` > colon-less ``the answer is X`` > a line ``A: X``);
* :func:`gsm8k_gold` and :func:`math_gold` read the reference answers of the two datasets;
* :func:`normalize_answer` makes a display / string key (not a CAS normal form: equivalence is
  :class:`evolkit.answers.AnswerChecker`'s job).
"""

from __future__ import annotations

import re

__all__ = ["cardinal_value", "extract_answer", "find_boxed", "gsm8k_gold", "math_gold", "normalize_answer"]

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
    ``\\frac{1}{2}``; thousands commas and trailing zeros in plain numbers (``1,000.0`` -> ``1000``); a number written
    in words becomes its digits (``\\text{five}`` -> ``5``, see :func:`cardinal_value`); all whitespace."""
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
    words = cardinal_value(s)
    if words is not None:  # "five", "Twenty-one", "one hundred and two"
        return str(words)
    s = s.replace("{,}", ",")
    s = re.sub(r"\s+", "", s)
    if s.endswith(".") and not _PLAIN_NUM_RE.fullmatch(s):
        s = s[:-1]
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if _PLAIN_NUM_RE.fullmatch(s):
        s = _canon_number(s)
    return s


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_WORDS_RE = re.compile(r"[A-Za-z]+(?:[\s-]+[A-Za-z]+)*")


def cardinal_value(text: str) -> int | None:
    """The value of an English cardinal number written in words ("five", "Twenty-one", "one hundred and two",
    "three thousand four hundred"), or None when ``text`` is anything else (a negative is written with a minus sign)."""
    if len(text) > 200 or not _WORDS_RE.fullmatch(text):
        return None
    words = [w for w in re.split(r"[\s-]+", text.lower()) if w != "and"]
    if not words or words == ["and"]:
        return None
    total = group = 0
    seen = False
    for w in words:
        if w in _UNITS:
            if group % 10 or (group % 100 and _UNITS[w] >= 10):
                return None  # "five six", "twenty twelve"
            group += _UNITS[w]
        elif w in _TENS:
            if group % 100:
                return None
            group += _TENS[w]
        elif w == "hundred":
            if not group or group >= 100:
                return None
            group *= 100
        elif w in _SCALES:
            if not group:
                return None
            total += group * _SCALES[w]
            group = 0
        else:
            return None
        seen = True
    return total + group if seen else None


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
