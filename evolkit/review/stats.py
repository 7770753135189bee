"""What a dataset card says about human review: how many of the model's judgements people checked, and how often
the judge was right on those (from the reports ``evolkit review pull`` writes to ``review/summary.json``).

    from evolkit.review.stats import review_stats
    review_stats(store)   # -> [] when no review was pulled, else one entry per reviewed kind:

    {"kind": "irm", "unit": "ranking", "judged": 120, "sent": 40, "selection": "least certain first",
     "checked": 35, "excluded": 2, "reviewers": 2, "reviewer_agreement": 0.81, "dataset": "my-run-irm",
     "judge_accuracy": 0.6, "accuracy_measure": "same ranking as the reviewers",
     "judge_unit_accuracy": 0.83, "unit_measure": "version pairs ordered as the reviewers did"}

``checked``: judgements resolved from reviewers' answers (IRM rankings; PRM solutions in the solution layout, fully
reviewed solutions in the step layout); ``judge_accuracy``: share of them where the judge's answer was the reviewers'
(IRM: the whole ranking; PRM: the first incorrect step, "none" included). ``judge_unit_accuracy`` is the finer figure
(IRM: version pairs; PRM: labelled steps). When the records were chosen least certain first, these accuracies are
those of the judge's hardest cases, not of the whole dataset (``selection`` says which).
"""

from __future__ import annotations

from typing import Any


def review_stats(store: Any) -> list[dict[str, Any]]:
    """Card figures per reviewed kind (see the module docstring); ``[]`` when the run has no pulled review."""
    if not store.is_done("review"):
        return []
    summary = store.stage_info("review").get("summary") or {}
    return [s for s in (_irm(summary.get("irm")), _prm(summary.get("prm"))) if s]


def _common(rep: dict[str, Any], kind: str, unit: str, judged: int) -> dict[str, Any]:
    pairs = rep.get("annotators") or []
    agree = [p["agreement"] for p in pairs if p.get("agreement") is not None]
    return {"kind": kind, "unit": unit, "judged": judged,
            "sent": rep.get("sent") if rep.get("sent") is not None else judged,
            "selection": rep.get("selection") or "all", "dataset": rep.get("dataset"),
            "reviewers": len(rep.get("judge_vs_annotator") or {}),
            "reviewer_agreement": round(sum(agree) / len(agree), 4) if agree else None}


def _irm(rep: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(rep, dict):
        return None
    jh = rep.get("judge_vs_human") or {}
    out = _common(rep, "irm", "ranking", rep.get("records", 0))
    out.update(checked=rep.get("human", 0), excluded=rep.get("excluded", 0),
               judge_accuracy=jh.get("exact_ranking"), accuracy_measure="same ranking as the reviewers",
               judge_unit_accuracy=jh.get("pair_accuracy"), unit_measure="version pairs ordered as the reviewers did")
    return out


def _prm(rep: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(rep, dict):
        return None
    jh = rep.get("judge_vs_human") or {}
    out = _common(rep, "prm", "solution", rep.get("solutions", 0))
    fe = jh.get("first_error") or {}
    acc = jh.get("first_error_accuracy", fe.get("exact"))
    out.update(checked=rep.get("human_solutions", 0), excluded=rep.get("excluded_solutions", 0),
               judge_accuracy=acc, accuracy_measure="same first incorrect step as the reviewers",
               judge_unit_accuracy=jh.get("accuracy"), unit_measure="labelled steps")
    return out
