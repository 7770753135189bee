"""Turning reviewers' answers into reviewed datasets, and measuring agreement (pure functions, no server).

Resolution, per record (an IRM ranking or a PRM step):

* draft responses are ignored; answers given to an older version of the record (its content hash changed since) are
  ignored as ``stale``;
* **discarded**: when at least as many reviewers discarded the record as submitted it, the record is excluded (an IRM
  ranking is dropped; for PRM the whole solution is dropped, since one of its steps has no usable label);
* **one** submitted answer overrides the model;
* **several**: IRM: versions are ordered by their mean rank over the reviewers (Borda); versions with equal mean rank
  share a rank (a tie: the record is ``flagged`` and that pair gives no chosen/rejected row). PRM: the majority label;
  a tie is ``flagged`` and resolved to the judge's label when it is among the tied labels, else to ``incorrect``
  (provenance ``tie``);
* **none**: the model's label stays (provenance ``model``).

PRM, solution layout (one record per solution, answer = first incorrect step k, 0 = none): the majority answer; a
tie is ``flagged`` and resolved to the judge's first error when it is among the tied answers, else to the earliest
tied error (the answer that calls the fewest steps correct). The resolved solution is published the PRM800K /
ProcessBench way: steps 1..k-1 correct, step k incorrect, and the steps after k **left out** (``completions`` and
``labels`` end at the first error: nobody labelled them, and they build on a wrong step); with 0 every step is
correct and kept. An answer beyond the solution's last step is ignored (``invalid_answers``).

Provenance: IRM rows get ``label_source`` ``human`` or ``model``. PRM rows get ``human`` only when every step was
resolved by reviewers; a row with some reviewed steps keeps ``model`` and has labeller ``<labeller>+human``; the
per-step provenance (``human`` / ``tie`` / ``model``) is in the ``prm_steps`` output.

Agreement: Cohen's kappa between every two annotators on the records both answered (IRM: one unit per pair of
versions, labelled first-better / second-better / tie; PRM: one unit per step, 3-way and binary), and of the judge
against the resolved human labels (PRM also: accuracy, per-class precision/recall, first-error-step F1 on fully
reviewed solutions; IRM: exact-ranking and top-1 match).
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

from ..judging import to_bool
from ..metrics import accuracy, cohen_kappa, first_error_f1, pairwise_preferences, per_class
from ..stages.irm import pairs_from_ranking
from .adapter import ItemResponses, ReviewItem


def _competition_ranks(score: dict[str, float]) -> dict[str, int]:
    """Lower score = better; equal scores share a rank (1, 1, 3)."""
    ordered = sorted(score, key=lambda k: (score[k], k))
    out: dict[str, int] = {}
    for i, k in enumerate(ordered):
        out[k] = out[ordered[i - 1]] if i and score[k] == score[ordered[i - 1]] else i + 1
    return out


def _usable(item: ReviewItem | None, pulled: ItemResponses, stats: Counter[str]) -> tuple[list[Any], list[Any]]:
    """(submitted answers, discarded answers) of a pulled record; counts drafts and stale answers in ``stats``."""
    if item is None:
        stats["unknown_records"] += 1
        return [], []
    subs, discs = [], []
    for r in pulled.responses:
        if r.status == "draft":
            stats["draft_responses"] += 1
            continue
        answered = r.content_hash or pulled.content_hash
        if answered is not None and answered != item.content_hash:
            stats["stale_responses"] += 1
            continue
        if r.status == "discarded":
            discs.append(r)
        elif r.status == "submitted":
            subs.append(r)
    return subs, discs


# ---------------------------------------------------------------------------------------------------------- IRM
def resolve_irm(rankings: list[dict[str, Any]], items: list[ReviewItem], pulled: list[ItemResponses],
                pair_margin: str = "none") -> dict[str, Any]:
    """Reviewed ``irm_rankings`` / ``irm_pairs``, a per-record ``irm_review`` log and the agreement report."""
    by_item = {i.id: i for i in items}
    by_pull = {p.id: p for p in pulled}
    stats: Counter[str] = Counter()
    out_rows, log_rows = [], []
    per_user: dict[str, dict[str, dict[str, int]]] = {}  # user -> record -> ranking
    judge_units, human_units = [], []
    exact = top1 = n_human = 0
    for row in rankings:
        item = by_item.get(row["id"])
        pulled_item = by_pull.get(row["id"])
        subs, discs = _usable(item, pulled_item, stats) if pulled_item else ([], [])
        versions = [v["id"] for v in row["variants"]]
        model_rank = {v["id"]: v["rank"] for v in row["variants"]}
        rankings_by_user = {}
        for r in subs:
            if r.ranking:
                kept = {v: r.ranking[v] for v in versions if v in r.ranking}
                if set(kept) == set(versions):
                    rankings_by_user[r.user] = _competition_ranks({k: float(x) for k, x in kept.items()})
                else:
                    stats["incomplete_rankings"] += 1
        for u, rk in rankings_by_user.items():
            per_user.setdefault(u, {})[row["id"]] = rk
        log = {"id": row["id"], "submitted": len(rankings_by_user), "discarded": len(discs),
               "reviewers": sorted(rankings_by_user), "flagged": False, "status": "model",
               "model_ranking": model_rank, "human_ranking": None, "rankings": rankings_by_user,
               "agreement": None, "resolution": "model (no answer)"}
        if discs and len(discs) >= len(rankings_by_user):
            log["status"] = "excluded"
            log["resolution"] = "excluded: discarded by at least as many reviewers as ranked it"
            log["flagged"] = bool(rankings_by_user)
            stats["excluded"] += 1
            log_rows.append(log)
            continue
        new = dict(row)
        if rankings_by_user:
            mean = {v: sum(rk[v] for rk in rankings_by_user.values()) / len(rankings_by_user) for v in versions}
            resolved = _competition_ranks(mean)
            flagged = len(set(resolved.values())) < len(versions) and len(rankings_by_user) > 1
            log.update(status="human", human_ranking=resolved, flagged=flagged)
            stats["human"] += 1
            stats["flagged"] += flagged
            new["variants"] = sorted(({**v, "rank": resolved[v["id"]]} for v in row["variants"]),
                                     key=lambda v: (v["rank"], v["id"]))
            new["label_source"] = "human"
            users = list(rankings_by_user.values())
            pair_agree = [_pair_agreement(a, b) for a, b in combinations(users, 2)]
            new["agreement"] = round(sum(pair_agree) / len(pair_agree), 4) if pair_agree else None
            log["agreement"] = new["agreement"]
            log["resolution"] = ("one reviewer" if len(users) == 1 else
                                 "mean rank (Borda); equal means share a rank (flagged)" if flagged else
                                 "mean rank (Borda)")
            n_human += 1
            exact += resolved == model_rank
            top1 += {v for v, r in resolved.items() if r == 1} == {v for v, r in model_rank.items() if r == 1}
            jp, hp = pairwise_preferences(model_rank, versions), pairwise_preferences(resolved, versions)
            for k in jp:
                judge_units.append(jp[k])
                human_units.append(hp[k])
        else:
            stats["model"] += 1
            new["label_source"] = "model"
        out_rows.append(new)
        log_rows.append(log)
    pairs = [p.row() for r in out_rows for p in pairs_from_ranking(r, pair_margin)]
    report = {
        "records": len(rankings),
        "human": stats["human"], "model": stats["model"], "excluded": stats["excluded"], "flagged": stats["flagged"],
        "draft_responses": stats["draft_responses"], "stale_responses": stats["stale_responses"],
        "incomplete_rankings": stats["incomplete_rankings"],
        "annotators": _irm_inter_annotator(per_user),
        "judge_vs_human": {
            "records": n_human,
            "exact_ranking": exact / n_human if n_human else None,
            "top1": top1 / n_human if n_human else None,
            "pair_units": len(judge_units),
            "pair_accuracy": accuracy(human_units, judge_units),
            "kappa": cohen_kappa(human_units, judge_units),
        },
        "judge_vs_annotator": {u: _irm_vs_model(rks, {r["id"]: r for r in rankings})
                               for u, rks in sorted(per_user.items())},
    }
    return {"irm_rankings": sorted(out_rows, key=lambda r: r["id"]), "irm_pairs": sorted(pairs, key=lambda r: r["id"]),
            "irm_review": sorted(log_rows, key=lambda r: r["id"]), "report": report}


def _pair_agreement(a: dict[str, int], b: dict[str, int]) -> float:
    pa, pb = pairwise_preferences(a), pairwise_preferences(b)
    return sum(pa[k] == pb[k] for k in pa) / len(pa) if pa else 1.0


def _irm_inter_annotator(per_user: dict[str, dict[str, dict[str, int]]]) -> list[dict[str, Any]]:
    out = []
    for u, v in combinations(sorted(per_user), 2):
        common = sorted(set(per_user[u]) & set(per_user[v]))
        a, b = [], []
        for rid in common:
            pu, pv = pairwise_preferences(per_user[u][rid]), pairwise_preferences(per_user[v][rid])
            for k in pu:
                a.append(pu[k])
                b.append(pv[k])
        out.append({"a": u, "b": v, "records": len(common), "units": len(a), "agreement": accuracy(a, b),
                    "kappa": cohen_kappa(a, b)})
    return out


def _irm_vs_model(ranks: dict[str, dict[str, int]], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    a, b = [], []
    for rid, rk in ranks.items():
        model = {v["id"]: v["rank"] for v in rows[rid]["variants"]}
        pm, ph = pairwise_preferences(model, list(rk)), pairwise_preferences(rk)
        for k in ph:
            a.append(ph[k])
            b.append(pm[k])
    return {"records": len(ranks), "units": len(a), "agreement": accuracy(a, b), "kappa": cohen_kappa(a, b)}


# ---------------------------------------------------------------------------------------------------------- PRM
def resolve_prm(examples: list[dict[str, Any]], items: list[ReviewItem], pulled: list[ItemResponses],
                labeller: str = "judge", neutral_as: str = "correct") -> dict[str, Any]:
    """Reviewed ``prm`` rows (all labellers; the reviewed labeller's rows resolved), ``prm_steps`` (per reviewed-
    labeller step: model label, answers, resolved label, provenance) and the agreement report."""
    by_item = {i.id: i for i in items}
    by_pull = {p.id: p for p in pulled}
    stats: Counter[str] = Counter()
    per_user: dict[str, dict[str, str]] = {}  # user -> step id -> label
    step_rows: list[dict[str, Any]] = []
    out_rows: list[dict[str, Any]] = []
    j3, h3 = [], []  # judge vs resolved human, 3-way, on human-resolved steps
    fe_true, fe_pred = [], []
    for ex in examples:
        if ex["labeller"] != labeller:
            out_rows.append(dict(ex))
            continue
        sid = ex["id"].rsplit(":", 1)[0]
        labels, prov, excluded = [], [], False
        for k in range(len(ex["completions"])):
            iid = f"{sid}#{k + 1}"
            item = by_item.get(iid)
            model3 = item.suggestion["label"] if item else ("correct" if ex["labels"][k] else "incorrect")
            pulled_item = by_pull.get(iid)
            subs, discs = _usable(item, pulled_item, stats) if pulled_item else ([], [])
            answers = {r.user: r.label for r in subs if r.label}
            for u, lab in answers.items():
                per_user.setdefault(u, {})[iid] = lab
            srow = {"id": iid, "solution_id": sid, "step": k + 1, "model_label": model3, "answers": answers,
                    "discarded": len(discs), "label": model3, "provenance": "model", "flagged": False}
            if discs and len(discs) >= len(answers):
                srow.update(provenance="excluded", flagged=bool(answers))
                excluded = True
            elif answers:
                counts = Counter(answers.values()).most_common()
                top = [lab for lab, c in counts if c == counts[0][1]]
                if len(top) == 1:
                    srow.update(label=top[0], provenance="human")
                    j3.append(model3)
                    h3.append(top[0])
                else:
                    srow.update(label=model3 if model3 in top else "incorrect", provenance="tie", flagged=True)
            step_rows.append(srow)
            labels.append(srow["label"])
            prov.append(srow["provenance"])
        if excluded:
            stats["excluded_solutions"] += 1
            continue
        new = dict(ex)
        new["labels"] = [to_bool(x, neutral_as) for x in labels]
        if all(p == "human" for p in prov):
            new.update(label_source="human", labeller="human", step_scores=None)
            if "labeller_model" in new:
                new["labeller_model"] = None
            stats["human_solutions"] += 1
            model_bool = [to_bool(s["model_label"], neutral_as) for s in step_rows[-len(prov):]]
            fe_true.append(new["labels"])
            fe_pred.append(model_bool)
        elif any(p in ("human", "tie") for p in prov):
            new.update(label_source="model", labeller=f"{labeller}+human", step_scores=None)
            stats["partial_solutions"] += 1
        else:
            stats["model_solutions"] += 1
        out_rows.append(new)
    steps_prov = Counter(s["provenance"] for s in step_rows)
    bin_true = [to_bool(x, neutral_as) for x in h3]
    bin_pred = [to_bool(x, neutral_as) for x in j3]
    names = {True: "correct", False: "incorrect"}
    report = {
        "solutions": sum(1 for e in examples if e["labeller"] == labeller),
        "human_solutions": stats["human_solutions"], "partial_solutions": stats["partial_solutions"],
        "model_solutions": stats["model_solutions"], "excluded_solutions": stats["excluded_solutions"],
        "steps": dict(steps_prov), "flagged_steps": sum(s["flagged"] for s in step_rows),
        "draft_responses": stats["draft_responses"], "stale_responses": stats["stale_responses"],
        "annotators": _prm_inter_annotator(per_user, neutral_as),
        "judge_vs_human": {
            "steps": len(h3),
            "accuracy": accuracy(bin_true, bin_pred),
            "kappa": cohen_kappa(bin_true, bin_pred),
            "accuracy3": accuracy(h3, j3),
            "kappa3": cohen_kappa(h3, j3),
            "per_class": per_class([names[x] for x in bin_true], [names[x] for x in bin_pred],
                                   ["correct", "incorrect"]),
            "first_error": first_error_f1(fe_true, fe_pred),
        },
        "judge_vs_annotator": {u: _prm_vs_model(labs, by_item, neutral_as) for u, labs in sorted(per_user.items())},
    }
    return {"prm": sorted(out_rows, key=lambda r: r["id"]), "prm_steps": step_rows, "report": report}


def _prm_vs_model(labs: dict[str, str], by_item: dict[str, ReviewItem], neutral_as: str) -> dict[str, Any]:
    human = list(labs.values())
    judge = [by_item[i].suggestion["label"] for i in labs]
    hb = [to_bool(x, neutral_as) for x in human]
    jb = [to_bool(x, neutral_as) for x in judge]
    return {"steps": len(human), "agreement": accuracy(hb, jb), "kappa": cohen_kappa(hb, jb),
            "kappa3": cohen_kappa(human, judge)}


def _prm_inter_annotator(per_user: dict[str, dict[str, str]], neutral_as: str) -> list[dict[str, Any]]:
    out = []
    for u, v in combinations(sorted(per_user), 2):
        common = sorted(set(per_user[u]) & set(per_user[v]))
        a = [per_user[u][i] for i in common]
        b = [per_user[v][i] for i in common]
        ab = [to_bool(x, neutral_as) for x in a]
        bb = [to_bool(x, neutral_as) for x in b]
        out.append({"a": u, "b": v, "steps": len(common), "agreement": accuracy(a, b), "kappa3": cohen_kappa(a, b),
                    "kappa": cohen_kappa(ab, bb)})
    return out


# ------------------------------------------------------------------------------------------------- PRM (solutions)
def _labels_from_first_error(fe: int, n: int) -> list[bool]:
    """Published labels of an answer: steps before ``fe`` correct, step ``fe`` incorrect, nothing after it."""
    return [True] * n if fe == 0 else [True] * (fe - 1) + [False]


def _padded(fe: int, n: int) -> list[bool]:
    """Full-length labels with the same first error (for first-error comparisons of whole solutions)."""
    return [True] * n if fe == 0 else [True] * (fe - 1) + [False] + [True] * (n - fe)


def resolve_prm_solutions(examples: list[dict[str, Any]], items: list[ReviewItem], pulled: list[ItemResponses],
                          labeller: str = "judge") -> dict[str, Any]:
    """Solution layout: reviewed ``prm`` rows (rows of other labellers pass through), ``prm_review`` (per solution:
    every answer, agreement, resolution), ``prm_steps`` (per step of the reviewed labeller) and the report."""
    from .priority import first_error

    by_item = {i.id: i for i in items}
    by_pull = {p.id: p for p in pulled}
    stats: Counter[str] = Counter()
    per_user: dict[str, dict[str, int]] = {}  # user -> solution id -> first error
    out_rows, log_rows, step_rows = [], [], []
    fe_true, fe_pred, j_steps, h_steps = [], [], [], []
    n_sol = 0
    for ex in examples:
        if ex["labeller"] != labeller:
            out_rows.append(dict(ex))
            continue
        n_sol += 1
        sid = ex["id"].rsplit(":", 1)[0]
        n = len(ex["completions"])
        item = by_item.get(sid)
        model_fe = first_error(ex["labels"])
        pulled_item = by_pull.get(sid)
        subs, discs = _usable(item, pulled_item, stats) if pulled_item else ([], [])
        answers: dict[str, int] = {}
        comments: dict[str, str] = {}
        for r in subs:
            if r.first_error is None:
                continue
            if not 0 <= r.first_error <= n:
                stats["invalid_answers"] += 1
                continue
            answers[r.user] = r.first_error
            if r.comment:
                comments[r.user] = r.comment
        for u, fe in answers.items():
            per_user.setdefault(u, {})[sid] = fe
        pairs = list(combinations(sorted(answers), 2))
        agreement = round(sum(answers[a] == answers[b] for a, b in pairs) / len(pairs), 4) if pairs else None
        log = {"id": sid, "n_steps": n, "model_first_error": model_fe, "answers": answers, "comments": comments,
               "discarded": len(discs), "reviewers": sorted(answers), "agreement": agreement, "flagged": False,
               "status": "model", "first_error": model_fe, "resolution": "model (no answer)"}
        if discs and len(discs) >= len(answers):
            log.update(status="excluded", flagged=bool(answers),
                       resolution="excluded: discarded by at least as many reviewers as answered it")
            stats["excluded_solutions"] += 1
            log_rows.append(log)
            step_rows += [{"id": f"{sid}#{k + 1}", "solution_id": sid, "step": k + 1, "model_label": ex["labels"][k],
                           "label": None, "provenance": "excluded"} for k in range(n)]
            continue
        new = dict(ex)
        if answers:
            counts = Counter(answers.values()).most_common()
            top = sorted(fe for fe, c in counts if c == counts[0][1])
            if len(top) == 1:
                fe, how = top[0], ("one reviewer" if len(answers) == 1 else "majority")
            else:
                fe = model_fe if model_fe in top else min(top, key=lambda x: x or n + 1)
                how = ("tie: the judge's answer is among the tied ones" if model_fe in top
                       else "tie: the earliest tied first error")
                log["flagged"] = True
                stats["flagged"] += 1
            labels = _labels_from_first_error(fe, n)
            new.update(completions=list(ex["completions"][:len(labels)]), labels=labels, label_source="human",
                       labeller="human", step_scores=None, labeller_model=None)
            log.update(status="human", first_error=fe, resolution=how)
            stats["human_solutions"] += 1
            fe_true.append(_padded(fe, n))
            fe_pred.append(list(ex["labels"]))
            j_steps += list(ex["labels"][:len(labels)])
            h_steps += labels
            for k in range(n):
                step_rows.append({"id": f"{sid}#{k + 1}", "solution_id": sid, "step": k + 1,
                                  "model_label": ex["labels"][k], "label": labels[k] if k < len(labels) else None,
                                  "provenance": "human" if k < len(labels) else "not labelled (after the first error)"})
        else:
            stats["model_solutions"] += 1
            step_rows += [{"id": f"{sid}#{k + 1}", "solution_id": sid, "step": k + 1, "model_label": ex["labels"][k],
                           "label": ex["labels"][k], "provenance": "model"} for k in range(n)]
        out_rows.append(new)
        log_rows.append(log)
    names = {True: "correct", False: "incorrect"}
    fe_hits = [first_error(p) == first_error(t) for t, p in zip(fe_true, fe_pred)]
    report = {
        "layout": "solution",
        "solutions": n_sol,
        "human_solutions": stats["human_solutions"], "model_solutions": stats["model_solutions"],
        "excluded_solutions": stats["excluded_solutions"], "flagged": stats["flagged"],
        "draft_responses": stats["draft_responses"], "stale_responses": stats["stale_responses"],
        "invalid_answers": stats["invalid_answers"],
        "annotators": _solution_inter_annotator(per_user),
        "judge_vs_human": {
            "solutions": len(fe_true),
            "first_error_accuracy": sum(fe_hits) / len(fe_hits) if fe_hits else None,
            "first_error": first_error_f1(fe_true, fe_pred),
            "steps": len(h_steps),
            "accuracy": accuracy(h_steps, j_steps),
            "kappa": cohen_kappa(h_steps, j_steps),
            "per_class": per_class([names[x] for x in h_steps], [names[x] for x in j_steps], ["correct", "incorrect"]),
        },
        "judge_vs_annotator": {u: _solution_vs_model(fes, {e["id"].rsplit(":", 1)[0]: e for e in examples
                                                            if e["labeller"] == labeller})
                               for u, fes in sorted(per_user.items())},
    }
    return {"prm": sorted(out_rows, key=lambda r: r["id"]), "prm_review": sorted(log_rows, key=lambda r: r["id"]),
            "prm_steps": step_rows, "report": report}


def _solution_inter_annotator(per_user: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per pair of reviewers, on the solutions both answered: exact first-error agreement and kappa over the answers
    (categories none / 1 / 2 ...)."""
    out = []
    for u, v in combinations(sorted(per_user), 2):
        common = sorted(set(per_user[u]) & set(per_user[v]))
        a = [per_user[u][i] for i in common]
        b = [per_user[v][i] for i in common]
        out.append({"a": u, "b": v, "solutions": len(common), "agreement": accuracy(a, b), "kappa": cohen_kappa(a, b)})
    return out


def _solution_vs_model(fes: dict[str, int], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from .priority import first_error

    human = list(fes.values())
    judge = [first_error(rows[sid]["labels"]) for sid in fes]
    return {"solutions": len(human), "agreement": accuracy(human, judge), "kappa": cohen_kappa(human, judge)}


# ---------------------------------------------------------------------------------------------------------- plot
def plot_agreement(report: dict[str, Any], kind: str, path: Any) -> str | None:
    """A bar chart of the kappas in ``report`` (annotator pairs, judge vs humans, judge vs each annotator)."""
    bars: list[tuple[str, float | None]] = []
    key = "kappa"
    for p in report.get("annotators", []):
        bars.append((f"{p['a']} vs {p['b']}", p.get(key)))
    bars.append(("judge vs resolved", report.get("judge_vs_human", {}).get(key)))
    for u, d in report.get("judge_vs_annotator", {}).items():
        bars.append((f"judge vs {u}", d.get(key)))
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(bars)), 3.2))
    xs = range(len(bars))
    vals = [v if v is not None else 0.0 for _, v in bars]
    colors = ["#4C72B0" if "judge" not in n else "#DD8452" for n, _ in bars]
    ax.bar(xs, vals, color=colors)
    for x, (_, v) in zip(xs, bars):
        y = (v or 0.0) + (0.02 if (v or 0.0) >= 0 else -0.02)
        ax.text(x, y, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom" if y >= 0 else "top", fontsize=8)
    ax.set_xticks(list(xs), [n for n, _ in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(min(0.0, min(vals)) - 0.12, 1.1)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("Cohen's kappa")
    ax.set_title(f"{kind.upper()} review agreement")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
