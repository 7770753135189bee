"""PRM data (WizardMath process reward model): solutions split into steps, each step labelled correct or incorrect.

Whose solutions are labelled (``sources``): in the recipe the PRM learns to judge the steps of the model being trained,
so the default source is ``policy``: the policy (``policy_backend``: a checkpoint saved by ``trainers.sft`` through the
transformers or vLLM backend, or a server serving it) solves seed and evolved problems ``policy_k`` times each in the
format it was trained on (the WizardMath Alpaca prompt), and those solutions are labelled. The teacher's solutions
(``sft``: ``sft/solutions``; ``evolve``: the evolve stage's solutions) stay available as sources. Both correct and
incorrect solutions are taken (``balance``: as many of each final verdict) so step labels are not all "correct". Steps
are the solutions' ``steps`` (``evolkit.answers.split_steps``). Two labellers, either or both:

* ``judge``: a judge model (``ctx.backend("judge")``, ``prompts/judge_prm.jinja``) labels every step ``correct``,
  ``incorrect`` or (``allow_neutral``) ``neutral`` in a JSON answer; answers are parsed robustly and failures recorded
  with a reason. ``neutral`` becomes ``neutral_as`` (default correct, as in PRM800K's usual binarisation).
* ``montecarlo`` (Math-Shepherd): from the prefix ending at each step, ``rollouts`` completions are sampled by the model
  that wrote the solution (the policy for policy solutions, else the main backend; ``prompts/prm_rollout.jinja``, task
  ``rollout``); their final answers are checked against the (pseudo-)gold answer
  with the answer checker. A step's score is the share of rollouts that reach the gold answer; its label is
  ``score > 0`` ("hard" estimation) or ``score >= soft_threshold`` ("soft"). The last step's label is the solution's own
  verdict (its "rollout" is the solution itself).

Outputs (``prm/``): ``prm`` (:class:`~evolkit.records.PRMExample`, TRL's stepwise-supervision format: ``prompt``,
``completions`` = steps, ``labels`` = booleans; one row per solution and labeller, naming the model that wrote the
solution and the model that labelled it), ``policy_solutions`` (the policy's samples), ``judgements`` (raw judge
answers, 3-way step labels, parse status) and ``rollouts`` (per step: samples, hits).

Calibration (:func:`calibrate`, ``evolkit calibrate prm``) runs the same step judge on human-labelled steps in PRM800K's
stepwise-critique format and reports agreement.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import prompts
from ..answers import extract_answer, split_steps
from ..backends import Backend, Request, Sampling
from ..backends.base import LazyRequests
from ..errors import DataError
from ..judging import JudgeParseError, find_json_object, prm_schema, strip_step_marker, to_bool
from ..metrics import accuracy, cohen_kappa, confusion, first_error_f1, per_class
from ..progress import Progress
from ..records import PRMExample, Problem
from ..types import StageContext, Step, StepEnv
import evolkit.stages.sft as sft_stage

STAGE = "prm"
log = logging.getLogger("evolkit.prm")
LABELS3 = ("correct", "incorrect", "neutral")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Whose solutions are labelled: the policy's own (``policy_backend``; the recipe), the teacher's SFT-stage
    #: solutions, the evolve stage's.
    sources: list[Literal["policy", "sft", "evolve"]] = ["policy"]
    #: policy: which problems it solves (seeds and the evolve stage's kept problems), how many, how often.
    policy_problems: list[Literal["seeds", "evol"]] = ["seeds", "evol"]
    policy_max_problems: int | None = Field(200, gt=0)
    policy_k: int = Field(4, gt=0)
    #: policy: the prompt the policy was trained on (sent as raw text: the WizardMath Alpaca template), or ``chat``.
    policy_format: Literal["alpaca", "chat"] = "alpaca"
    policy_prompt: str = "wizardmath_default"
    policy_sampling: dict[str, Any] = {"temperature": 0.7}
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
    #: Ask the judge for JSON that follows the answer's schema where the backend can constrain its output.
    structured_output: bool = True
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
def judge_request(problem: str, steps: list[str], cfg: Config, sampling: Sampling | None = None) -> Request:
    text = prompts.render(cfg.judge_prompt, problem=problem, steps=[strip_step_marker(s) for s in steps],
                          allow_neutral=cfg.allow_neutral)
    schema = prm_schema(len(steps), cfg.allow_neutral) if cfg.structured_output else None
    return Request([{"role": "user", "content": text}], sampling or Sampling(), task="judge:prm", json_schema=schema)


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


def judgement_rows(env: StepEnv, item: tuple[str, int, bool], res: Any) -> list[dict[str, Any]]:
    """The judgement row of one judged solution (a generation step's row maker); ``item`` = (key, number of steps,
    allow_neutral)."""
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


def _judged_rows(env: StepEnv, item: tuple[str, str, list[str]], res: Any, allow_neutral: bool
                 ) -> list[dict[str, Any]]:
    return judgement_rows(env, (item[0], len(item[2]), allow_neutral), res)


def judge_step(items: list[tuple[str, str, list[str]]], cfg: Config, sampling: Sampling,
               desc: str = "prm: judging steps") -> Step:
    """The judge's generation step over ``(key, problem, steps)`` items."""
    return Step("judge", items, key=lambda it: it[0],
                request=lambda it: judge_request(it[1], it[2], cfg, sampling),
                make_rows=functools.partial(_judged_rows, allow_neutral=cfg.allow_neutral), desc=desc)


async def judge_steps(backend: Backend, items: list[tuple[str, str, list[str]]], cfg: Config, sampling: Sampling,
                      desc: str = "prm: judging steps", show_progress: bool = True) -> dict[str, dict[str, Any]]:
    """Judge ``(key, problem, steps)`` items on a backend outside a run (calibration); ``key -> judgement row``."""
    step = judge_step(items, cfg, sampling, desc)
    env = StepEnv(backend.model)
    out: dict[str, dict[str, Any]] = {}
    with Progress(len(items), desc, enabled=show_progress) as bar:
        stream = backend.stream_rows(LazyRequests(items, step.request), items, step.make_rows, env)
        async for _i, _res, rows in stream:
            for row in rows:
                out[row["key"]] = row
                bar.update(1, failed=int(not row["ok"]))
    return out


# --------------------------------------------------------------------------------------------------------- inputs
def _problem_index(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """problem id -> {question, gold, round, operation, source} from the seeds and any evolve output with questions."""
    idx: dict[str, dict[str, Any]] = {}
    for p in ctx.seeds():
        idx[p.id] = {"question": p.question, "gold": p.gold_answer, "round": p.round, "operation": p.operation,
                     "origin": p.source}
    for name in ("problems", "evol"):
        if not ctx.store.has_output("evolve", name):
            continue
        for r in ctx.store.iter_output("evolve", name):
            idx.setdefault(r["id"], {"question": r["question"], "gold": r.get("pseudo_gold", r.get("gold_answer")),
                                     "round": r.get("round", 0), "operation": r.get("operation"),
                                     "origin": r.get("source") or "evol"})
    return idx


def policy_problems(ctx: StageContext, cfg: Config) -> list[Problem]:
    """The problems the policy solves: seeds and kept evolved problems (with their pseudo-gold), sampled."""
    pool: list[Problem] = []
    if "seeds" in cfg.policy_problems:
        pool += ctx.seeds()
    if "evol" in cfg.policy_problems and ctx.store.has_output("evolve", "problems"):
        pool += [Problem.model_validate(r) for r in ctx.store.iter_output("evolve", "problems")]
    if cfg.policy_max_problems is not None and len(pool) > cfg.policy_max_problems:
        keep = set(p.id for p in random.Random(ctx.config.seed).sample(pool, cfg.policy_max_problems))
        pool = [p for p in pool if p.id in keep]
    return pool


async def sample_policy(ctx: StageContext, cfg: Config) -> list[dict[str, Any]]:
    """The policy's own solutions (``policy_k`` per problem), checked against the (pseudo-)gold answers."""
    problems = policy_problems(ctx, cfg)
    sampling = ctx.sampling(cfg.policy_sampling, n=cfg.policy_k)
    template = prompts.load_text(cfg.policy_prompt) if cfg.policy_format == "alpaca" else None

    def request(item: tuple[Problem, Any]) -> Request:
        q = item[0].question
        if template is not None:
            return Request([{"role": "user", "content": template.replace("{instruction}", q)}], sampling,
                           task="solve", raw=True)
        return Request([{"role": "user", "content": q}], sampling, task="solve")

    step = Step("policy", [(p, p.gold_answer) for p in problems], key=lambda it: it[0].id, request=request,
                make_rows=functools.partial(sft_stage.solution_rows, drop_truncated=True,
                                            sampling=sampling.as_dict()), desc="prm: sampling the policy")
    reader = await ctx.generate(STAGE, "policy_solutions", step)
    rows = list(reader.rows(p.id for p in problems))
    reader.close()
    return rows


def candidate_solutions(ctx: StageContext, cfg: Config, policy_rows: list[dict[str, Any]] | None = None
                        ) -> list[dict[str, Any]]:
    """Usable solutions of the configured sources: id, source, problem info, steps, final_correct, model."""
    idx = _problem_index(ctx)
    pools: list[tuple[str, str, Any]] = []
    if "policy" in cfg.sources and policy_rows is not None:
        pools.append(("policy", "policy_solutions", policy_rows))
    if "sft" in cfg.sources and ctx.store.has_output("sft", "solutions"):
        pools.append(("sft", "solutions", ctx.store.iter_output("sft", "solutions")))
    if "evolve" in cfg.sources:
        for name in sorted(ctx.store.outputs().get("evolve", {})):
            if "solution" not in name:
                continue
            pools.append(("evolve", name, ctx.store.iter_output("evolve", name)))
    out, seen = [], set()
    for source, name, rows in pools:
        for s in rows:
            if not {"problem_id", "text", "verdict"} <= set(s):
                break
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
def rollout_request(problem: str, prefix: list[str], cfg: Config, sampling: Any) -> Request:
    text = prompts.render(cfg.rollout_prompt, problem=problem, steps=prefix)
    return Request([{"role": "user", "content": text}], sampling, task="rollout")


async def rollout_rows(env: StepEnv, item: tuple[dict[str, Any], int], res: Any) -> list[dict[str, Any]]:
    """The row of one rollout request (a generation step's row maker); ``item`` = (solution, step)."""
    sol, step = item
    gold = sol["gold"]
    row = {"solution_id": sol["id"], "step": step, "ok": res.ok, "samples": 0, "hits": 0, "answers": [],
           "reason": res.error, "model": env.model}
    if res.ok:
        answers = [extract_answer(c.text) for c in res.completions]
        checks = await env.checker().acheck_many([(a, gold) for a in answers])
        row.update(samples=len(answers), hits=sum(bool(c.equal) for c in checks), answers=answers)
    return [row]


def rollout_role(sol: dict[str, Any]) -> str:
    """Rollouts continue a solution with the model that wrote it: the policy's with the policy."""
    return "policy" if sol["source"] == "policy" else "main"


async def _rollouts(ctx: StageContext, cfg: Config, sols: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    sampling = ctx.sampling(cfg.rollout_sampling, n=cfg.rollouts)
    by_role: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for s in sols:
        if s["gold"] is None:
            continue
        for i in range(1, len(s["steps"])):  # the last step's "rollout" is the solution itself
            by_role.setdefault(rollout_role(s), []).append((s, i))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for role, items in by_role.items():
        step = Step(role, items, key=lambda it: [it[0]["id"], it[1]],
                    request=lambda it: rollout_request(it[0]["question"], it[0]["steps"][: it[1]], cfg, sampling),
                    make_rows=rollout_rows, desc="prm: rollouts")
        reader = await ctx.generate(STAGE, "rollouts", step)
        for s, i in items:
            for r in reader.get([s["id"], i]) or []:
                out[(r["solution_id"], r["step"])] = r
        reader.close()
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
def _example(sol: dict[str, Any], labels: list[bool], labeller: str, scores: list[float] | None,
             labeller_model: str | None) -> PRMExample:
    return PRMExample(id=f"{sol['id']}:{labeller}", problem_id=sol["problem_id"], prompt=sol["question"],
                      completions=list(sol["steps"]), labels=labels, labeller=labeller, label_source="model",
                      step_scores=scores, final_correct=sol["final_correct"], source=sol["source"],
                      solution_model=sol.get("model"), labeller_model=labeller_model)


def run(ctx: StageContext) -> dict[str, Any]:
    t0 = time.time()
    cfg: Config = ctx.config.stage(STAGE)
    policy_rows: list[dict[str, Any]] | None = None
    policy_model = None
    if "policy" in cfg.sources:
        ctx.backend_config("policy")  # a clear error when no policy is configured, before anything is sent
        policy_rows = asyncio.run(sample_policy(ctx, cfg))
        policy_model = ctx.backend("policy").model
    cands = candidate_solutions(ctx, cfg, policy_rows)
    sols, balanced = select_solutions(cands, cfg, ctx.config.seed)
    examples: list[PRMExample] = []
    judge_rows: dict[str, dict[str, Any]] = {}
    failures: Counter[str] = Counter()
    missing = [src for src in cfg.sources if src != "policy" and not ctx.store.is_done(src)]
    if missing:
        log.warning("prm: no solutions from %s (those stages have not run in this run folder)", ", ".join(missing))
    summary: dict[str, Any] = {
        "solution_source": list(cfg.sources),
        "solution_model": sorted({s["model"] for s in sols if s.get("model")}),
        "policy_model": policy_model,
        "sources_missing": missing,
        "candidates": len(cands), "solutions": len(sols), "balanced": balanced,
        "by_source": dict(Counter(s["source"] for s in sols)),
        "final_correct": sum(s["final_correct"] for s in sols),
        "final_incorrect": sum(not s["final_correct"] for s in sols),
        "steps": sum(len(s["steps"]) for s in sols),
        "labeller_models": {},
    }
    if policy_rows is not None:
        summary["policy_samples"] = {"problems": len({r["problem_id"] for r in policy_rows}), "samples": len(policy_rows),
                                     "verdicts": dict(Counter(r["verdict"] for r in policy_rows))}
    failed_items = sum(r["verdict"] == "failed" for r in policy_rows or [])
    if "judge" in cfg.labellers:
        judge_model = ctx.backend("judge").model
        step = judge_step([(s["id"], s["question"], s["steps"]) for s in sols], cfg, ctx.sampling(cfg.judge_sampling))
        reader = asyncio.run(ctx.generate(STAGE, "judgements", step))
        for s in sols:
            j = (reader.get(s["id"]) or [None])[0]
            if j is None:
                continue
            judge_rows[s["id"]] = j
            if not j["ok"]:
                failures[j.get("reason") or "missing"] += 1
                continue
            conf = j["confidence"] if any(c is not None for c in j["confidence"]) else None
            examples.append(_example(s, [to_bool(x, cfg.neutral_as) for x in j["labels3"]], "judge", conf,
                                     j.get("judge") or judge_model))
        reader.close()
        failed_items += failures.get("request_failed", 0)
        summary["labeller_models"]["judge"] = judge_model
        summary["judge"] = {
            "model": judge_model, "parse_failures": dict(failures),
            "parse_failure_rate": round(sum(failures.values()) / len(sols), 4) if sols else None,
            "labels3": dict(Counter(x for s in sols if (j := judge_rows.get(s["id"])) and j["ok"] for x in j["labels3"])),
        }
    rolls: dict[tuple[str, int], dict[str, Any]] = {}
    if "montecarlo" in cfg.labellers:
        mc_sols = sols if cfg.max_rollout_solutions is None else sols[: cfg.max_rollout_solutions]
        rolls = asyncio.run(_rollouts(ctx, cfg, mc_sols))
        n_mc = 0
        models = set()
        for s in mc_sols:
            got = mc_labels(s, rolls, cfg)
            if got is not None:
                model = next((r.get("model") for (sid, _), r in rolls.items() if sid == s["id"]), None)
                model = model or ctx.backend(rollout_role(s)).model
                models.add(model)
                examples.append(_example(s, got[0], "montecarlo", got[1], model))
                n_mc += 1
        failed_items += sum(not r["ok"] for r in rolls.values())
        summary["labeller_models"]["montecarlo"] = ", ".join(sorted(models)) or None
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
    summary["failed_items"] = failed_items
    examples.sort(key=lambda e: e.id)
    judgements = [judge_rows[s["id"]] | {"solution_id": s["id"]} for s in sols if s["id"] in judge_rows]
    sol_ids = {s["id"] for s in sols}
    rollouts = sorted((r for k, r in rolls.items() if k[0] in sol_ids), key=lambda r: (r["solution_id"], r["step"]))
    outputs: dict[str, Any] = {"prm": [e.row() for e in examples], "judgements": judgements, "rollouts": rollouts}
    if policy_rows is not None:
        outputs["policy_solutions"] = policy_rows
    ctx.store.finish(STAGE, outputs, summary, started=t0)
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
    from ..datafiles import read_rows

    path = Path(path)
    rows = []
    for n, r in read_rows(path):  # errors name the file and line (missing, empty, not JSON, not UTF-8 ...)
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
    if not rows:
        raise DataError(f"{path}: no labelled steps (every row is unrated and not human-written)")
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
    items = [(str(i), r["instruction"], r["prefix"] + [r["step"]]) for i, r in enumerate(rows)]
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
