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
import functools
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import prompts
from ..answers import StepsTally, extract_answer, split_steps
from ..backends import Request
from ..backends.base import Mapped
from ..errors import ConfigError, DataError
from ..records import Problem, SFTExample, Solution, Usage
from ..datafiles import expand_path, missing_data_hint, read_rows
from ..store import GroupReader
from ..types import StageContext, StepEnv, Step

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


def fewshot_exemplars(name_or_path: str) -> list[dict[str, str]]:
    """The exemplars of a few-shot file: ``{"exemplars": [{"question", "solution"}, ...]}``."""
    data = prompts.load_json(name_or_path)
    shots = data.get("exemplars") if isinstance(data, dict) else None
    where = prompts.prompt_path(name_or_path)
    if not isinstance(shots, list):
        raise ConfigError(f"{where}: a few-shot file needs an 'exemplars' list of {{question, solution}} objects")
    for i, ex in enumerate(shots, 1):
        for f in ("question", "solution"):
            if not isinstance(ex, dict) or not isinstance(ex.get(f), str):
                raise ConfigError(f"{where}: exemplar {i} has no {f!r} text")
    return shots


def _prefix(cfg: Config, math: bool) -> list[dict[str, str]]:
    """The messages before the question: system prompt and few-shot exemplars (the same for every problem of a kind)."""
    msgs = [{"role": "system", "content": prompts.load_text(cfg.prompts.solve_system)}]
    if cfg.fewshot:
        shots = fewshot_exemplars(cfg.prompts.fewshot_math if math else cfg.prompts.fewshot_gsm8k)
        for ex in shots[: cfg.fewshot]:
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


def prefixes(cfg: Config) -> dict[bool, list[dict[str, str]]]:
    """The system + few-shot messages of both kinds (MATH, GSM8k), rendered once (and their prompt files read before
    any request is sent)."""
    return {math: _prefix(cfg, math) for math in (False, True)}


async def solution_rows(env: StepEnv, item: tuple[Problem, Any], res: Any, drop_truncated: bool,
                        sampling: dict[str, Any]) -> list[dict[str, Any]]:
    """The Solution rows of one answered problem; ``item`` = (problem, gold answer or None).

    A generation step's row maker: it runs where the result arrives (this process, or a Ray worker with its own
    answer checker)."""
    p, gold = item
    rows = []
    if not res.ok:
        rows.append(Solution(problem_id=p.id, text="", verdict="failed", reason=f"request_failed: {res.error}",
                             model=env.model, sampling=sampling))
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
    ctx: StageContext, problems: Sequence[Problem], cfg: Config, stage: str, name: str = "solutions",
    task: str = "solve", desc: str = "solving", backend_role: str = "main",
    gold_of: Callable[[Problem], Any] | None = None, keys: Sequence[str] | None = None,
) -> GroupReader:
    """Solve ``problems`` k times each (one request with n = k), check the answers; every problem's k Solution rows
    are one record of ``stage/name``, keyed by problem id. Returns the reader of those records.

    ``gold_of(problem)`` gives the answer to check against (default: the problem's gold answer; None leaves the
    verdict ``unchecked``). ``keys``: the problems' ids in order, when ``problems`` is costly to read (see
    :attr:`evolkit.types.Step.keys`)."""
    sampling = ctx.sampling(cfg.sampling, n=cfg.k)
    gold_of = gold_of or (lambda p: p.gold_answer)
    pre = prefixes(cfg)

    def request(item: tuple[Problem, Any]) -> Request:
        return Request(build_messages(item[0], cfg, pre), sampling, task=task)

    items = Mapped(problems, lambda p: (p, gold_of(p)))  # built when asked: the problems may be read lazily
    step = Step(backend_role, items, key=lambda it: it[0].id, request=request,
                make_rows=functools.partial(solution_rows, drop_truncated=cfg.drop_truncated,
                                            sampling=sampling.as_dict()), desc=desc, keys=keys)
    return await ctx.generate(stage, name, step)


def load_open_domain(cfg: OpenDomainConfig, n: int, seed: int) -> list[SFTExample]:
    path = expand_path(cfg.path)
    if not path.exists():
        if cfg.required:
            raise DataError(f"{path}: open-domain file not found{missing_data_hint(cfg.path)} (set "
                            f"stages.sft.open_domain.path, or required: false)")
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


def sft_example(p: Problem, s: dict[str, Any]) -> SFTExample:
    """The SFT row of one correct solution (WizardMath Alpaca template + TRL prompt/completion columns)."""
    template = prompts.wizardmath_template("default")
    text = s["text"].strip()
    return SFTExample(
        id=f"{p.id}:{s['sample_index']}", problem_id=p.id, kind="math", source=p.source, instruction=p.question,
        output=text, prompt=template.replace("{instruction}", p.question), completion=" " + text,
        gold_answer=p.gold_answer, model=s.get("model"), round=p.round,
    )


def sft_rows(problems: Iterable[Problem], solutions_of: Callable[[str], list[dict[str, Any]]], cfg: Config
             ) -> Iterable[SFTExample]:
    """The SFT rows: up to ``keep_per_problem`` correct solutions per problem, in problem order."""
    for p in problems:
        kept = 0
        for s in solutions_of(p.id):
            if s["verdict"] == "correct" and kept < cfg.keep_per_problem:
                kept += 1
                yield sft_example(p, s)


class Tally:
    """The sft summary's counts, accumulated row by row."""

    def __init__(self) -> None:
        self.samples = 0
        self.verdicts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.by_source: dict[str, dict[str, int]] = {}
        self.prompt_tokens = self.completion_tokens = 0
        self.steps = StepsTally()

    def add(self, s: dict[str, Any], source: str) -> None:
        self.samples += 1
        self.verdicts[s["verdict"]] += 1
        if s["verdict"] != "correct":
            self.reasons[(s.get("reason") or s["verdict"]).split(":")[0]] += 1
        d = self.by_source.setdefault(source, {"samples": 0, "correct": 0})
        d["samples"] += 1
        d["correct"] += s["verdict"] == "correct"
        usage = s.get("usage") or {}
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)
        if s["verdict"] != "failed":
            self.steps.add(source, s.get("steps"), s.get("text"))

    def summary(self) -> dict[str, Any]:
        return {"samples": self.samples, "verdicts": dict(self.verdicts), "drop_reasons": dict(self.reasons),
                "by_source": self.by_source, "tokens": {"prompt": self.prompt_tokens,
                                                        "completion": self.completion_tokens},
                "steps_per_solution": self.steps.as_dict(), "failed_items": self.verdicts.get("failed", 0)}


def run(ctx: StageContext) -> dict[str, Any]:
    t0 = time.time()
    cfg: Config = ctx.config.stage(STAGE)
    problems = ctx.seeds()
    if cfg.open_domain is not None:
        load_open_domain(cfg.open_domain, 0, ctx.config.seed)  # a missing or malformed file fails before any request
    reader = asyncio.run(solve_problems(ctx, problems, cfg, STAGE, desc="sft: solving seeds"))
    store = ctx.store
    sols, sft, dropped = store.sink(STAGE, "solutions"), store.sink(STAGE, "sft"), store.sink(STAGE, "dropped")
    tally = Tally()
    kept = with_kept = 0
    for p in problems:  # streamed from the seeds' Parquet file, each problem's rows from its shard record
        group = reader.get(p.id) or []
        n_kept = 0
        for s in group:
            sols.write(s)
            tally.add(s, p.source)
            if s["verdict"] != "correct":
                dropped.write(s)
            elif n_kept < cfg.keep_per_problem:
                n_kept += 1
                sft.write(sft_example(p, s).row())
        kept += n_kept
        with_kept += n_kept > 0
    reader.close()
    od_rows: list[SFTExample] = []
    if cfg.open_domain is not None:
        n_od = cfg.open_domain.n if cfg.open_domain.n is not None else round(cfg.open_domain.ratio * kept)
        od_rows = load_open_domain(cfg.open_domain, n_od, ctx.config.seed)
    for r in od_rows:
        sft.write(r.row())
    summary = tally.summary()
    summary.update(
        problems=len(problems), kept=kept, open_domain=len(od_rows), dropped=dropped.rows,
        problems_with_kept_solution=with_kept,
        open_domain_source=(cfg.open_domain.name if od_rows else None),
        open_domain_license=(cfg.open_domain.license if od_rows else None),
    )
    store.finish(STAGE, {"solutions": sols, "sft": sft, "dropped": dropped}, summary, started=t0)
    return summary
