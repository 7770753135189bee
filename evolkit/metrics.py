"""Agreement and classification figures as pure functions (no numpy, no sklearn): what review and calibration print.

* :func:`cohen_kappa`: chance-corrected agreement of two raters on the same items;
* :func:`confusion`, :func:`accuracy`, :func:`per_class`: precision / recall / F1 / support per label;
* :func:`first_error_index`, :func:`first_error_f1`: ProcessBench-style first-error-step figures for step labels
  (accuracy on solutions that contain an error: the predicted first error is exactly the true one; accuracy on
  solutions without an error: none predicted; F1 = their harmonic mean);
* :func:`pairwise_preferences`, :func:`ranking_pair_agreement`: rankings compared pair by pair.

Undefined figures (no items, a class never predicted, kappa when chance agreement is 1) are ``None``, never NaN, so
they survive JSON and are printed as ``-``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any


def _check_pairs(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"the two label lists differ in length ({len(a)} vs {len(b)})")


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float | None:
    _check_pairs(y_true, y_pred)
    if not y_true:
        return None
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa: ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from each rater's own label frequencies.

    ``None`` when there are no items, or when ``p_e == 1`` (both raters gave one and the same label to everything:
    agreement is perfect but carries no information beyond chance)."""
    _check_pairs(a, b)
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if pe >= 1.0:
        return None
    return (po - pe) / (1.0 - pe)


def confusion(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> dict[Hashable, dict[Hashable, int]]:
    """``{true_label: {predicted_label: count}}`` over ``labels`` (default: every label seen, sorted by str)."""
    _check_pairs(y_true, y_pred)
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    out: dict[Hashable, dict[Hashable, int]] = {t: {p: 0 for p in labels} for t in labels}
    for t, p in zip(y_true, y_pred):
        out.setdefault(t, {q: 0 for q in labels})
        out[t][p] = out[t].get(p, 0) + 1
    return out


def per_class(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> dict[Hashable, dict[str, float | int | None]]:
    """Per label: precision (of the predictions of that label), recall (of the true items of that label), F1, support."""
    _check_pairs(y_true, y_pred)
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    out: dict[Hashable, dict[str, float | int | None]] = {}
    for lab in labels:
        tp = sum(t == lab and p == lab for t, p in zip(y_true, y_pred))
        pred = sum(p == lab for p in y_pred)
        true = sum(t == lab for t in y_true)
        precision = tp / pred if pred else None
        recall = tp / true if true else None
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else (
            0.0 if precision is not None and recall is not None else None
        )
        out[lab] = {"precision": precision, "recall": recall, "f1": f1, "support": true, "predicted": pred}
    return out


def first_error_index(labels: Sequence[bool]) -> int | None:
    """0-based index of the first ``False`` (incorrect) step; ``None`` when every step is correct."""
    for i, ok in enumerate(labels):
        if not ok:
            return i
    return None


def first_error_f1(true_seqs: Sequence[Sequence[bool]], pred_seqs: Sequence[Sequence[bool]]) -> dict[str, Any]:
    """First-error-step agreement of predicted step labels with true ones, solution by solution.

    ``acc_error``: share of solutions with a true error whose predicted first error is at the same step;
    ``acc_correct``: share of solutions without a true error where no error is predicted; ``f1``: harmonic mean of the
    two (``None`` when either is undefined, 0 when either is 0); ``exact``: share of all solutions whose first-error
    position (or "none") matches."""
    _check_pairs(true_seqs, pred_seqs)
    n_err = n_ok = hit_err = hit_ok = 0
    for t, p in zip(true_seqs, pred_seqs):
        if len(t) != len(p):
            raise ValueError(f"step counts differ within a solution ({len(t)} vs {len(p)})")
        ft, fp = first_error_index(t), first_error_index(p)
        if ft is None:
            n_ok += 1
            hit_ok += fp is None
        else:
            n_err += 1
            hit_err += fp == ft
    acc_error = hit_err / n_err if n_err else None
    acc_correct = hit_ok / n_ok if n_ok else None
    if acc_error is None or acc_correct is None:
        f1 = None
    elif acc_error + acc_correct == 0:
        f1 = 0.0
    else:
        f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)
    n = n_err + n_ok
    return {
        "acc_error": acc_error,
        "acc_correct": acc_correct,
        "f1": f1,
        "exact": (hit_err + hit_ok) / n if n else None,
        "n_error": n_err,
        "n_correct": n_ok,
    }


def pairwise_preferences(ranks: Mapping[str, float], items: Sequence[str] | None = None) -> dict[tuple[str, str], str]:
    """A ranking (item -> rank, 1 = best; equal ranks are ties) as one label per unordered pair ``(a, b)`` with
    ``a < b``: ``"a"`` when a is ranked above b, ``"b"`` when below, ``"tie"``. Only items in ``items`` (default:
    all ranked items) are used."""
    names = sorted(items if items is not None else ranks)
    out = {}
    for a, b in combinations(names, 2):
        ra, rb = ranks[a], ranks[b]
        out[(a, b)] = "a" if ra < rb else ("b" if rb < ra else "tie")
    return out


def ranking_pair_agreement(r1: Mapping[str, float], r2: Mapping[str, float]) -> float | None:
    """Share of the unordered pairs of common items that two rankings order the same way (ties count as a label)."""
    common = sorted(set(r1) & set(r2))
    p1, p2 = pairwise_preferences(r1, common), pairwise_preferences(r2, common)
    if not p1:
        return None
    return sum(p1[k] == p2[k] for k in p1) / len(p1)


def fmt(x: float | int | None, digits: int = 3) -> str:
    """A figure for a table with three decimals: :func:`evolkit.report.fmt` (the one formatter), kept here for the
    callers that import it from this module."""
    from .report import fmt as report_fmt

    return report_fmt(x, digits)
