"""PRM data (WizardMath process reward model): solutions split into steps, each step labelled correct or incorrect.

Input solutions come from ``sft/solutions`` and, when the evolve stage ran, from its solution outputs; both correct and
incorrect ones are taken (``balance``: as many of each final verdict) so step labels are not all "correct". Steps are
the solutions' ``steps`` (``evolkit.answers.split_steps``). Two labellers, either or both:

* ``judge``: a judge model (``ctx.backend("judge")``, ``prompts/judge_prm.jinja``) labels every step ``correct``,
  ``incorrect`` or (``allow_neutral``) ``neutral`` in a JSON answer; answers are parsed robustly and failures recorded
  with a reason. ``neutral`` becomes ``neutral_as`` (default correct, as in PRM800K's usual binarisation).
* ``montecarlo`` (Math-Shepherd): from the prefix ending at each step, ``rollouts`` completions are sampled
  (``prompts/prm_rollout.jinja``, task ``rollout``); their final answers are checked against the (pseudo-)gold answer
  with the answer checker. A step's score is the share of rollouts that reach the gold answer; its label is
  ``score > 0`` ("hard" estimation) or ``score >= soft_threshold`` ("soft"). The last step's label is the solution's own
  verdict (its "rollout" is the solution itself).

Outputs (``prm/``): ``prm`` (:class:`~evolkit.records.PRMExample`, TRL's stepwise-supervision format: ``prompt``,
``completions`` = steps, ``labels`` = booleans; one row per solution and labeller), ``judgements`` (raw judge answers,
3-way step labels, parse status) and ``rollouts`` (per step: samples, hits).

Calibration (:func:`calibrate`, ``evolkit prm calibrate``) runs the same step judge on human-labelled steps in PRM800K's
stepwise-critique format and reports agreement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import prompts
from ..answers import extract_answer, split_steps
from ..backends import Backend, Request
from ..errors import DataError
from ..executors import Step, run_step, stream_rows
from ..judging import JudgeParseError, find_json_object, make_sampling, strip_step_marker
from ..metrics import accuracy, cohen_kappa, confusion, first_error_f1, per_class
from ..progress import Progress
from ..records import PRMExample

STAGE = "prm"
log = logging.getLogger("evolkit.prm")
LABELS3 = ("correct", "incorrect", "neutral")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Where solutions come from: the SFT stage's and (when it ran) the evolve stage's.
    sources: list[Literal["sft", "evolve"]] = ["sft", "evolve"]
    #: Solutions to label (None: all usable ones).
    max_solutions: int | None = Field(200, gt=0)
    #: As many solutions with a correct final answer as with a wrong one (the smaller side sets the count).
    balance: bool = True
    #: Count solutions without a final answer as incorrect ones (else they are skipped).
    include_no_answer: bool = False
    min_steps: int = Field(2, ge=1)
    max_steps: int = Field(30, ge=1)
    labellers: list[Literal["judge", "montecarlo"]] = ["judge"]
    # judge
    judge_prompt: str = "judge_prm"
    allow_neutral: bool = True
    neutral_as: Literal["correct", "incorrect"] = "correct"
    judge_sampling: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1024}
    # Monte-Carlo rollouts
    rollouts: int = Field(8, gt=0)
    rollout_prompt: str = "prm_rollout"
    rollout_sampling: dict[str, Any] = {"temperature": 0.7}
    mc_estimate: Literal["hard", "soft"] = "hard"
    soft_threshold: float = Field(0.5, gt=0, le=1)
    #: Monte-Carlo labels for at most this many of the selected solutions (None: all): rollouts cost k per step.
    max_rollout_solutions: int | None = Field(None, gt=0)


# --------------------------------------------------------------------------------------------------------- judge
def judge_request(problem: str, steps: list[str], cfg: Config, final_correct: bool | None = None) -> Request:
    text = prompts.render(cfg.judge_prompt, problem=problem, steps=[strip_step_marker(s) for s in steps],
                          allow_neutral=cfg.allow_neutral)
    return Request([{"role": "user", "content": text}], task="judge:prm",
                   meta={"steps": list(steps), "final_correct": final_correct})


_ALIASES = {"correct": "correct", "right": "correct", "good": "correct", "positive": "correct", "+": "correct",
            "1": "correct", "true": "correct", "incorrect": "incorrect", "wrong": "incorrect", "bad": "incorrect",
            "negative": "incorrect", "-": "incorrect", "-1": "incorrect", "false": "incorrect", "error": "incorrect",
            "neutral": "neutral", "0": "neutral", "ok": "neutral"}


def parse_prm_judgement(text: str, n_steps: int, allow_neutral: bool = True) -> dict[str, Any]:
    """``{"labels": [3-way label per step], "confidence": [float|None per step]}`` or :class:`JudgeParseError`.

    Accepts ``{"steps": [{"step": i, "label": ...}, ...]}`` (1-based, any order, optional ``confidence``), a plain
    list of labels under ``"steps"`` or ``"labels"``; every step 1..n must be labelled exactly once."""
    obj = find_json_object(text)
    items = obj.get("steps", obj.get("labels"))
    if not isinstance(items, list) or not items:
        raise JudgeParseError("missing_steps", "no 'steps' list")
    labels: list[str | None] = [None] * n_steps
    conf: list[float | None] = [None] * n_steps
    for pos, it in enumerate(items):
        if isinstance(it, dict):
            idx = it.get("step", pos + 1)
            lab = it.get("label", it.get("verdict"))
            c = it.get("confidence")
        else:
            idx, lab, c = pos + 1, it, None
        try:
            idx = int(idx)
        except (TypeError, ValueError):
            raise JudgeParseError("bad_step", f"step number {idx!r}") from None
        if not 1 <= idx <= n_steps:
            raise JudgeParseError("bad_step", f"step {idx} outside 1..{n_steps}")
        norm = _ALIASES.get(str(lab).strip().lower().strip(".\"'"))
        if norm is None:
            raise JudgeParseError("bad_label", f"label {lab!r} of step {idx}")
        if norm == "neutral" and not allow_neutral:
            raise JudgeParseError("bad_label", f"neutral label of step {idx} (not allowed)")
        if labels[idx - 1] is not None:
            raise JudgeParseError("duplicate_step", f"step {idx} labelled twice")
        labels[idx - 1] = norm
        if isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1:
            conf[idx - 1] = float(c)
    missing = [i + 1 for i, lab in enumerate(labels) if lab is None]
    if missing:
        raise JudgeParseError("missing_steps", f"steps {missing} of {n_steps} not labelled")
    return {"labels": labels, "confidence": conf}


def to_bool(label3: str, neutral_as: str = "correct") -> bool:
    return label3 == "correct" or (label3 == "neutral" and neutral_as == "correct")


def judgement_rows(env: Any, item: tuple[str, int, bool], res: Any) -> list[dict[str, Any]]:
    """The judgement row of one judged solution (a generation step's row maker, see :mod:`evolkit.executors`);
    ``item`` = (key, number of steps, allow_neutral)."""
    key, n_steps, allow_neutral = item
    row: dict[str, Any] = {"key": key, "judge": env.model, "n_steps": n_steps, "raw": None, "ok": False,
                           "reason": None, "detail": None, "labels3": None, "confidence": None}
    if not res.ok or not res.completions:
        row.update(reason="request_failed", detail=res.error or "no completion")
    else:
        row["raw"] = res.completions[0].text
        try:
            parsed = parse_prm_judgement(row["raw"], n_steps, allow_neutral)
            row.update(ok=True, labels3=parsed["labels"], confidence=parsed["confidence"])
        except JudgeParseError as e:
            row.update(reason=e.reason, detail=str(e))
    return [row]


async def judge_steps(
    backend: Backend, items: list[tuple[str, str, list[str], bool | None]], cfg: Config, sampling: Any,
    on_result: Any = None, desc: str = "prm: judging steps", show_progress: bool = True, ctx: Any = None,
) -> dict[str, dict[str, Any]]:
    """Judge ``(key, problem, steps, final_correct)`` items; returns ``key -> judgement row`` (also given to
    ``on_result`` as each arrives). With ``ctx`` the requests go through the run's executor to its ``judge`` backend
    (``backend`` is then that backend)."""
    reqs = []
    for _key, problem, steps, final_correct in items:
        r = judge_request(problem, steps, cfg, final_correct)
        r.sampling = sampling
        reqs.append(r)
    ritems = [(key, len(steps), cfg.allow_neutral) for key, _p, steps, _f in items]
    if ctx is not None:
        results = run_step(ctx, Step("judge", reqs, ritems, judgement_rows))
    else:
        results = stream_rows(backend, reqs, ritems, judgement_rows)
    out: dict[str, dict[str, Any]] = {}
    with Progress(len(items), desc, enabled=show_progress) as bar:
        async for _i, _res, rows in results:
            for row in rows:
                out[row["key"]] = row
                if on_result is not None:
                    on_result(row)
                bar.update(1, failed=int(not row["ok"]))
    return out


# --------------------------------------------------------------------------------------------------------- inputs
def _problem_index(ctx: Any) -> dict[str, dict[str, Any]]:
    """problem id -> {question, gold, round, operation, source} from the seeds and any evolve output with questions."""
    idx: dict[str, dict[str, Any]] = {}
    for p in ctx.seeds():
        idx[p.id] = {"question": p.question, "gold": p.gold_answer, "round": p.round, "operation": p.operation,
                     "origin": p.source}
    for name in ("problems", "evol"):
        if not ctx.store.has_output("evolve", name):
            continue
        for r in ctx.store.load("evolve", name):
            idx.setdefault(r["id"], {"question": r["question"], "gold": r.get("pseudo_gold", r.get("gold_answer")),
                                     "round": r.get("round", 0), "operation": r.get("operation"),
                                     "origin": r.get("source") or "evol"})
    return idx


def candidate_solutions(ctx: Any, cfg: Config) -> list[dict[str, Any]]:
    """Usable solutions of the configured sources: id, source, problem info, steps, final_correct."""
    idx = _problem_index(ctx)
    pools: list[tuple[str, str, list[dict[str, Any]]]] = []
    if "sft" in cfg.sources and ctx.store.has_output("sft", "solutions"):
        pools.append(("sft", "solutions", ctx.store.load("sft", "solutions")))
    if "evolve" in cfg.sources:
        for name in sorted(ctx.store.outputs().get("evolve", {})):
            if "solution" not in name:
                continue
            rows = ctx.store.load("evolve", name)
            if rows and {"problem_id", "text", "verdict"} <= set(rows[0]):
                pools.append(("evolve", name, rows))
    out, seen = [], set()
    for source, name, rows in pools:
        for s in rows:
            verdict = s.get("verdict")
            if verdict == "no_answer" and cfg.include_no_answer:
                verdict = "incorrect"
            if verdict not in ("correct", "incorrect"):
                continue
            info = idx.get(s["problem_id"])
            if info is None or not info.get("question"):
                continue
            steps = list(s.get("steps") or split_steps(s.get("text")))
            if not cfg.min_steps <= len(steps) <= cfg.max_steps:
                continue
            sid = f"{source}:{s['problem_id']}:{s.get('sample_index', 0)}"
            if source == "evolve" and name != "solutions":
                sid = f"{source}/{name}:{s['problem_id']}:{s.get('sample_index', 0)}"
            if sid in seen:
                continue
            seen.add(sid)
            out.append({"id": sid, "problem_id": s["problem_id"], "source": source, "question": info["question"],
                        "gold": info.get("gold"), "round": info.get("round") or 0, "operation": info.get("operation"),
                        "origin": info.get("origin"), "steps": steps, "final_correct": verdict == "correct",
                        "model": s.get("model")})
    return out


def select_solutions(cands: list[dict[str, Any]], cfg: Config, seed: int) -> tuple[list[dict[str, Any]], bool]:
    """Balanced (when asked and possible) deterministic sample; returns (rows sorted by id, balanced?)."""
    rng = random.Random(seed)
    good = sorted((c for c in cands if c["final_correct"]), key=lambda c: c["id"])
    bad = sorted((c for c in cands if not c["final_correct"]), key=lambda c: c["id"])
    rng.shuffle(good)
    rng.shuffle(bad)
    balanced = cfg.balance and bool(good) and bool(bad)
    if balanced:
        n = min(len(good), len(bad))
        if cfg.max_solutions is not None:
            n = min(n, max(1, cfg.max_solutions // 2))
        chosen = good[:n] + bad[:n]
    else:
        chosen = good + bad
        rng.shuffle(chosen)
        if cfg.max_solutions is not None:
            chosen = chosen[: cfg.max_solutions]
    return sorted(chosen, key=lambda c: c["id"]), balanced


# --------------------------------------------------------------------------------------------------------- rollouts
def rollout_request(problem: str, prefix: list[str], gold: Any, cfg: Config, sampling: Any) -> Request:
    text = prompts.render(cfg.rollout_prompt, problem=problem, steps=prefix)
    return Request([{"role": "user", "content": text}], sampling, task="rollout",
                   meta={"question": problem, "gold": gold, "prefix": "\n\n".join(prefix)})


async def rollout_rows(env: Any, item: tuple[str, int, Any], res: Any) -> list[dict[str, Any]]:
    """The row of one rollout request (a generation step's row maker); ``item`` = (solution id, step, gold)."""
    sid, step, gold = item
    row = {"solution_id": sid, "step": step, "ok": res.ok, "samples": 0, "hits": 0, "answers": [],
           "reason": res.error}
    if res.ok:
        answers = [extract_answer(c.text) for c in res.completions]
        checks = await env.checker().acheck_many([(a, gold) for a in answers])
        row.update(samples=len(answers), hits=sum(bool(c.equal) for c in checks), answers=answers)
    return [row]


async def _rollouts(ctx: Any, cfg: Config, sols: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    store = ctx.store
    done = {(r["solution_id"], r["step"]) for r in store.iter_partial(STAGE, "rollouts") if r["ok"]}
    sampling = make_sampling(ctx, cfg.rollout_sampling, n=cfg.rollouts)
    items = []
    for s in sols:
        if s["gold"] is None:
            continue
        for i in range(1, len(s["steps"])):  # the last step's "rollout" is the solution itself
            if (s["id"], i) not in done:
                items.append((s, i, rollout_request(s["question"], s["steps"][:i], s["gold"], cfg, sampling)))
    job = Step("main", [it[2] for it in items], [(s["id"], i, s["gold"]) for s, i, _ in items], rollout_rows)
    with store.writer(STAGE, "rollouts") as w, Progress(len(items), "prm: rollouts", enabled=ctx.show_progress) as bar:
        async for _i, res, rows in run_step(ctx, job):
            for row in rows:
                w.write(row)
            bar.update(1, failed=int(not res.ok))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for r in store.iter_partial(STAGE, "rollouts"):
        out[(r["solution_id"], r["step"])] = r
    return out


def mc_labels(sol: dict[str, Any], rolls: dict[tuple[str, int], dict[str, Any]], cfg: Config
              ) -> tuple[list[bool], list[float]] | None:
    scores = []
    for i in range(1, len(sol["steps"])):
        r = rolls.get((sol["id"], i))
        if r is None or not r["ok"] or not r["samples"]:
            return None
        scores.append(r["hits"] / r["samples"])
    scores.append(1.0 if sol["final_correct"] else 0.0)
    if cfg.mc_estimate == "hard":
        labels = [sc > 0 for sc in scores]
    else:
        labels = [sc >= cfg.soft_threshold for sc in scores]
    return labels, [round(x, 4) for x in scores]


# --------------------------------------------------------------------------------------------------------- stage
def _example(sol: dict[str, Any], labels: list[bool], labeller: str, scores: list[float] | None) -> PRMExample:
    return PRMExample(id=f"{sol['id']}:{labeller}", problem_id=sol["problem_id"], prompt=sol["question"],
                      completions=list(sol["steps"]), labels=labels, labeller=labeller, label_source="model",
                      step_scores=scores, final_correct=sol["final_correct"], source=sol["source"])


def run(ctx: Any) -> dict[str, Any]:
    t0 = time.time()
    cfg: Config = ctx.config.stage(STAGE)
    cands = candidate_solutions(ctx, cfg)
    sols, balanced = select_solutions(cands, cfg, ctx.config.seed)
    examples: list[PRMExample] = []
    judge_rows: dict[str, dict[str, Any]] = {}
    failures: Counter[str] = Counter()
    missing = [src for src in cfg.sources if not ctx.store.is_done(src)]
    if missing:
        log.warning("prm: no solutions from %s (those stages have not run in this run folder)", ", ".join(missing))
    summary: dict[str, Any] = {
        "sources_missing": missing,
        "candidates": len(cands), "solutions": len(sols), "balanced": balanced,
        "by_source": dict(Counter(s["source"] for s in sols)),
        "final_correct": sum(s["final_correct"] for s in sols),
        "final_incorrect": sum(not s["final_correct"] for s in sols),
        "steps": sum(len(s["steps"]) for s in sols),
    }
    if "judge" in cfg.labellers:
        judge_rows = {r["key"]: r for r in ctx.store.iter_partial(STAGE, "judgements") if r["reason"] != "request_failed"}
        todo = [(s["id"], s["question"], s["steps"], s["final_correct"]) for s in sols if s["id"] not in judge_rows]
        with ctx.store.writer(STAGE, "judgements") as w:
            judge_rows.update(asyncio.run(judge_steps(
                ctx.backend("judge"), todo, cfg, make_sampling(ctx, cfg.judge_sampling), on_result=w.write,
                show_progress=ctx.show_progress, ctx=ctx)))
        for s in sols:
            j = judge_rows.get(s["id"])
            if j is None or not j["ok"]:
                failures[(j or {}).get("reason") or "missing"] += 1
                continue
            conf = j["confidence"] if any(c is not None for c in j["confidence"]) else None
            examples.append(_example(s, [to_bool(x, cfg.neutral_as) for x in j["labels3"]], "judge", conf))
        summary["judge"] = {
            "model": ctx.backend("judge").model, "parse_failures": dict(failures),
            "parse_failure_rate": round(sum(failures.values()) / len(sols), 4) if sols else None,
            "labels3": dict(Counter(x for s in sols if (j := judge_rows.get(s["id"])) and j["ok"] for x in j["labels3"])),
        }
    rolls: dict[tuple[str, int], dict[str, Any]] = {}
    if "montecarlo" in cfg.labellers:
        mc_sols = sols if cfg.max_rollout_solutions is None else sols[: cfg.max_rollout_solutions]
        rolls = asyncio.run(_rollouts(ctx, cfg, mc_sols))
        n_mc = 0
        for s in mc_sols:
            got = mc_labels(s, rolls, cfg)
            if got is not None:
                examples.append(_example(s, got[0], "montecarlo", got[1]))
                n_mc += 1
        summary["montecarlo"] = {"solutions": n_mc, "rollouts_per_step": cfg.rollouts, "estimate": cfg.mc_estimate,
                                 "rollout_requests": sum(max(0, len(s["steps"]) - 1) for s in mc_sols if s["gold"])}
    for lab in cfg.labellers:
        rows = [e for e in examples if e.labeller == lab]
        flat = [x for e in rows for x in e.labels]
        summary.setdefault(lab, {}).update(
            rows=len(rows), step_labels={"correct": sum(flat), "incorrect": len(flat) - sum(flat)},
            solutions_with_error=sum(not all(e.labels) for e in rows))
    if {"judge", "montecarlo"} <= set(cfg.labellers):
        summary["judge_vs_montecarlo"] = compare_labellers(examples)
    examples.sort(key=lambda e: e.id)
    judgements = [judge_rows[s["id"]] | {"solution_id": s["id"]} for s in sols if s["id"] in judge_rows]
    sol_ids = {s["id"] for s in sols}
    rollouts = sorted((r for k, r in rolls.items() if k[0] in sol_ids), key=lambda r: (r["solution_id"], r["step"]))
    ctx.store.finish(STAGE, {"prm": [e.row() for e in examples], "judgements": judgements, "rollouts": rollouts},
                     summary, started=t0)
    return summary


def compare_labellers(examples: list[PRMExample]) -> dict[str, Any]:
    """Step-level agreement of the judge's labels with the Monte-Carlo labels on the solutions both labelled."""
    j = {e.id.rsplit(":", 1)[0]: e.labels for e in examples if e.labeller == "judge"}
    m = {e.id.rsplit(":", 1)[0]: e.labels for e in examples if e.labeller == "montecarlo"}
    common = sorted(set(j) & set(m))
    a = [x for k in common for x in m[k]]
    b = [x for k in common for x in j[k]]
    return {"solutions": len(common), "steps": len(a), "accuracy": accuracy(a, b), "kappa": cohen_kappa(a, b),
            "first_error": first_error_f1([m[k] for k in common], [j[k] for k in common])}


# --------------------------------------------------------------------------------------------------------- calibration
def load_labelled_steps(path: str | Path) -> list[dict[str, Any]]:
    """Human-labelled steps in PRM800K's stepwise-critique format (``.jsonl`` or ``.parquet``): one row per candidate
    step with ``instruction``, ``responses`` (accepted prefix), ``next_response``, ``rating`` (+1/0/-1/null),
    ``is_human_response``. Human-written steps without a rating count as +1; other unrated rows are skipped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        from ..store import read_parquet

        raw = list(enumerate(read_parquet(path), 1))
    else:
        raw = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        raw.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: invalid JSON: {e.msg}") from None
    rows = []
    for n, r in raw:
        for k in ("instruction", "responses", "next_response"):
            if k not in r:
                raise DataError(f"{path}:{n}: missing field {k!r} (expected PRM800K stepwise-critique rows)")
        rating = r.get("rating")
        if rating is None:
            if not r.get("is_human_response"):
                continue
            rating = 1
        if rating not in (-1, 0, 1):
            raise DataError(f"{path}:{n}: rating must be -1, 0, 1 or null, got {rating!r}")
        rows.append({"line": n, "instruction": r["instruction"], "prefix": list(r["responses"] or []),
                     "step": r["next_response"], "rating": int(rating)})
    return rows


def rating_label(rating: int) -> str:
    return {1: "correct", 0: "neutral", -1: "incorrect"}[rating]


def calibrate(
    backend: Backend, rows: list[dict[str, Any]], cfg: Config, sampling: Any = None, neutral_as: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run the step judge on labelled rows and compare with the human ratings.

    Each row becomes one judged solution: the accepted prefix plus the candidate step. The judge's label of the
    candidate step is compared with the rating (binary: -1 = incorrect, 0/+1 = correct, or 0 = ``neutral_as``), giving
    accuracy, per-class precision/recall, Cohen's kappa and a confusion table (3-way too when the judge says
    "neutral"). First-error-step F1 uses every step: the prefix steps' human labels come from their own rows (a prefix
    step without a rated row counts as correct) and the judge's labels of all steps. Judge answers that cannot be
    parsed are counted and left out of the figures."""
    neutral_as = neutral_as or cfg.neutral_as
    from ..backends import Sampling

    sampling = sampling or Sampling(temperature=0.0, max_tokens=1024)
    gold_of: dict[tuple[str, tuple[str, ...], str], int] = {}
    for r in rows:
        gold_of.setdefault((r["instruction"], tuple(r["prefix"]), r["step"]), r["rating"])
    items = [(str(i), r["instruction"], r["prefix"] + [r["step"]], None) for i, r in enumerate(rows)]
    judged = asyncio.run(judge_steps(backend, items, cfg, sampling, desc="calibrating", show_progress=show_progress))
    y_true, y_pred, true3, pred3, seq_true, seq_pred, preds = [], [], [], [], [], [], []
    failures: Counter[str] = Counter()
    for i, r in enumerate(rows):
        j = judged[str(i)]
        rec = {"line": r["line"], "rating": r["rating"], "ok": j["ok"], "reason": j["reason"], "judge_label": None}
        if not j["ok"]:
            failures[j["reason"]] += 1
            preds.append(rec)
            continue
        labs = j["labels3"]
        rec["judge_label"] = labs[-1]
        preds.append(rec)
        y_true.append(to_bool(rating_label(r["rating"]), neutral_as))
        y_pred.append(to_bool(labs[-1], neutral_as))
        true3.append(rating_label(r["rating"]))
        pred3.append(labs[-1])
        gold_steps = []
        for k, step in enumerate(r["prefix"]):
            rating = gold_of.get((r["instruction"], tuple(r["prefix"][:k]), step), 1)
            gold_steps.append(to_bool(rating_label(rating), neutral_as))
        gold_steps.append(y_true[-1])
        seq_true.append(gold_steps)
        seq_pred.append([to_bool(x, neutral_as) for x in labs])
    names = {True: "correct", False: "incorrect"}
    t_named = [names[x] for x in y_true]
    p_named = [names[x] for x in y_pred]
    report = {
        "rows": len(rows),
        "judged": len(y_true),
        "parse_failures": dict(failures),
        "neutral_as": neutral_as,
        "human_labels": dict(Counter(t_named)),
        "judge_labels": dict(Counter(p_named)),
        "accuracy": accuracy(t_named, p_named),
        "kappa": cohen_kappa(t_named, p_named),
        "per_class": per_class(t_named, p_named, ["correct", "incorrect"]),
        "confusion": confusion(t_named, p_named, ["correct", "incorrect"]),
        "first_error": first_error_f1(seq_true, seq_pred),
    }
    if "neutral" in pred3:
        report["confusion3"] = confusion(true3, pred3, list(LABELS3))
        report["accuracy3"] = accuracy(true3, pred3)
    report["predictions"] = preds
    return report
