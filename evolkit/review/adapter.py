"""The review interface: what evolkit sends to a review tool and what it reads back, independent of the tool.

A :class:`ReviewBackend` (``evolkit.review.argilla_backend.ArgillaReview`` is the one shipped) does two things:

* ``push(kind, items, ...)``: create the review dataset of ``kind`` (``irm`` or ``prm``) if it does not exist and
  upsert ``items`` by their ``id`` (pushing again updates records, it never duplicates them);
* ``pull(kind, ...)``: every record's submitted / discarded / draft responses as :class:`ItemResponses`.

Items and responses are plain data in evolkit's terms, built here from run-store rows, so another tool only has to map
them onto its own records and questions:

* IRM item (one per ranked instruction): the instruction, its versions (ids ``A``-``D``, random with respect to evolver
  and model rank, shown in id order), the judge's ranking as a suggestion with the judge's confidence; a response is a
  ranking ``{version id: rank}`` (1 = best, equal ranks = tie) and an optional comment.
* PRM item, layout ``solution`` (the default; one per solution, ProcessBench style): the problem and the numbered
  steps, the judge's first incorrect step as a suggestion (0 = none); a response is ``first_error`` (0 = no incorrect
  step, k = step k is the first incorrect one) and an optional justification.
* PRM item, layout ``step`` (one per solution step): the problem, the earlier steps, the step itself, the judge's
  3-way label (``correct`` / ``incorrect`` / ``neutral``) with its confidence; a response is a label and an optional
  justification.

Every item carries a ``content_hash`` of what reviewers see; ``pull`` returns the hash stored with the record so answers
to an older version of an item are recognised as stale. Every item's metadata carries ``uncertainty``, ``why`` and
``review_order`` (:mod:`evolkit.review.priority`): tools show records in ``review_order``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Kind = Literal["irm", "prm"]
KINDS: tuple[str, ...] = ("irm", "prm")
Layout = Literal["solution", "step"]
PRM_LAYOUTS: tuple[str, ...] = ("solution", "step")
VERSION_IDS = "ABCDEFGH"  # the IRM stage's variant ids: 2 evolvers x up to 4 variants
MAX_VERSIONS = len(VERSION_IDS)


@dataclass
class ReviewItem:
    id: str
    kind: Kind
    #: What reviewers read (IRM: instruction, versions; PRM solution: problem, steps; PRM step: problem,
    #: previous_steps, step, position).
    content: dict[str, Any]
    #: The model's answer: IRM ``{"ranking": {id: rank}}``; PRM solution ``{"first_error": k}`` (0 = none);
    #: PRM step ``{"label": "correct"|"incorrect"|"neutral"}``.
    suggestion: dict[str, Any]
    #: Who made the suggestion (judge model name) and how sure it is (0-1, or None).
    agent: str
    score: float | None
    #: Values to filter by: round, operation, source, judge_confidence ...
    metadata: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""

    def __post_init__(self) -> None:
        if not self.content_hash:
            self.content_hash = content_hash(self.content)


@dataclass
class Response:
    user: str
    status: Literal["submitted", "discarded", "draft"]
    #: IRM: {version id: rank}; None when not answered.
    ranking: dict[str, int] | None = None
    #: PRM step layout: "correct" | "incorrect" | "neutral"; None when not answered.
    label: str | None = None
    comment: str | None = None
    #: PRM solution layout: 1-based first incorrect step, 0 = every step correct; None when not answered.
    first_error: int | None = None
    #: When the tool last changed this answer (ISO 8601), if it says.
    updated_at: str | None = None
    #: Hash of the content this answer was given to, when known per answer (else the record's, ItemResponses).
    content_hash: str | None = None


@dataclass
class ItemResponses:
    id: str
    content_hash: str | None
    responses: list[Response] = field(default_factory=list)


@dataclass
class PushResult:
    dataset: str
    workspace: str | None
    url: str | None
    created: int
    updated: int
    dataset_created: bool
    total: int


class ReviewBackend(Protocol):
    def push(self, kind: Kind, items: list[ReviewItem], *, dataset: str, workspace: str | None = None,
             guidelines: str = "", min_submitted: int = 1, allow_neutral: bool = True,
             layout: Layout = "solution") -> PushResult: ...

    def pull(self, kind: Kind, *, dataset: str, workspace: str | None = None) -> list[ItemResponses]: ...


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- items from the run
def irm_items(rankings: list[dict[str, Any]], problems: dict[str, dict[str, Any]] | None = None) -> list[ReviewItem]:
    """One item per IRM ranking row (``irm/irm_rankings``), least certain first; ``problems`` (id -> Problem row)
    gives round and source."""
    from ..stages.irm import judge_confidence
    from .priority import rank, uncertainty

    problems = problems or {}
    out = []
    for r in rankings:
        vs = sorted(r["variants"], key=lambda v: v["id"])
        if len(vs) > MAX_VERSIONS:
            raise ValueError(f"{r['id']}: {len(vs)} versions; review supports at most {MAX_VERSIONS}")
        if any(v["id"] not in VERSION_IDS for v in vs):
            raise ValueError(f"{r['id']}: version ids must be letters A-{VERSION_IDS[-1]}, got {[v['id'] for v in vs]}")
        conf = judge_confidence(r)
        consistent = bool(r.get("consistent", True))
        unc, why = uncertainty(conf, swapped_disagree=not consistent)
        p = problems.get(r["instruction_id"], {})
        out.append(ReviewItem(
            id=r["id"], kind="irm",
            content={"instruction": r["instruction"], "versions": {v["id"]: v["text"] for v in vs}},
            suggestion={"ranking": {v["id"]: v["rank"] for v in vs}},
            agent=r.get("judge") or "judge", score=conf,
            metadata={"source": p.get("source") or "unknown", "round": int(p.get("round") or 0),
                      "operation": sorted({v["operation"] for v in vs if v.get("operation")}),
                      "evolver": sorted({v["evolver"] for v in vs}), "judge_confidence": conf,
                      "versions": len(vs), "consistent": "yes" if consistent else "no",
                      "uncertainty": unc, "why": why},
        ))
    return rank(out)


def _prm_solutions(examples: list[dict[str, Any]], judgements: list[dict[str, Any]],
                   labeller: str) -> list[dict[str, Any]]:
    """Per solution labelled by ``labeller``: its row, 3-way labels, confidences, agent and uncertainty."""
    from .priority import first_error, solution_confidence, uncertainty

    by_sol = {j["solution_id"]: j for j in judgements if j.get("ok")}
    rows_by_id = {e["id"]: e for e in examples}
    other = "montecarlo" if labeller == "judge" else "judge"
    out = []
    for ex in examples:
        if ex["labeller"] != labeller:
            continue
        sid = ex["id"].rsplit(":", 1)[0]
        j = by_sol.get(sid) if labeller == "judge" else None
        labels3 = j["labels3"] if j else ["correct" if x else "incorrect" for x in ex["labels"]]
        conf = (j or {}).get("confidence") or ex.get("step_scores") or [None] * len(ex["completions"])
        twin = rows_by_id.get(f"{sid}:{other}")
        fe = first_error(ex["labels"])
        twin_fe = first_error(twin["labels"]) if twin and len(twin["labels"]) == len(ex["labels"]) else None
        sol_conf = solution_confidence(conf, ex["labels"])
        unc, why = uncertainty(sol_conf, mc_disagree=twin_fe is not None and twin_fe != fe)
        out.append({"sid": sid, "ex": ex, "labels3": labels3, "conf": conf, "agent": (j or {}).get("judge") or labeller,
                    "first_error": fe, "other_first_error": twin_fe, "confidence": sol_conf,
                    "uncertainty": unc, "why": why})
    return out


def prm_items(examples: list[dict[str, Any]], judgements: list[dict[str, Any]],
              problems: dict[str, dict[str, Any]] | None = None, labeller: str = "judge") -> list[ReviewItem]:
    """Layout ``step``: one item per step of each PRM row of ``labeller`` (``prm/prm``), least certain solution
    first.

    ``judgements`` (``prm/judgements``) give the judge's 3-way labels and confidences (Monte-Carlo rows use their
    step scores); ``problems`` (id -> Problem row) gives round and operation."""
    from .priority import rank

    problems = problems or {}
    out = []
    for sol in _prm_solutions(examples, judgements, labeller):
        ex, sid, conf = sol["ex"], sol["sid"], sol["conf"]
        p = problems.get(ex["problem_id"], {})
        steps = ex["completions"]
        for k, step in enumerate(steps):
            prev = "\n\n".join(f"**{i + 1}.** {s}" for i, s in enumerate(steps[:k])) or "(this is the first step)"
            out.append(ReviewItem(
                id=f"{sid}#{k + 1}", kind="prm",
                content={"problem": ex["prompt"], "previous_steps": prev, "step": step,
                         "position": f"{k + 1}/{len(steps)}"},
                suggestion={"label": sol["labels3"][k]}, agent=sol["agent"], score=conf[k],
                metadata={"source": ex.get("source") or "sft", "round": int(p.get("round") or 0),
                          "operation": p.get("operation") or "none", "judge_confidence": conf[k],
                          "step_number": k + 1, "n_steps": len(steps),
                          "final_correct": "yes" if ex.get("final_correct") else "no", "solution": sid,
                          "uncertainty": sol["uncertainty"], "why": sol["why"]},
            ))
    return rank(out)


def prm_solution_items(examples: list[dict[str, Any]], judgements: list[dict[str, Any]],
                       problems: dict[str, dict[str, Any]] | None = None,
                       labeller: str = "judge") -> list[ReviewItem]:
    """Layout ``solution``: one item per PRM row of ``labeller``: the problem and the steps; the suggestion is the
    labeller's first incorrect step (0 = none) with its confidence
    (:func:`evolkit.review.priority.solution_confidence`). Least certain first."""
    from .priority import rank

    problems = problems or {}
    out = []
    for sol in _prm_solutions(examples, judgements, labeller):
        ex = sol["ex"]
        p = problems.get(ex["problem_id"], {})
        meta = {"source": ex.get("source") or "sft", "round": int(p.get("round") or 0),
                "operation": p.get("operation") or "none", "judge_confidence": sol["confidence"],
                "n_steps": len(ex["completions"]), "final_correct": "yes" if ex.get("final_correct") else "no",
                "judge_first_error": sol["first_error"], "uncertainty": sol["uncertainty"], "why": sol["why"]}
        if sol["other_first_error"] is not None:
            meta["other_first_error"] = sol["other_first_error"]
        out.append(ReviewItem(
            id=sol["sid"], kind="prm",
            content={"problem": ex["prompt"], "steps": list(ex["completions"])},
            suggestion={"first_error": sol["first_error"], "labels3": sol["labels3"]},
            agent=sol["agent"], score=sol["confidence"], metadata=meta,
        ))
    return rank(out)


# ---------------------------------------------------------------------------------------------- guidelines
IRM_GUIDELINES = """\
# Ranking evolved math problems (IRM)

Each record shows an **original problem** and 2-4 **versions** of it, written by different evolvers (models or prompt
styles) with evolution operations such as *add constraints*, *concretize*, *increase reasoning*, *simplify* or *write
a new easier problem*. The versions train the **instruction reward model**, which learns which evolved problems are
good training problems.

**Rank the versions from best (1) to worst** on three criteria, in this order of importance:

1. **Definition**: the problem is well defined. Everything needed to solve it is stated, and it asks one clear question.
2. **Precision**: quantities, units and conditions are exact and unambiguous. Nothing can be read two ways.
3. **Integrity**: the problem is coherent and solvable, with exactly one correct answer. No contradictions, no
   impossible numbers (e.g. 3.5 people), no leftover text from the rewriting prompt.

Harder is not automatically better. A simple version that is well defined beats a hard one that is broken.
Give two versions the **same rank** only when you really cannot tell them apart. If a record has fewer versions than
ranking slots, the missing versions are empty: put them **last**.

The pre-filled ranking is the **judge model's suggestion**, with the judge's confidence. Check it and correct it:
don't accept it without reading. (Keyboard: click a version and type its rank; Enter submits, Backspace discards.) **Discard** a record when the original problem itself is broken or unreadable.
Use the optional comment for anything unusual.

Records come least certain first (sort: *Review order*, ascending; the link evolkit prints has it). Filters:
*judge_confidence*, *round*, *operation*, *evolver*, *source*.
"""

PRM_SOLUTION_GUIDELINES = """\
# Finding the first incorrect step (PRM)

Each record is **one step-by-step solution** of the problem above it, with its steps numbered 1, 2, 3 ... These
labels train the **process reward model**, which scores every step of a solution.

**Which step is the first incorrect one?** Read the steps in order and pick the number of the first step that makes a
calculation, logic or reading error, or pick **No incorrect step** when every step is right. (Press the step's number
on the keyboard, then Enter to submit.)

* A step is **correct** when it is mathematically right and follows from the problem and the steps before it. A step
  that restates the problem or takes a harmless detour is not an error.
* Stop at the first error: what comes after it is not labelled (it builds on a wrong step).
* Judge the steps, not only the final answer: a wrong answer has a first wrong step somewhere, and a right answer can
  still contain a wrong step. Options beyond the solution's last step do not apply: don't pick them.

The pre-selected option is the **judge model's suggestion** (with its confidence). Check it before you submit. When
you disagree, write one sentence in *justification* saying what is wrong. **Discard** a record when the problem or
the solution cannot be understood; a discarded solution is left out of the reviewed data.

Figure code (Asymptote) is folded: click "Figure" to see it. Records come least certain first (sort: *Review
order*, ascending; the link evolkit prints has it). Filters: *judge_confidence*, *n_steps*, *final_correct*,
*source*, *round*.
"""

PRM_GUIDELINES = """\
# Labelling solution steps (PRM)

Each record is **one step** of a step-by-step solution. It shows the problem, the **earlier steps** for context, and
the **step to label**. These labels train the **process reward model**, which scores every step of a solution.

**Is this step correct?**

* **Correct**: the step is mathematically right and follows from the problem and the earlier steps.
* **Incorrect**: the step makes a calculation, logic or reading error, or it builds on an earlier wrong step (a
  step that correctly continues from a wrong number is still incorrect).
* **Neutral** (when offered): the step is not wrong but does not move the solution forward. Examples: it restates
  the problem, hedges, or takes a harmless detour. Neutral steps count as correct in the published data, unless the
  run is configured otherwise.

Judge the step itself, not the final answer. A solution with a wrong final answer can have correct early steps. Label
each step independently, even after an earlier step was wrong.

The pre-selected label is the **judge model's suggestion** (with its confidence when it gave one). Check it before you
submit. When you disagree with it, write one sentence in *justification* saying what is wrong. **Discard** a record
when the problem or the step cannot be understood. Discarding a step removes its whole solution from the reviewed data.

Records come least certain solution first (sort: *Review order*, then *Step number*; the link evolkit prints has it).
Filters: *solution* (all steps of one solution), *step_number*, *judge_confidence*, *final_correct*, *source*, *round*.
"""
