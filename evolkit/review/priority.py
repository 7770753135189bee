"""The least certain judgements first: which records reviewers see first, and which a review budget sends at all.

Each review item gets an **uncertainty** (higher = review sooner) from what the run knows about the judge:

* ``1 - judge confidence`` (IRM: :func:`evolkit.stages.irm.judge_confidence`; PRM: the judge's confidence in the step
  that decides the solution's first error, see :func:`solution_confidence`); 0.5 when the judge gave none;
* **+1** when the judge disagreed with itself on the swapped order of the versions (IRM rows with ``consistent``
  false);
* **+1** when the judge and the Monte-Carlo rollouts put the first incorrect step of a solution at different places
  (PRM, when both labelled it).

Items are ranked by uncertainty (highest first, ties by id so the order is reproducible) and numbered
``review_order`` 1, 2, ... (PRM steps in the per-step layout share their solution's number). ``--budget N`` keeps the
first N records (per-step layout: the steps of the first N solutions). The reasons go into metadata ``why``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the adapter builds items with these functions
    from .adapter import ReviewItem

LOW_CONFIDENCE = 0.6  # below this a judgement's confidence is listed as a reason ("low confidence")


def first_error(labels: list[bool]) -> int:
    """1-based position of the first False label, 0 when every step is correct."""
    return next((i + 1 for i, ok in enumerate(labels) if not ok), 0)


def solution_confidence(confidences: list[float | None] | None, labels: list[bool]) -> float | None:
    """The judge's confidence in a solution's first-error position: the lowest step confidence up to and including
    the first incorrect step (all steps when none is incorrect). None when the judge gave no confidences."""
    if not confidences:
        return None
    k = first_error(labels) or len(labels)
    vals = [c for c in confidences[:k] if c is not None]
    return round(min(vals), 4) if vals else None


def uncertainty(confidence: float | None, *, swapped_disagree: bool = False,
                mc_disagree: bool = False) -> tuple[float, list[str]]:
    """(uncertainty, reasons) of one judgement."""
    u = 0.5 if confidence is None else 1.0 - float(confidence)
    why = []
    if confidence is None:
        why.append("no confidence")
    elif confidence < LOW_CONFIDENCE:
        why.append("low confidence")
    if swapped_disagree:
        u += 1.0
        why.append("swapped-order disagreement")
    if mc_disagree:
        u += 1.0
        why.append("judge vs Monte-Carlo disagreement")
    return round(u, 4), why or ["confident"]


def rank(items: list[ReviewItem]) -> list[ReviewItem]:
    """Items ordered least certain first, with ``review_order`` set (1 = first). Items of one group (metadata
    ``solution`` in the per-step PRM layout) stay together and share the group's number, in step order."""
    groups: dict[str, list[ReviewItem]] = {}
    for it in items:
        groups.setdefault(str(it.metadata.get("solution", it.id)), []).append(it)
    order = sorted(groups, key=lambda g: (-max(float(i.metadata.get("uncertainty", 0.0)) for i in groups[g]), g))
    out = []
    for n, g in enumerate(order, 1):
        for it in sorted(groups[g], key=lambda i: int(i.metadata.get("step_number", 0))):
            it.metadata["review_order"] = n
            out.append(it)
    return out


def select(items: list[ReviewItem], budget: int | None) -> list[ReviewItem]:
    """The first ``budget`` groups (records, or solutions in the per-step layout) of ranked ``items``."""
    if budget is None:
        return items
    return [it for it in items if int(it.metadata["review_order"]) <= budget]


def summary(items: list[ReviewItem], chosen: list[ReviewItem], budget: int | None) -> dict[str, Any]:
    """What a push sent: counts and the reasons of the records chosen."""
    from collections import Counter

    def groups(xs: list[ReviewItem]) -> set[str]:
        return {str(i.metadata.get("solution", i.id)) for i in xs}

    why: Counter[str] = Counter()
    seen: set[str] = set()
    for it in chosen:
        g = str(it.metadata.get("solution", it.id))
        if g not in seen:
            seen.add(g)
            why.update(it.metadata.get("why") or [])
    return {"available": len(groups(items)), "pushed": len(groups(chosen)), "budget": budget,
            "selection": "all" if budget is None else "least certain first", "reasons": dict(why)}
