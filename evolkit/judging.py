"""Reading a judge model's structured (JSON) answers robustly, and the small helpers the IRM and PRM judges share.

Judges are asked for one JSON object, but models wrap it in prose or code fences, add trailing commas or curly quotes.
:func:`find_json_object` finds the outermost JSON object in any text and tolerates those; the validators in the IRM/PRM
stages then check ids and values. Every failure is a :class:`JudgeParseError` with a short machine-readable ``reason``
(``no_json``, ``unknown_id`` ...) that the stages record and count.
"""

from __future__ import annotations

import json
import re
from typing import Any



class JudgeParseError(ValueError):
    """A judge answer that cannot be used. ``reason`` is a short key for counting; ``str(e)`` explains."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def _repairs(text: str) -> list[str]:
    fixed = _TRAILING_COMMA.sub(r"\1", text.translate(_QUOTES))
    return [text] if fixed == text else [text, fixed]


def find_json_object(text: str | None) -> dict[str, Any]:
    """The outermost JSON object in ``text`` (code fences, prose around it, trailing commas and curly quotes tolerated).

    Raises :class:`JudgeParseError` (``empty``, ``no_json``, ``invalid_json``)."""
    if not text or not text.strip():
        raise JudgeParseError("empty", "the judge returned no text")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    saw_brace = False
    decoder = json.JSONDecoder()
    for cand in candidates:
        for m in re.finditer(r"\{", cand):
            saw_brace = True
            # the first '{' that parses (as is, or repaired) is the outermost object
            for variant in _repairs(cand[m.start():]):
                try:
                    obj, _end = decoder.raw_decode(variant, 0)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    return obj
    if saw_brace:
        raise JudgeParseError("invalid_json", "found '{' but no parseable JSON object")
    raise JudgeParseError("no_json", f"no JSON object in the answer: {text.strip()[:80]!r}")


def as_score(value: Any, lo: float = 1.0, hi: float = 10.0) -> float:
    """A score from a number or a string like ``"7"``, ``"7/10"``, ``"7.5 points"``; must lie within [lo, hi]."""
    if isinstance(value, bool):
        raise JudgeParseError("bad_score", f"{value!r} is not a score")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str) and (m := re.match(r"\s*(-?\d+(?:\.\d+)?)", value)):
        x = float(m.group(1))
    else:
        raise JudgeParseError("bad_score", f"{value!r} is not a score")
    if not lo <= x <= hi:
        raise JudgeParseError("bad_score", f"{x:g} is outside {lo:g}-{hi:g}")
    return x


def norm_id(value: Any) -> str:
    """A judge's spelling of an id (``"[B]"``, ``"Version B"``, ``" b "``) reduced to its core for matching."""
    s = str(value).strip().strip("[]()<>\"'`.:").strip()
    s = re.sub(r"^(?:version|variant|option)\s+", "", s, flags=re.I)
    return s.strip().strip("[]()").upper()


def irm_schema(ids: list[str], criteria: tuple[str, ...] = ("definition", "precision", "integrity")) -> dict[str, Any]:
    """The JSON Schema of an IRM judge answer over the versions ``ids`` (structured output where the backend has it)."""
    score = {"type": "integer", "minimum": 1, "maximum": 10}
    per_version = {"type": "object", "properties": {c: score for c in criteria}, "required": list(criteria),
                   "additionalProperties": False}
    return {
        "type": "object",
        "properties": {
            "scores": {"type": "object", "properties": {i: per_version for i in ids}, "required": list(ids),
                       "additionalProperties": False},
            "ranking": {"type": "array", "items": {"type": "string", "enum": list(ids)}, "minItems": len(ids),
                        "maxItems": len(ids)},
        },
        "required": ["scores", "ranking"],
        "additionalProperties": False,
    }


def prm_schema(n_steps: int, allow_neutral: bool = True) -> dict[str, Any]:
    """The JSON Schema of a PRM judge answer labelling ``n_steps`` steps."""
    labels = ["correct", "incorrect"] + (["neutral"] if allow_neutral else [])
    item = {"type": "object", "properties": {"step": {"type": "integer", "minimum": 1, "maximum": n_steps},
                                             "label": {"type": "string", "enum": labels}},
            "required": ["step", "label"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"steps": {"type": "array", "items": item, "minItems": n_steps, "maxItems": n_steps}},
            "required": ["steps"], "additionalProperties": False}


def yes_no_schema() -> dict[str, Any]:
    """The JSON Schema of a yes/no check (``{"answer": "yes"}``)."""
    return {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
            "required": ["answer"], "additionalProperties": False}


def yes_no(text: str | None) -> bool | None:
    """A yes/no reply, plain (``Yes.``) or structured (``{"answer": "no"}``); None when it is neither."""
    t = (text or "").strip()
    if t.startswith("{"):
        try:
            t = str(find_json_object(t).get("answer", ""))
        except JudgeParseError:  # cut off after the answer (token limit): the answer itself is there
            m = re.search(r'"answer"\s*:\s*"(yes|no)"', t, re.I)
            if m is None:
                return None
            t = m.group(1)
    t = t.strip().strip("\"'.!*").lower()
    if t.startswith("yes"):
        return True
    if t.startswith("no"):
        return False
    return None


def to_bool(label3: str, neutral_as: str = "correct") -> bool:
    """A 3-way step label (correct / incorrect / neutral) as the boolean PRM label; neutral counts as ``neutral_as``."""
    return label3 == "correct" or (label3 == "neutral" and neutral_as == "correct")


_STEP_MARK = re.compile(r"^\s*(?:\*\*|#+\s*)?step\s*\d+\s*[:.)]\s*(?:\*\*)?\s*", re.I)


def strip_step_marker(step: str) -> str:
    """``"Step 3: x = 2"`` -> ``"x = 2"`` (the prompts number steps themselves)."""
    return _STEP_MARK.sub("", step, count=1).strip() or step.strip()
