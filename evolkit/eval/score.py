"""Scoring eval samples: both checkers on every sample, pass@1 by group, unbiased pass@k and majority-vote maj@k.

Every completion is scored by evolkit's checker (:mod:`evolkit.answers`: extraction, then math-verify equivalence) and
by the WizardMath paper's extraction and string comparison (:mod:`evolkit.wizardmath_checker`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from .bench import EvalItem


def score_completions(
    items: Sequence[EvalItem],
    completions: Sequence[Sequence[str | None]],
    kind: str,
    checker: Any,
    golds: Sequence[str | None] | None = None,
    golds_wm: Sequence[str | None] | None = None,
) -> list[list[dict[str, Any]]]:
    """Score ``completions[i][k]`` (sample k of item i; None = generation failed) with both checkers.

    ``golds`` / ``golds_wm`` override the items' gold answers (for shuffled-gold checks). Returns per item, per sample:
    ``extracted``, ``correct``, ``reason`` (evolkit) and ``wm_extracted``, ``wm_correct`` (WizardMath protocol)."""
    from .. import wizardmath_checker as wm
    from ..answers import extract_answer

    golds = [it.gold for it in items] if golds is None else golds
    golds_wm = [it.gold_wm for it in items] if golds_wm is None else golds_wm
    flat: list[tuple[int, int, str | None]] = []
    for i, comps in enumerate(completions):
        for k, text in enumerate(comps):
            flat.append((i, k, text))
    extracted = [extract_answer(t) if t is not None else None for _, _, t in flat]
    verdicts = checker.check_many([(e, golds[i]) for (i, _, _), e in zip(flat, extracted)])
    out: list[list[dict[str, Any]]] = [[{} for _ in comps] for comps in completions]
    for (i, k, text), e, v in zip(flat, extracted, verdicts):
        w = wm.score(kind, text, golds_wm[i])
        reason = "failed" if text is None else v.reason
        out[i][k] = {
            "extracted": e,
            "correct": bool(v.equal) and text is not None,
            "reason": reason,
            "wm_extracted": w.extracted,
            "wm_correct": bool(w.correct) and text is not None,
        }
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _ks(n: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    if n not in ks:
        ks.append(n)
    return ks


def _majority_correct(scored: list[dict[str, Any]], k: int, kind: str, which: str, checker: Any) -> bool:
    from .. import wizardmath_checker as wm
    from ..answers import majority_answer

    first = scored[:k]
    if which == "evolkit":
        rep, _ = majority_answer([s["extracted"] for s in first], checker)
        if rep is None:
            return False
        return next(s["correct"] for s in first if s["extracted"] == rep)
    keys = [wm.vote_key(kind, s["wm_extracted"]) for s in first]
    counts = Counter(x for x in keys if x is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(x for x in keys if x is not None and counts[x] == best)
    return next(s["wm_correct"] for s, x in zip(first, keys) if x == winner)


CHECKERS = ("evolkit", "wizardmath")


def _group_stats(idx: list[int], scored: list[list[dict[str, Any]]]) -> dict[str, Any]:
    d: dict[str, Any] = {"problems": len(idx), "samples": sum(len(scored[i]) for i in idx)}
    for name, field_ in (("evolkit", "correct"), ("wizardmath", "wm_correct")):
        correct = sum(s[field_] for i in idx for s in scored[i])
        per_problem = [sum(s[field_] for s in scored[i]) / max(1, len(scored[i])) for i in idx]
        d[name] = {"pass@1": (sum(per_problem) / len(idx)) if idx else 0.0, "correct": int(correct)}
    return d


def summarize(
    items: list[EvalItem], scored: list[list[dict[str, Any]]], kind: str, checker: Any, n: int
) -> dict[str, Any]:
    all_idx = list(range(len(items)))
    overall = _group_stats(all_idx, scored)
    scores: dict[str, Any] = {}
    for name, field_, ext in (("evolkit", "correct", "extracted"), ("wizardmath", "wm_correct", "wm_extracted")):
        sc = dict(overall[name])
        sc["total"] = overall["samples"]
        sc["no_answer"] = sum(s[ext] is None for ss in scored for s in ss)
        if n > 1:
            sc["pass@k"] = {
                str(k): sum(pass_at_k(len(ss), sum(s[field_] for s in ss), k) for ss in scored) / max(1, len(scored))
                for k in _ks(n)
            }
            sc["maj@k"] = {
                str(k): sum(_majority_correct(ss, k, kind, name, checker) for ss in scored) / max(1, len(scored))
                for k in _ks(n)
            }
        scores[name] = sc
    by_level: dict[str, list[int]] = defaultdict(list)
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.level is not None:
            by_level[str(it.level)].append(i)
        if it.subject:
            by_subject[it.subject].append(i)
    diff = Counter()
    for ss in scored:
        for s in ss:
            if s["correct"] != s["wm_correct"]:
                diff["evolkit_only" if s["correct"] else "wizardmath_only"] += 1
    return {
        "problems": len(items),
        "samples": overall["samples"],
        "scores": scores,
        "by_level": {k: _group_stats(v, scored) for k, v in sorted(by_level.items())},
        "by_subject": {k: _group_stats(v, scored) for k, v in sorted(by_subject.items())},
        "checker_disagreements": {"evolkit_only": diff["evolkit_only"], "wizardmath_only": diff["wizardmath_only"]},
    }
