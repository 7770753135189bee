"""Step splitting of solutions (for process reward models) and the steps-per-solution distribution of a dataset.

:func:`split_steps` never cuts inside a LaTeX block; :func:`steps_distribution` summarises how many steps the solutions
of each source have (the sft / evolve summaries and the dataset card show it).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .extract import _CALC_RE

__all__ = ["split_steps", "steps_distribution"]

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
            close = {"[": "\\]", "(": "\\)"}.get(text[i + 1 : i + 2])
            if close is not None:  # \[ ... \] or \( ... \)
                j = _find_unescaped(text, close, i + 2)
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


# A sentence end: ., ! or ? (possibly closing an inline or display formula: "= 5.$", "= 5.$$", "= 5.\\]"), then
# spaces, then what starts a sentence in solutions (a capital letter or a formula); or, right after a closing display
# formula, a capital letter. Only cuts outside LaTeX blocks count.
_SENTENCE_END_RE = re.compile(
    r"[.!?](?:\$\$|\$|\\\]|\\\))?[ \t]+(?=[A-Z$]|\\\[|\\\(|\\begin\b)|[.!?]\s*(?:\$\$|\\\])\s*(?=[A-Z])"
)
# Inside one sentence: a conclusion drawn from what precedes ("..., so $x = 3$", "Since ..., we have ..."), or a
# clause after a semicolon.
_CLAUSE_RE = re.compile(
    r"[,;][ \t]+(?=(?:and[ \t]+)?(?:so|thus|hence|therefore|we[ \t]+(?:have|get|find|see|obtain|know|conclude))\b)"
    r"|;[ \t]+(?=\S)"
)
_CAPITAL_NEXT_RE = re.compile(r"\s*(?=[A-Z])")
# Words whose period does not end a sentence.
_ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "no", "approx", "fig", "eq", "resp"}


def _currency_like(text: str, s: int, e: int) -> bool:
    """Whether the one-line ``$...$`` at ``text[s:e]`` is two currency signs rather than a formula ("$5. Then $")."""
    content = text[s + 1 : e - 1]
    if text.startswith("$$", s) or not content[:1].isdigit():
        return False
    return not any(ch in _LATEXY_STRONG for ch in content) and re.search(r"[.!?] +[A-Z]", content) is not None


def _sentence_cuts(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Zero-width cuts where a new sentence starts (outside LaTeX blocks)."""
    spans = [(s, e) for s, e in spans if not (text[s] == "$" and _currency_like(text, s, e))]
    cuts = []
    for s, e in spans:  # a display formula followed by a capital letter: "...\\end{align*}We can factor ..."
        if text.startswith(("$$", "\\[", "\\begin"), s):
            m = _CAPITAL_NEXT_RE.match(text, e)
            if m:
                cuts.append((m.end(), m.end()))
    for m in _SENTENCE_END_RE.finditer(text):
        word = text[max(0, m.start() - 12) : m.start()].rsplit(None, 1)[-1:] or [""]
        if word[0].lstrip("(").lower() in _ABBREVIATIONS or text[m.start() - 1 : m.start()] == ".":
            continue
        cut = m.end()
        # the gap before the new sentence must lie outside every block (the punctuation itself may close a formula)
        probe = cut - 1 if text[cut - 1] in " \t" else cut
        if not _inside(probe, spans):
            cuts.append((cut, cut))
    return sorted(set(cuts))


def _clause_cuts(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(m.end(), m.end()) for m in _CLAUSE_RE.finditer(text) if not _inside(m.start(), spans)]


def split_steps(text: str | None) -> list[str]:
    """Split a solution into reasoning steps (for process reward models).

    1. Explicit markers ``Step 1:`` ... ``Step k:`` (case-insensitive; also ``**Step 1:**``, ``## Step 1.``) at a line
       start or after a sentence end: each step starts at its marker (text before the first marker, if any, is its
       own step).
    2. Otherwise blank-line separated paragraphs, when there are at least two.
    3. Otherwise single lines, when there are at least two.
    4. Otherwise sentences, when there are at least two (a sentence ends with ``.``, ``!`` or ``?`` followed by a
       capital letter or a formula; abbreviations such as "e.g." do not end one). Reference MATH solutions are often
       one paragraph of several sentences: each sentence is a step.
    5. Otherwise clauses of the one sentence, when there are at least two: a cut after a semicolon, and before a
       conclusion introduced by a comma or semicolon and "so", "thus", "hence" or "therefore" ("We have $x = 3$, so
       $x^2 = 9$.").
    6. Otherwise the whole text as one step.

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
    for cuts in (_sentence_cuts, _clause_cuts):
        found = cuts(text, spans)
        if found:
            pieces = _cut(text, found)
            if len(pieces) >= 2:
                return pieces
    return [text.strip()]


class StepsTally:
    """Steps per solution, per source, counted one solution at a time (memory does not grow with the solutions)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[int]] = defaultdict(Counter)

    def add(self, source: str | None, steps: Sequence[str] | None = None, text: str | None = None) -> None:
        """Count one solution: its ``steps``, or its ``text`` split with :func:`split_steps`. A solution without steps
        (a failed request, an empty text) is not counted."""
        if steps is None:
            steps = split_steps(text) if isinstance(text, str) else []
        if len(steps):
            self.counts[str(source or "unknown")][len(steps)] += 1

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for source in sorted(self.counts):
            hist = self.counts[source]
            total = sum(hist.values())
            out[source] = {"n": total, "mean": round(sum(k * v for k, v in hist.items()) / total, 3),
                           "hist": {str(k): hist[k] for k in sorted(hist)}}
        return out


def steps_distribution(rows: Iterable[Mapping[str, Any]], source_key: str = "source") -> dict[str, dict[str, Any]]:
    """Steps per solution, per source: ``{source: {"n": solutions, "mean": steps, "hist": {"1": count, ...}}}``.

    Each row is a mapping with ``source_key`` (missing: ``"unknown"``) and either ``steps`` (a list, as in Solution
    rows) or a solution text under ``text`` / ``output`` / ``completion`` / ``solution`` (split with
    :func:`split_steps`). Rows without steps and without text (failed requests) are not counted. Sources and histogram
    keys come out sorted (keys as numbers)."""
    tally = StepsTally()
    for row in rows:
        text = next((row[k] for k in ("text", "output", "completion", "solution") if row.get(k)), None)
        tally.add(row.get(source_key), row.get("steps"), text)
    return tally.as_dict()
