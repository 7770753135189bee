"""IRM data (WizardMath instruction reward model): evolved variants of an instruction, ranked by a judge.

For each sampled instruction (seed problems, and evolved problems when the evolve stage ran) each evolver writes 2-4
variants (``variants_per_evolver``), as in the recipe, where two evolver models (Wizard-E and ChatGPT) each evolve every
instruction and the judge ranks all the variants together (4-8 per ranking with two evolvers). The evolvers are two
backends by default: the main one and ``evolver_backend`` (``ctx.backend("evolver2")``); each writes with the evolve
stage's prompts (``evolve`` style) or a plain "rewrite" prompt (``rewrite``, ``prompts/irm_rewrite.jinja``). Without a
second evolver model the stage stops with an error, unless ``allow_single_evolver: true`` (the summary and the card
then say that the rankings compare variants of one model). A variant's operation is drawn per evolver and instruction
(distinct within an evolver's variants while there are operations left).

A judge (``ctx.backend("judge")``) scores every variant from 1 to 10 on definition, precision and integrity and ranks
them, answering in JSON (``prompts/judge_irm.jinja``). Position bias: variants carry letter ids assigned at random, are
shown in letter order and, with ``swap`` (default), judged a second time in the reverse order; with
``require_consistent`` (default) only rankings that both orders agree on are kept. Unparseable answers are recorded with
a reason and counted.

Outputs (``irm/``):

* ``irm_rankings``: :class:`~evolkit.records.IRMRanking` rows (variants with rank and mean criterion scores);
* ``irm_pairs``: :class:`~evolkit.records.IRMPair` rows, every ordered pair of a ranking as chosen/rejected text
  (TRL ``RewardTrainer``'s implicit-prompt preference format);
* ``variants`` and ``judgements``: every generated variant and every judge answer with its parse status (resume state
  and audit trail).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from itertools import combinations
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import filters, prompts
from ..backends import Request
from ..errors import ConfigError
from ..judging import JudgeParseError, as_score, find_json_object, irm_schema, norm_id
from ..metrics import ranking_pair_agreement
from ..records import IRMPair, IRMRanking, Problem, RankedVariant
from ..types import StageContext, Step, StepEnv

STAGE = "irm"
CRITERIA = ("definition", "precision", "integrity")
OPERATIONS = ("add_constraints", "concretize", "increase_reasoning", "simplify", "new_easier")
LETTERS = "ABCDEFGH"
SCORE_RANGE = (1.0, 10.0)


class Evolver(BaseModel):
    """One evolver: a prompt style on a backend role. ``name`` is what records show (default ``style:model``)."""

    model_config = ConfigDict(extra="forbid")
    style: Literal["evolve", "rewrite"] = "evolve"
    role: Literal["main", "evolver2"] = "main"
    name: str | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Instructions to sample (None: all of them).
    n_instructions: int | None = Field(50, gt=0)
    #: Where instructions come from: seed problems and/or the evolve stage's problems (used when that stage ran).
    sources: list[Literal["seeds", "evol"]] = ["seeds", "evol"]
    #: Variants each evolver writes per instruction (each with one operation).
    variants_per_evolver: int = Field(2, ge=1, le=4)
    operations: list[str] = list(OPERATIONS)
    #: None: the main backend and evolver_backend, both with the evolve stage's prompts.
    evolvers: list[Evolver] | None = None
    #: Run with one evolver model (the recipe uses two); the summary and the card say so.
    allow_single_evolver: bool = False
    #: Keep an instruction only when its surviving variants come from at least this many evolver models.
    min_evolvers: int = Field(2, ge=1)
    #: Judge a second time with the variants in reverse order (position bias).
    swap: bool = True
    #: Keep only rankings that both orders agree on (with swap).
    require_consistent: bool = True
    #: Pair margin for TRL's RewardTrainer: none (0.0) or the normalised gap of the judge's total scores.
    pair_margin: Literal["none", "scores"] = "none"
    judge_prompt: str = "judge_irm"
    #: Ask the judge for JSON that follows the answer's schema where the backend can constrain its output (OpenAI
    #: response_format, vLLM structured outputs, llama-server); the tolerant parser reads the answer either way.
    structured_output: bool = True
    rewrite_prompt: str = "irm_rewrite"
    judge_sampling: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1024}
    evolve_sampling: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------------- evolvers
def resolve_evolvers(ctx: StageContext, cfg: Config) -> list[Evolver]:
    if cfg.evolvers:
        evs = list(cfg.evolvers)
    elif ctx.config.evolver_backend is not None:
        evs = [Evolver(style="evolve", role="main"), Evolver(style="evolve", role="evolver2")]
    else:
        evs = [Evolver(style="evolve", role="main")]
    out = []
    for e in evs:
        if e.role == "evolver2" and ctx.config.evolver_backend is None:
            raise ConfigError("stages.irm.evolvers: role 'evolver2' needs evolver_backend in the config")
        model = ctx.backend_config(e.role).model
        name = e.name or f"{e.style}:{model}"
        if not e.name and any(o.name == name for o in out):
            name = f"{name}@{e.role}"  # two backends serving a model of the same name
        out.append(e.model_copy(update={"name": name}))
    names = [e.name for e in out]
    if len(out) * cfg.variants_per_evolver > len(LETTERS):
        raise ConfigError(f"stages.irm: {len(out)} evolvers x {cfg.variants_per_evolver} variants is more than the "
                          f"{len(LETTERS)} a ranking can hold; lower variants_per_evolver")
    if len(set(names)) != len(names):
        raise ConfigError(f"stages.irm.evolvers: evolver names must differ (got {names})")
    if len(evolver_models(ctx, out)) < 2 and not cfg.allow_single_evolver:
        raise ConfigError(
            "stages.irm: the IRM data needs variants from two evolver models (the recipe's Wizard-E and ChatGPT), "
            f"but every evolver here is {ctx.backend_config(out[0].role).model!r}: set evolver_backend to a second "
            "model, or stages.irm.allow_single_evolver: true to rank variants of one model (the card says so)")
    return out


def evolver_models(ctx: StageContext, evolvers: list[Evolver]) -> set[str]:
    """The distinct backends behind the evolvers (a model served twice is still one evolver model)."""
    out = set()
    for e in evolvers:
        b = ctx.backend_config(e.role)
        out.add(f"{b.kind}:{b.model}")
    return out


def _evolve_config(ctx: StageContext) -> Any:
    import evolkit.stages.evolve as evolve

    return ctx.config.stages.get("evolve") or evolve.Config()


def evolver_request(problem: Problem, op: str, evolver: Evolver, ctx: StageContext, cfg: Config) -> Request:
    """The request that makes one variant of ``problem`` with ``op`` in ``evolver``'s style.

    ``evolve``: the evolve stage's own operation prompts and system prompt (its config, ``stages.evolve``, or its
    defaults), as the evolve stage sends them; ``rewrite``: ``prompts/irm_rewrite.jinja``, no system prompt."""
    sampling = ctx.sampling(cfg.evolve_sampling)
    if evolver.style == "evolve":
        ev = _evolve_config(ctx)
        if op not in ev.operations:
            raise ConfigError(f"stages.irm.operations: unknown operation {op!r} (known: {', '.join(ev.operations)})")
        msgs = [{"role": "system", "content": prompts.load_text(ev.system_prompt)}] if ev.system_prompt else []
        msgs.append({"role": "user", "content": prompts.render(ev.operations[op].prompt, question=problem.question)})
        return Request(msgs, sampling, task=f"evolve:{op}")
    text = prompts.render(cfg.rewrite_prompt, question=problem.question, operation=op)
    return Request([{"role": "user", "content": text}], sampling, task=f"evolve:{op}")


def variant_check(ctx: StageContext) -> Any:
    """The evolve stage's text rules (empty, refusal, prompt artifact, a solution instead of a problem, length, no
    information gain) for variants, as that stage's config sets them."""
    el = _evolve_config(ctx).elimination
    return filters.Eliminator(el.artifacts, el.refusals, el.min_chars, el.max_chars, el.parent_similarity,
                              solution_markers=el.solution_markers)


# --------------------------------------------------------------------------------------------------------- judging
def _rng(*parts: Any) -> random.Random:
    return random.Random(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:16], 16))


def judge_request(original: str, variants: dict[str, str], order: list[str], cfg: Config) -> Request:
    text = prompts.render(
        cfg.judge_prompt, original=original, ids=order, variants=[{"id": v, "text": variants[v]} for v in order]
    )
    return Request([{"role": "user", "content": text}], task="judge:irm",
                   json_schema=irm_schema(list(order)) if cfg.structured_output else None)


def parse_irm_judgement(text: str, ids: list[str]) -> dict[str, Any]:
    """``{"ranking": [ids best first], "scores": {id: {criterion: float|None}}, "notes": [...]}`` or JudgeParseError.

    The ranking must name every id exactly once (ids are matched case-insensitively, ``[B]``/``Version B`` accepted).
    Without a usable ranking but with complete scores, the ranking is derived from the total scores (noted)."""
    obj = find_json_object(text)
    by_norm = {norm_id(i): i for i in ids}
    notes: list[str] = []

    def ident(x: Any) -> str:
        k = norm_id(x)
        if k not in by_norm:
            raise JudgeParseError("unknown_id", f"{x!r} is not one of {ids}")
        return by_norm[k]

    raw_scores = obj.get("scores")
    scores: dict[str, dict[str, float | None]] = {i: {c: None for c in CRITERIA} for i in ids}
    if isinstance(raw_scores, dict):
        for k, v in raw_scores.items():
            vid = ident(k)
            if not isinstance(v, dict):
                raise JudgeParseError("bad_score", f"scores of {k!r} are not an object")
            lower = {str(c).strip().lower(): val for c, val in v.items()}
            for c in CRITERIA:
                if c in lower:
                    scores[vid][c] = as_score(lower[c], *SCORE_RANGE)
    elif raw_scores is not None:
        raise JudgeParseError("bad_score", "'scores' is not an object")
    complete = all(scores[i][c] is not None for i in ids for c in CRITERIA)
    if not complete:
        notes.append("incomplete_scores")

    ranking = obj.get("ranking")
    if isinstance(ranking, list) and ranking:
        order = [ident(x) for x in ranking]
        if len(set(order)) != len(order):
            raise JudgeParseError("duplicate_id", f"ranking {ranking} names an id twice")
        if set(order) != set(ids):
            raise JudgeParseError("incomplete_ranking", f"ranking {ranking} misses {sorted(set(ids) - set(order))}")
    elif complete:
        order = sorted(ids, key=lambda i: (-sum(scores[i].values()), i))  # type: ignore[arg-type]
        notes.append("ranking_from_scores")
    else:
        raise JudgeParseError("missing_ranking", "no 'ranking' list and no complete scores")
    return {"ranking": order, "scores": scores, "notes": notes}


def _total(s: dict[str, float | None]) -> float | None:
    vals = [v for v in s.values() if v is not None]
    return sum(vals) if len(vals) == len(CRITERIA) else None


def judge_confidence(row: dict[str, Any]) -> float | None:
    """How sure the judge is of an IRM ranking row, in [0, 1]: the mean over adjacent ranks of the total-score gap
    (summed over the three criteria) divided by one criterion's full range (9), capped at 1, times the agreement of
    the two judged orders (1.0 without swap). None without complete scores."""
    vs = sorted(row["variants"], key=lambda v: v["rank"])
    totals = [_total({c: v.get(c) for c in CRITERIA}) for v in vs]
    if len(vs) < 2 or any(t is None for t in totals):
        return None
    span = SCORE_RANGE[1] - SCORE_RANGE[0]
    gaps = [min(1.0, max(0.0, (totals[i] - totals[i + 1]) / span)) for i in range(len(totals) - 1)]  # type: ignore[operator]
    agreement = row.get("agreement")
    return round(sum(gaps) / len(gaps) * (1.0 if agreement is None else agreement), 4)


def pairs_from_ranking(row: dict[str, Any], margin: str = "none") -> list[IRMPair]:
    """Every pair of variants with different ranks: the better one is ``chosen`` (ties give no pair)."""
    vs = sorted(row["variants"], key=lambda v: (v["rank"], v["id"]))
    out = []
    for a, b in combinations(vs, 2):
        if a["rank"] == b["rank"]:
            continue
        m = 0.0
        if margin == "scores":
            ta, tb = _total({c: a.get(c) for c in CRITERIA}), _total({c: b.get(c) for c in CRITERIA})
            if ta is not None and tb is not None:
                m = round(max(0.0, (ta - tb) / (len(CRITERIA) * (SCORE_RANGE[1] - SCORE_RANGE[0]))), 4)
        out.append(IRMPair(id=f"{row['id']}:{a['id']}>{b['id']}", ranking_id=row["id"], chosen=a["text"],
                           rejected=b["text"], margin=m, label_source=row.get("label_source", "model")))
    return out


# --------------------------------------------------------------------------------------------------------- inputs
def instructions(ctx: StageContext, cfg: Config) -> list[dict[str, Any]]:
    """The sampled instructions as Problem rows (evolved ones with round/operation/source from the evolve stage)."""
    pool: list[Problem] = []
    if "seeds" in cfg.sources:
        pool += ctx.seeds()
    if "evol" in cfg.sources and ctx.store.has_output("evolve", "problems"):
        pool += [Problem.model_validate(r) for r in ctx.store.iter_output("evolve", "problems")]
    seen: set[str] = set()
    uniq = [p for p in pool if not (p.id in seen or seen.add(p.id))]  # type: ignore[func-returns-value]
    if cfg.n_instructions is not None and len(uniq) > cfg.n_instructions:
        rng = random.Random(ctx.config.seed)
        keep = set(p.id for p in rng.sample(uniq, cfg.n_instructions))
        uniq = [p for p in uniq if p.id in keep]
    return [p.row() for p in uniq]


def plan_variants(problem_id: str, evolvers: list[Evolver], cfg: Config, seed: int) -> list[tuple[int, Evolver, str]]:
    """(slot, evolver, operation) per variant: ``variants_per_evolver`` for each evolver, operations shuffled per
    instruction and evolver (distinct while there are operations left)."""
    ops0 = list(cfg.operations)
    if not ops0:
        raise ConfigError("stages.irm.operations: give at least one operation")
    out = []
    for e_i, ev in enumerate(evolvers):
        ops = list(ops0)
        _rng(seed, "ops", problem_id, ev.name).shuffle(ops)
        for j in range(cfg.variants_per_evolver):
            out.append((e_i * cfg.variants_per_evolver + j, ev, ops[j % len(ops)]))
    return out


# --------------------------------------------------------------------------------------------------------- stage
def variant_rows(env: StepEnv, item: tuple[str, str, int, str, str, Any], res: Any) -> list[dict[str, Any]]:
    """The row of one variant request (a generation step's row maker); ``item`` = (instruction id, instruction, slot,
    evolver name, operation, text rules)."""
    pid, question, slot, evolver, op, rules = item
    row = {"instruction_id": pid, "slot": slot, "evolver": evolver, "operation": op, "model": env.model,
           "text": None, "status": "ok", "reason": None}
    if not res.ok or not res.completions:
        row.update(status="failed", reason=f"request_failed: {res.error or 'no completion'}")
    else:
        comp = res.completions[0]
        row["text"] = filters.clean_evolved(comp.text)
        bad = rules.check(row["text"], question)
        if bad:
            row.update(status="dropped", reason=f"{bad[0]}: {bad[1]}")
        elif comp.finish_reason == "length":
            row.update(status="dropped", reason="truncated: cut off by the token limit")
    return [row]


async def _make_variants(ctx: StageContext, cfg: Config, probs: list[Problem], evolvers: list[Evolver]
                         ) -> list[dict[str, Any]]:
    rules = variant_check(ctx)
    by_role: dict[str, list[tuple[Problem, int, Evolver, str]]] = {}
    for p in probs:
        for slot, ev, op in plan_variants(p.id, evolvers, cfg, ctx.config.seed):
            by_role.setdefault(ev.role, []).append((p, slot, ev, op))
    out: list[dict[str, Any]] = []
    for role, items in by_role.items():
        by_key = {(p.id, slot): (p, slot, ev, op) for p, slot, ev, op in items}
        step = Step(
            role, [(p.id, p.question, slot, ev.name, op, rules) for p, slot, ev, op in items],
            key=lambda it: [it[0], it[2]],
            request=lambda it: evolver_request(by_key[(it[0], it[2])][0], it[4], by_key[(it[0], it[2])][2], ctx, cfg),
            make_rows=variant_rows, desc="irm: evolving")
        reader = await ctx.generate(STAGE, "variants", step)
        for p, slot, _ev, _op in items:
            out += reader.get([p.id, slot]) or []
        reader.close()
    return out


def _usable_variants(p: Problem, rows: list[dict[str, Any]], min_evolvers: int
                     ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """letter -> variant row for one instruction (duplicates and copies of the original dropped), or a reason."""
    norm = lambda s: re.sub(r"\s+", " ", s.strip().lower())  # noqa: E731
    seen = {norm(p.question)}
    kept = []
    for r in sorted(rows, key=lambda r: r["slot"]):
        if r["status"] != "ok":
            continue
        k = norm(r["text"])
        if k in seen:
            continue
        seen.add(k)
        kept.append(r)
    if len(kept) < 2:
        return {}, "fewer_than_2_variants"
    if len({r["evolver"] for r in kept}) < min_evolvers:
        return {}, f"fewer_than_{min_evolvers}_evolvers"
    letters = list(LETTERS[: len(kept)])
    _rng("letters", p.id).shuffle(letters)
    return {letters[i]: r for i, r in enumerate(kept)}, None


def judgement_rows(env: StepEnv, item: tuple[str, str, list[str], dict[str, int]], res: Any) -> list[dict[str, Any]]:
    """The row of one judge request (a generation step's row maker); ``item`` = (instruction id, order name, ids in
    the order shown, letter -> variant slot)."""
    pid, name, o, variant_of = item
    row: dict[str, Any] = {"instruction_id": pid, "order": name, "shown": o, "variant_of": variant_of,
                           "judge": env.model, "raw": None, "ok": False, "reason": None, "detail": None,
                           "ranking": None, "scores": None, "notes": []}
    if not res.ok or not res.completions:
        row.update(reason="request_failed", detail=res.error or "no completion")
    else:
        row["raw"] = res.completions[0].text
        try:
            parsed = parse_irm_judgement(row["raw"], o)
            row.update(ok=True, ranking=parsed["ranking"], scores=parsed["scores"], notes=parsed["notes"])
        except JudgeParseError as e:
            row.update(reason=e.reason, detail=str(e))
    return [row]


async def _judge(ctx: StageContext, cfg: Config, work: list[tuple[Problem, dict[str, dict[str, Any]]]]
                 ) -> list[dict[str, Any]]:
    sampling = ctx.sampling(cfg.judge_sampling)
    items = []
    texts_of: dict[str, tuple[str, dict[str, str]]] = {}
    for p, letters in work:
        order = sorted(letters)
        orders = {"forward": order} | ({"reverse": order[::-1]} if cfg.swap else {})
        texts_of[p.id] = (p.question, {k: v["text"] for k, v in letters.items()})
        for name, o in orders.items():
            items.append((p.id, name, o, {k: v["slot"] for k, v in letters.items()}))

    def request(it: tuple[str, str, list[str], dict[str, int]]) -> Request:
        question, texts = texts_of[it[0]]
        req = judge_request(question, texts, it[2], cfg)
        req.sampling = sampling
        return req

    step = Step("judge", items, key=lambda it: [it[0], it[1]], request=request, make_rows=judgement_rows,
                desc="irm: judging")
    reader = await ctx.generate(STAGE, "judgements", step)
    out = [r for it in items for r in (reader.get([it[0], it[1]]) or [])]
    reader.close()
    return out


def _ranking_row(p: Problem, letters: dict[str, dict[str, Any]], js: list[dict[str, Any]], judge: str) -> IRMRanking:
    """One ranking from the (one or two) judgements: the forward ranking; criterion scores averaged over both."""
    base = next(j for j in js if j["order"] == "forward") if any(j["order"] == "forward" for j in js) else js[0]
    rank_of = {vid: n + 1 for n, vid in enumerate(base["ranking"])}
    agreement = None
    others = [j for j in js if j is not base]
    if others:
        agreement = ranking_pair_agreement(rank_of, {vid: n + 1 for n, vid in enumerate(others[0]["ranking"])})
    variants = []
    for letter, v in letters.items():
        crit = {}
        for c in CRITERIA:
            vals = [j["scores"][letter][c] for j in js if j["scores"] and j["scores"][letter][c] is not None]
            crit[c] = round(sum(vals) / len(vals), 3) if vals else None
        variants.append(RankedVariant(id=letter, text=v["text"], evolver=v["evolver"], operation=v["operation"],
                                      rank=rank_of[letter], **crit))
    variants.sort(key=lambda v: v.rank)
    consistent = len(js) == 2 and js[0]["ranking"] == js[1]["ranking"]
    return IRMRanking(id=f"irm:{p.id}", instruction_id=p.id, instruction=p.question, variants=variants, judge=judge,
                      consistent=consistent if len(js) == 2 else True, label_source="model", agreement=agreement)


def run(ctx: StageContext) -> dict[str, Any]:
    t0 = time.time()
    cfg: Config = ctx.config.stage(STAGE)
    evolvers = resolve_evolvers(ctx, cfg)
    n_models = len(evolver_models(ctx, evolvers))
    rows = instructions(ctx, cfg)
    probs = [Problem.model_validate(r) for r in rows]
    variants = asyncio.run(_make_variants(ctx, cfg, probs, evolvers))
    by_instr: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        by_instr.setdefault(v["instruction_id"], []).append(v)

    skipped: dict[str, int] = {}
    work = []
    for p in probs:
        letters, why = _usable_variants(p, by_instr.get(p.id, []), min(cfg.min_evolvers, len(evolvers)))
        if why:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            work.append((p, letters))
    judgements = asyncio.run(_judge(ctx, cfg, work))
    by_j: dict[str, list[dict[str, Any]]] = {}
    for j in judgements:
        by_j.setdefault(j["instruction_id"], []).append(j)

    failures: dict[str, int] = {}
    for j in judgements:
        if not j["ok"]:
            failures[j["reason"]] = failures.get(j["reason"], 0) + 1
    judge_model = ctx.backend("judge").model
    rankings: list[IRMRanking] = []
    excluded: dict[str, int] = {}
    for p, letters in work:
        js = sorted(by_j.get(p.id, []), key=lambda j: j["order"])
        ok = [j for j in js if j["ok"]]
        expected = 2 if cfg.swap else 1
        if len(ok) < expected and (cfg.require_consistent or not ok):
            excluded["judge_parse_failure"] = excluded.get("judge_parse_failure", 0) + 1
            continue
        row = _ranking_row(p, letters, ok, judge_model)
        if cfg.swap and cfg.require_consistent and not row.consistent:
            excluded["inconsistent_order"] = excluded.get("inconsistent_order", 0) + 1
            continue
        rankings.append(row)
    rankings.sort(key=lambda r: r.id)
    ranking_rows = [r.row() for r in rankings]
    pairs = [pr.row() for r in ranking_rows for pr in pairs_from_ranking(r, cfg.pair_margin)]
    pairs.sort(key=lambda r: r["id"])

    wins: dict[str, int] = {}
    by_evolver: dict[str, int] = {}
    for r in ranking_rows:
        for v in r["variants"]:
            by_evolver[v["evolver"]] = by_evolver.get(v["evolver"], 0) + 1
            if v["rank"] == 1:
                wins[v["evolver"]] = wins.get(v["evolver"], 0) + 1
    variant_status: dict[str, int] = {}
    for v in variants:
        variant_status[v["status"]] = variant_status.get(v["status"], 0) + 1
    swapped = [r for r in ranking_rows if r["agreement"] is not None]
    summary = {
        "instructions": len(probs),
        "sources_missing": [] if "evol" not in cfg.sources or ctx.store.is_done("evolve") else ["evolve"],
        "evolvers": [e.name for e in evolvers],
        "evolver_models": n_models,
        "single_evolver": n_models < 2,
        "variants_per_evolver": cfg.variants_per_evolver,
        "failed_items": variant_status.get("failed", 0) + failures.get("request_failed", 0),
        "variants": variant_status,
        "instructions_skipped": skipped,
        "judge": judge_model,
        "judgements": len(judgements),
        "parse_failures": failures,
        "parse_failure_rate": round(sum(failures.values()) / len(judgements), 4) if judgements else None,
        "excluded": excluded,
        "rankings": len(ranking_rows),
        "pairs": len(pairs),
        "variants_by_evolver": by_evolver,
        "rank1_by_evolver": wins,
        "mean_order_agreement": round(sum(r["agreement"] for r in swapped) / len(swapped), 4) if swapped else None,
    }
    ctx.store.finish(
        STAGE,
        {"irm_rankings": ranking_rows, "irm_pairs": pairs,
         "variants": sorted(variants, key=lambda r: (r["instruction_id"], r["slot"])),
         "judgements": sorted(judgements, key=lambda r: (r["instruction_id"], r["order"]))},
        summary, started=t0,
    )
    return summary
