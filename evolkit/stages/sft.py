"""SFT-data stage (WizardMath step 1): the teacher re-solves the seeds step by step; only verified answers are kept.

For each seed problem the teacher is asked ``k`` times (one request with ``n = k``) with a system prompt and few-shot
exemplars (GSM8k 8-shot or Minerva 4-shot, rewritten into numbered steps). Each answer is extracted and checked against the
gold answer with the answer checker; wrong, missing and failed answers are dropped with their reason kept. An optional
open-domain mix (any instruction/response set, e.g. dolly open_qa) is added at a configured ratio. Outputs:

* ``sft/solutions``: every sampled solution with verdict and reason (PRM and evolution use them too);
* ``sft/sft``: the kept rows in the WizardMath Alpaca format and as TRL prompt/completion columns;
* ``sft/dropped``: the dropped samples and why.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import prompts
from ..answers import extract_answer, split_steps
from ..backends import Request, Sampling
from ..errors import DataError
from ..executors import Step, run_step
from ..progress import Progress
from ..records import Problem, SFTExample, Solution, Usage
from ..seeds import expand_path, read_rows

STAGE = "sft"


class OpenDomainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "{data}/dolly_open_qa/dolly_open_qa.jsonl"
    #: Open-domain rows as a share of the math rows kept (WizardMath: ~1.5k of ~15k -> 0.1).
    ratio: float = Field(0.1, ge=0)
    n: int | None = Field(None, ge=0, description="exact count; overrides ratio")
    instruction_field: str = "instruction"
    response_field: str = "response"
    context_field: str | None = "context"
    name: str = "dolly_open_qa"
    license: str = "CC-BY-SA-3.0"
    #: When the file is missing: fail (default) or skip the mix with a warning.
    required: bool = True


class Prompts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    solve_system: str = "solve_system"
    solve_user: str = "solve_user"
    fewshot_gsm8k: str = "fewshot_gsm8k"
    fewshot_math: str = "fewshot_math"
    alpaca: str = "wizardmath_default"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Samples per problem.
    k: int = Field(1, gt=0)
    #: Correct solutions kept per problem for the SFT set (the rest stay in ``solutions``).
    keep_per_problem: int = Field(1, gt=0)
    #: Few-shot exemplars per request (0 = zero-shot); GSM8k problems get GSM8k ones, MATH problems Minerva ones.
    fewshot: int = Field(2, ge=0, le=8)
    sampling: dict[str, Any] = {}
    open_domain: OpenDomainConfig | None = None
    prompts: Prompts = Prompts()
    #: Solutions cut by the token limit count as dropped ("truncated") even if an answer was extracted.
    drop_truncated: bool = True
    style: Literal["steps"] = "steps"


def _prefix(cfg: Config, math: bool) -> list[dict[str, str]]:
    """The messages before the question: system prompt and few-shot exemplars (the same for every problem of a kind)."""
    msgs = [{"role": "system", "content": prompts.load_text(cfg.prompts.solve_system)}]
    if cfg.fewshot:
        shots = prompts.load_json(cfg.prompts.fewshot_math if math else cfg.prompts.fewshot_gsm8k)
        for ex in shots["exemplars"][: cfg.fewshot]:
            msgs.append({"role": "user", "content": prompts.render(cfg.prompts.solve_user, question=ex["question"])})
            msgs.append({"role": "assistant", "content": ex["solution"]})
    return msgs


def build_messages(problem: Problem, cfg: Config, _prefixes: dict[bool, list[dict[str, str]]] | None = None
                   ) -> list[dict[str, str]]:
    """The chat messages that ask the teacher to solve ``problem``. ``_prefixes`` (a dict kept by the caller over many
    problems) holds the rendered system + few-shot part once per kind, so its strings are shared, not re-rendered and
    re-stored per problem (tens of thousands of requests are built at once)."""
    math = problem.source == "math"
    if _prefixes is None:
        prefix = _prefix(cfg, math)
    else:
        prefix = _prefixes.get(math)
        if prefix is None:
            prefix = _prefixes[math] = _prefix(cfg, math)
    msgs = [dict(m) for m in prefix]
    msgs.append({"role": "user", "content": prompts.render(cfg.prompts.solve_user, question=problem.question)})
    return msgs


def sampling_for(ctx: Any, cfg: Config, n: int) -> Sampling:
    base = ctx.config.sampling.model_dump()
    base.update(cfg.sampling)
    return Sampling(
        temperature=base["temperature"], top_p=base["top_p"], max_tokens=base["max_tokens"], n=n,
        stop=tuple(base.get("stop") or ()), seed=base.get("seed"),
    )


async def solution_rows(env: Any, item: tuple[Problem, Any, bool, dict[str, Any]], res: Any) -> list[dict[str, Any]]:
    """The Solution rows of one answered problem: ``item`` = (problem, gold, drop_truncated, sampling dict).

    A generation step's row maker (:mod:`evolkit.executors`): it runs where the result arrives (this process, or a
    Ray worker with its own answer checker)."""
    p, gold, drop_truncated, sampling = item
    rows = []
    if not res.ok:
        rows.append(Solution(problem_id=p.id, text="", verdict="failed", reason=res.error, model=env.model,
                             sampling=sampling))
    else:
        answers = [extract_answer(c.text) for c in res.completions]
        checks = await env.checker().acheck_many([(a, gold) for a in answers]) if gold is not None else None
        for j, c in enumerate(res.completions):
            a = answers[j]
            if a is None:
                verdict, reason = "no_answer", "no final answer found"
            elif checks is None:
                verdict, reason = "unchecked", None
            elif checks[j].equal:
                verdict, reason = "correct", None
            else:
                verdict, reason = "incorrect", f"{checks[j].reason}: got {a!r}, expected {gold!r}"
            if drop_truncated and c.finish_reason == "length" and verdict == "correct":
                verdict, reason = "incorrect", "truncated at the token limit"
            rows.append(Solution(
                problem_id=p.id, sample_index=j, text=c.text, steps=split_steps(c.text), answer=a,
                verdict=verdict, reason=reason, model=env.model, sampling=sampling,
                usage=Usage(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens),
                finish_reason=c.finish_reason,
            ))
    return [r.row() for r in rows]


async def solve_problems(
    ctx: Any, problems: list[Problem], cfg: Config, stage: str, name: str = "solutions", task: str = "solve",
    desc: str = "solving", backend_role: str = "main", gold_of: Any = None,
) -> list[dict[str, Any]]:
    """Solve ``problems`` k times each, check answers, append Solution rows to ``stage/name``; resumable by problem id.

    Returns all solution rows (earlier sessions' and this one's). ``gold_of(problem)`` gives the answer to check
    against (default: the problem's gold answer; None leaves the verdict ``unchecked``).
    """
    store = ctx.store
    # Done = has a row that is not a failure: failed requests are tried again on resume.
    done = {r["problem_id"] for r in store.iter_partial(stage, name) if r["verdict"] != "failed"}
    todo = [p for p in problems if p.id not in done]
    sampling = sampling_for(ctx, cfg, cfg.k)
    gold_of = gold_of or (lambda p: p.gold_answer)
    sampling_d = sampling.as_dict()
    golds = [gold_of(p) for p in todo]
    prefixes: dict[bool, list[dict[str, str]]] = {}
    reqs = [
        Request(build_messages(p, cfg, prefixes), sampling, task=task, meta={"question": p.question, "gold": g})
        for p, g in zip(todo, golds)
    ]
    step = Step(backend_role, reqs, [(p, g, cfg.drop_truncated, sampling_d) for p, g in zip(todo, golds)],
                solution_rows)
    with store.writer(stage, name) as w, Progress(len(todo), desc, enabled=ctx.show_progress) as bar:
        async for _i, res, rows in run_step(ctx, step):
            for r in rows:
                w.write(r)
            bar.update(1, failed=int(not res.ok))
    order = {p.id: n for n, p in enumerate(problems)}
    rows = [r for r in store.iter_partial(stage, name) if r["problem_id"] in order]
    # Keep the last session's rows per problem (a failed item re-run replaces its failure), in seed order.
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        latest[(r["problem_id"], r["sample_index"])] = r
    return sorted(latest.values(), key=lambda r: (order[r["problem_id"]], r["sample_index"]))


def load_open_domain(cfg: OpenDomainConfig, n: int, seed: int) -> list[SFTExample]:
    path = expand_path(cfg.path)
    if not path.exists():
        if cfg.required:
            raise DataError(f"{path}: open-domain file not found (set stages.sft.open_domain.path, or required: false)")
        return []
    rows = []
    for line, r in read_rows(path):
        for f in (cfg.instruction_field, cfg.response_field):
            if not isinstance(r.get(f), str) or not r[f].strip():
                raise DataError(f"{path}:{line}: missing or empty field {f!r}")
        rows.append((line, r))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(rows, min(n, len(rows))), key=lambda x: x[0])
    template = prompts.wizardmath_template("default")
    out = []
    for line, r in chosen:
        ctx_text = (r.get(cfg.context_field) or "").strip() if cfg.context_field else ""
        instruction = r[cfg.instruction_field].strip()
        full = f"{instruction}\n\n{ctx_text}" if ctx_text else instruction
        rid = str(r.get("id") or f"{cfg.name}-{line}")
        out.append(SFTExample(
            id=f"{cfg.name}:{rid}", problem_id=rid, kind="open_domain", source=cfg.name, instruction=instruction,
            input=ctx_text, output=r[cfg.response_field].strip(), prompt=template.replace("{instruction}", full),
            completion=" " + r[cfg.response_field].strip(), model=None,
        ))
    return out


def sft_rows(problems: list[Problem], solutions: list[dict[str, Any]], cfg: Config) -> list[SFTExample]:
    template = prompts.wizardmath_template("default")
    by_problem: dict[str, Problem] = {p.id: p for p in problems}
    kept: dict[str, int] = {}
    out = []
    for s in solutions:
        if s["verdict"] != "correct":
            continue
        pid = s["problem_id"]
        if kept.get(pid, 0) >= cfg.keep_per_problem:
            continue
        kept[pid] = kept.get(pid, 0) + 1
        p = by_problem[pid]
        text = s["text"].strip()
        out.append(SFTExample(
            id=f"{pid}:{s['sample_index']}", problem_id=pid, kind="math", source=p.source, instruction=p.question,
            output=text, prompt=template.replace("{instruction}", p.question), completion=" " + text,
            gold_answer=p.gold_answer, model=s.get("model"), round=p.round,
        ))
    return out


def summarize(solutions: list[dict[str, Any]], problems: list[Problem]) -> dict[str, Any]:
    verdicts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    by_source: dict[str, dict[str, int]] = {}
    src = {p.id: p.source for p in problems}
    pt = ct = 0
    for s in solutions:
        verdicts[s["verdict"]] = verdicts.get(s["verdict"], 0) + 1
        if s["verdict"] != "correct":
            key = (s.get("reason") or s["verdict"]).split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        d = by_source.setdefault(src.get(s["problem_id"], "?"), {"samples": 0, "correct": 0})
        d["samples"] += 1
        d["correct"] += s["verdict"] == "correct"
        pt += (s.get("usage") or {}).get("prompt_tokens", 0)
        ct += (s.get("usage") or {}).get("completion_tokens", 0)
    return {"samples": len(solutions), "verdicts": verdicts, "drop_reasons": reasons, "by_source": by_source,
            "tokens": {"prompt": pt, "completion": ct}}


def run(ctx: Any) -> dict[str, Any]:
    t0 = time.time()
    cfg: Config = ctx.config.stage(STAGE)
    problems = ctx.seeds()
    solutions = asyncio.run(solve_problems(ctx, problems, cfg, STAGE, desc="sft: solving seeds"))
    math_rows = sft_rows(problems, solutions, cfg)
    od_rows: list[SFTExample] = []
    if cfg.open_domain is not None:
        n_od = cfg.open_domain.n if cfg.open_domain.n is not None else round(cfg.open_domain.ratio * len(math_rows))
        od_rows = load_open_domain(cfg.open_domain, n_od, ctx.config.seed)
    dropped = [s for s in solutions if s["verdict"] != "correct"]
    summary = summarize(solutions, problems)
    summary.update(
        problems=len(problems), kept=len(math_rows), open_domain=len(od_rows), dropped=len(dropped),
        problems_with_kept_solution=len({r.problem_id for r in math_rows}),
        open_domain_source=(cfg.open_domain.name if od_rows else None),
        open_domain_license=(cfg.open_domain.license if od_rows else None),
    )
    ctx.store.finish(
        STAGE,
        {"solutions": solutions, "sft": [r.row() for r in math_rows + od_rows], "dropped": dropped},
        summary,
        started=t0,
    )
    return summary
