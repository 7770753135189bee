"""Math Evol-Instruct (WizardMath step 2): grow the seeds in rounds of upward and downward evolution.

Each round takes a pool of parents (the previous round's survivors, the seeds, or everything so far), asks the evolver
model to rewrite each chosen parent with an operation (a prompt file: upward ``add_constraints``, ``concretize``,
``increase_reasoning``; downward ``simplify``, ``new_easier``; users add or override operations), and keeps a child only
when it passes every check, in this order (each elimination is counted by reason, see :mod:`evolkit.filters`):

1. text rules: request failed, empty, refusal, leftover prompt artifact, a solution written instead of the problem,
   length out of bounds, no information gain (same or near-identical text as the parent);
2. decontamination against benchmark test problems (exact, shared 13-grams, MinHash near-duplicates);
3. dedup over the whole pool across rounds (exact normalised text, MinHash LSH near-duplicates; the earlier item wins);
4. optionally an LLM check that the rewrite is a real new problem (``elimination.llm_check``);
5. answers: the teacher solves the child ``k`` times; the majority answer (clustered with the answer checker, not as
   strings) is the pseudo-gold and its share the agreement; a child whose samples hold no final answer is dropped
   (``no_answer``), one below ``min_agreement`` is dropped or flagged (``low_agreement``).

Growth schedule
---------------
"Growth" is the pool (seeds + every evolved problem kept) divided by the number of seeds ``S``. A round's planned size is
``children_per_parent x`` the planned size of its pool (``seeds``: S; ``previous``: the previous round's plan, S for
round 1; ``all``: S + all earlier plans). The default schedule is two waves of four rounds::

    round  pool      children/parent  planned kept   planned pool
      1    seeds         0.675          0.675 S         1.675 S
      2    previous      1.0            0.675 S         2.350 S
      3    previous      1.0            0.675 S         3.025 S
      4    previous      1.0            0.675 S         3.700 S
      5    seeds         0.675          0.675 S         4.375 S
      6    previous      1.0            0.675 S         5.050 S
      7    previous      1.0            0.675 S         5.725 S
      8    previous      1.0            0.675 S         6.400 S

so 8 x 0.675 S = 5.4 S evolved problems are kept and the pool grows 6.4x (WizardMath: 15k seeds -> 96k). Two waves keep
lineages at most four evolutions deep, and every round mixes upward (75%) and downward (25%) operations.

Each round aims at its planned size *after* elimination: it asks for ``planned / s`` children, ``s`` being the expected
survival rate (``expected_survival`` at first, then the share that survived in earlier rounds), spread over the actual
parents (the fractional part of children-per-parent is drawn with the seeded RNG), and when the survivors fall short of
the plan by more than ``topup_tolerance`` it runs up to ``max_topups`` extra passes for the difference. The summary, the
terminal table and ``evolve/growth.png`` report planned and achieved sizes per round.

Resume: every evolution, check and solution is appended to shards as it arrives (``evolve/roundNN_*``), keyed by a
deterministic child id (round, parent id, operation, child index). The plan of each round and pass is drawn from an RNG
seeded with (seed, round, pass) and from results that are themselves deterministic, so a killed run re-plans exactly the
same children, sends only the missing requests and ends with the same pool as an uninterrupted run.

Memory: nothing of a child stays in memory once it is decided but a few bytes. A pass's plan is a set of arrays (parent
position, operation, child index, evolver); children, their texts and their answers are read back from the shards when
needed and go through the filters and the vote in chunks; every decision (kept or eliminated) is one line in a scratch
file (``evolve/.work/``, rebuilt by every session, removed when the stage finishes) and the outputs are written from it
in their final order. Each round's kept problems (the next rounds' parents) are a scratch Parquet file read a row group
at a time. What grows with the pool is the dedup index (:class:`evolkit.filters.Deduper`: ~300 bytes an item plus its
key string; the MinHash signatures go to a temporary file).

Outputs (``evolve/``): ``problems`` (evolved :class:`~evolkit.records.Problem` rows with lineage and pseudo-gold),
``evol`` (:class:`~evolkit.records.EvolExample`), ``solutions`` (every sample of the kept problems, verdict against the
pseudo-gold), ``sft_evolved`` (the evolved problems' solutions that agree with the pseudo-gold, as SFT rows),
``eliminated`` (every child that was dropped, with reason, detail and the matching item), ``summary.json``,
``growth.png`` and ``difficulty.png``.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import json
import logging
import math
import random
import re
import shutil
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import filters, prompts
from ..answers import StepsTally, extract_answer, majority_answer, split_steps
from ..backends import Request
from ..backends.base import Mapped, Subseq
from ..errors import ConfigError
from ..judging import yes_no, yes_no_schema
from ..records import EvolExample, Problem
from ..datafiles import expand_path
from ..store import GroupReader, ParquetSink, ParquetTable, key_digest
from ..types import StageContext, Step, StepEnv
import evolkit.stages.sft as sft_stage

STAGE = "evolve"
log = logging.getLogger("evolkit.evolve")


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


class OperationConfig(BaseModel):
    """An evolution operation: its prompt file (name in evolkit/prompts or a path) and its direction."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    direction: Literal["upward", "downward"] | None = None


BUILTIN_OPERATIONS: dict[str, OperationConfig] = {
    "add_constraints": OperationConfig(prompt="evolve_add_constraints", direction="upward"),
    "concretize": OperationConfig(prompt="evolve_concretize", direction="upward"),
    "increase_reasoning": OperationConfig(prompt="evolve_increase_reasoning", direction="upward"),
    "simplify": OperationConfig(prompt="evolve_simplify", direction="downward"),
    "new_easier": OperationConfig(prompt="evolve_new_easier", direction="downward"),
}

#: Upward 75%, downward 25%.
DEFAULT_WEIGHTS: dict[str, float] = {
    "add_constraints": 1.0, "concretize": 1.0, "increase_reasoning": 1.0, "simplify": 0.5, "new_easier": 0.5,
}


class RoundConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Which problems are evolved: the previous round's survivors (the seeds in round 1), the seeds, or the whole pool.
    pool: Literal["previous", "seeds", "all"] = "previous"
    #: Operation name -> relative weight.
    operations: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: Kept children per parent that the plan aims at (fractions allowed).
    children_per_parent: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _weights(self) -> RoundConfig:
        if not self.operations or any(w < 0 for w in self.operations.values()) or sum(self.operations.values()) <= 0:
            raise ValueError("operations: give at least one operation with a positive weight (no negative weights)")
        return self


def default_schedule() -> list[RoundConfig]:
    """Two waves of four rounds reaching 6.4x growth (see the module docstring for the arithmetic)."""
    out = []
    for r in range(1, 9):
        wave_start = r in (1, 5)
        out.append(RoundConfig(pool="seeds" if wave_start else "previous",
                               children_per_parent=0.675 if wave_start else 1.0))
    return out


class EliminationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Regular expressions (case-insensitive) of leftover prompt text; a match eliminates the child.
    artifacts: list[str] = Field(default_factory=lambda: list(filters.DEFAULT_ARTIFACTS))
    refusals: list[str] = Field(default_factory=lambda: list(filters.DEFAULT_REFUSALS))
    #: A solution or answer written instead of (or after) the problem ("The answer is", "Step 1:", \boxed{} ...).
    solution_markers: list[str] = Field(default_factory=lambda: list(filters.DEFAULT_SOLUTION_MARKERS))
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(4000, gt=0)
    #: Word-3-gram Jaccard similarity to the parent at or above which a child brings no information gain.
    parent_similarity: float = Field(0.9, gt=0, le=1)
    #: Also ask the main model whether each child is a real new problem (one short request per surviving child).
    llm_check: bool = False
    llm_check_prompt: str = "check_info_gain"
    #: Ask for ``{"answer": "yes"|"no"}`` where the backend can constrain its output (a plain Yes/No is read too).
    structured_output: bool = True

    @field_validator("artifacts", "refusals", "solution_markers")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"entry {i} ({p!r}) is not a regular expression: {e}") from None
        return patterns


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: MinHash-estimated Jaccard similarity (word 3-grams) at or above which two problems are near-duplicates;
    #: null turns near-dedup off (exact dedup on normalised text always runs).
    near_threshold: float | None = Field(0.85, gt=0, le=1)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: int = Field(3, ge=1, le=10)


class DecontamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    #: Benchmark test files (.jsonl/.json/.parquet with a question/problem field); ``{data}`` = the shared data folder.
    test_files: list[str] = Field(default_factory=lambda: [
        "{data}/gsm8k/test.jsonl", "{data}/math/test.jsonl", "{data}/math/math500_test.jsonl",
    ])
    #: A missing test file is an error when true; otherwise it is skipped with a warning (and named in the summary).
    required: bool = False
    ngram: int = Field(13, ge=3)
    #: Shared n-grams needed for a match.
    min_shared: int = Field(1, ge=1)
    #: Test problems shorter than ``ngram`` tokens match when contained whole, if at least this long.
    min_tokens: int = Field(8, ge=1)
    #: n-grams found in this many distinct test problems are boilerplate and ignored (0: keep all).
    ignore_common: int = Field(3, ge=0)
    #: Near copies: estimated share of a test problem's word 3-grams found in the candidate (containment; needs the
    #: test problem's numbers to appear too); null turns the near check off.
    near_threshold: float | None = Field(0.7, gt=0, le=1)
    num_perm: int = Field(128, ge=16, le=1024)
    #: Also count (not remove) the seeds that match a test problem.
    check_seeds: bool = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: list[RoundConfig] = Field(default_factory=default_schedule)
    #: Operation definitions: the built-ins plus any given here (a partial entry overrides a built-in's prompt only).
    operations: dict[str, OperationConfig] = {}
    system_prompt: str | None = "evolve_system"
    #: Sampling of the evolver (merged over the run's sampling).
    sampling: dict[str, Any] = {"temperature": 0.7}
    #: Share of children written by the second evolver (``evolver_backend`` in the run config), when there is one.
    evolver2_share: float = Field(0.5, ge=0, le=1)
    #: Share of requested children expected to survive all checks (first round; later rounds use the observed share).
    expected_survival: float = Field(0.85, gt=0, le=1)
    adapt_survival: bool = True
    #: The survival estimate never goes below this: at most 1/floor children are asked for per planned survivor.
    survival_floor: float = Field(0.25, gt=0, le=1)
    max_topups: int = Field(2, ge=0)
    topup_tolerance: float = Field(0.02, ge=0, le=1)
    #: Upper bound on children requested per parent in one round (all passes together).
    max_children_per_parent: float = Field(8.0, gt=0)
    #: An evolution cut off by the token limit is eliminated ("truncated"): its problem text is unfinished.
    drop_truncated: bool = True
    #: Teacher samples per evolved problem (majority vote).
    k: int = Field(4, gt=0)
    #: Share of the k samples (failed, truncated and answerless ones included) that must agree on the pseudo-gold.
    min_agreement: float = Field(0.5, ge=0, le=1)
    #: A pseudo-gold needs at least this many agreeing answers (one answer agreeing with itself proves nothing).
    min_agreeing: int = Field(2, ge=1)
    low_agreement: Literal["drop", "flag"] = "drop"
    #: Sampling of the answering teacher (merged over the sft stage's and the run's sampling).
    answer_sampling: dict[str, Any] = {}
    #: Few-shot exemplars when answering evolved problems (default: the sft stage's setting).
    answer_fewshot: int | None = Field(None, ge=0, le=8)
    elimination: EliminationConfig = EliminationConfig()
    dedup: DedupConfig = DedupConfig()
    decontamination: DecontamConfig = DecontamConfig()
    #: RNG seed of the plans (default: the run's seed).
    seed: int | None = None
    plots: bool = True

    @model_validator(mode="after")
    def _ops(self) -> Config:
        if self.min_agreeing > self.k:
            raise ValueError(f"min_agreeing ({self.min_agreeing}) is more than k ({self.k}): no evolved problem could "
                             f"get a pseudo-gold; raise k or lower min_agreeing")
        merged: dict[str, OperationConfig] = {k: v.model_copy() for k, v in BUILTIN_OPERATIONS.items()}
        for name, op in self.operations.items():
            base = merged.get(name)
            if base is None:
                if not op.prompt or not op.direction:
                    raise ValueError(f"operations.{name}: a new operation needs both prompt and direction")
                merged[name] = op
            else:
                merged[name] = OperationConfig(prompt=op.prompt or base.prompt, direction=op.direction or base.direction)
        self.operations = merged
        for i, rc in enumerate(self.rounds):
            unknown = sorted(set(rc.operations) - set(merged))
            if unknown:
                raise ValueError(f"rounds.{i}.operations: unknown operation(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(merged)})")
        return self


def planned_sizes(rounds: list[RoundConfig], n_seeds: int) -> list[float]:
    """Planned kept problems per round (see the module docstring)."""
    plan: list[float] = []
    for r, rc in enumerate(rounds):
        if rc.pool == "seeds":
            base = float(n_seeds)
        elif rc.pool == "previous":
            base = plan[-1] if plan else float(n_seeds)
        else:
            base = n_seeds + sum(plan)
        plan.append(rc.children_per_parent * base)
    return plan


# --------------------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------------------


class Parent(NamedTuple):
    """What evolving a problem needs of it (a seed's or a kept problem's Parquet row, a few columns)."""

    id: str
    question: str
    root_id: str


#: The Parquet columns a :class:`Parent` (and its root source) is read from.
PARENT_COLUMNS = ["id", "question", "root_id"]


def _kept_parent(row: dict[str, Any]) -> tuple[Parent, str]:
    return Parent(row["id"], row["question"], row["root_id"]), row["root_source"]


@dataclass
class Child:
    id: str
    parent: Problem | Parent
    op: str
    index: int
    round: int
    pass_: int
    role: str
    #: The source of the seed this lineage starts from (gsm8k, math, ...): which few-shot exemplars answer it.
    root_source: str = "gsm8k"


def child_id(round_: int, parent_id: str, op: str, index: int) -> str:
    h = hashlib.blake2b(f"{round_}|{parent_id}|{op}|{index}".encode(), digest_size=8).hexdigest()
    return f"evol-r{round_}-{h}"


def plan_children(parents: list[Problem], n: int, weights: dict[str, float], rng: random.Random,
                  counters: dict[str, int], round_: int, pass_: int, evolver2_share: float) -> list[Child]:
    """``n`` children spread over ``parents`` (each gets n // P, a random n % P of them one more), operations drawn by
    weight, the evolver drawn by share; child indices continue per parent across passes (``counters``)."""
    if not parents or n <= 0:
        return []
    per, extra = divmod(n, len(parents))
    bonus = set(rng.sample(range(len(parents)), extra)) if extra else set()
    names = list(weights)
    w = [weights[k] for k in names]
    out = []
    for i, p in enumerate(parents):
        for _ in range(per + (i in bonus)):
            op = rng.choices(names, w)[0]
            role = "evolver2" if evolver2_share > 0 and rng.random() < evolver2_share else "main"
            idx = counters.get(p.id, 0)
            counters[p.id] = idx + 1
            out.append(Child(child_id(round_, p.id, op, idx), p, op, idx, round_, pass_, role))
    return out


ROLES = ("main", "evolver2")


@dataclass
class Plan:
    """The children of one pass as arrays (a few bytes each): parent position, operation, child index, evolver."""

    ops: list[str]
    parent: np.ndarray
    op: np.ndarray
    index: np.ndarray
    role: np.ndarray

    def __len__(self) -> int:
        return len(self.parent)


def plan_arrays(n_parents: int, n: int, weights: dict[str, float], rng: random.Random, counts: Any,
                evolver2_share: float) -> Plan:
    """The plan of :func:`plan_children` (the same draws from ``rng``, so the same children) as arrays; ``counts[i]``
    is the number of children parent ``i`` had before (updated)."""
    names = list(weights)
    if not n_parents or n <= 0:
        e = np.empty(0, dtype=np.int64)
        return Plan(names, e, e.astype(np.uint8), e, e.astype(np.uint8))
    per, extra = divmod(n, n_parents)
    bonus = np.zeros(n_parents, dtype=bool)
    if extra:
        bonus[rng.sample(range(n_parents), extra)] = True
    w = [weights[k] for k in names]
    code = {k: i for i, k in enumerate(names)}
    parent = np.empty(n, dtype=np.int64)
    op = np.empty(n, dtype=np.uint8)
    index = np.empty(n, dtype=np.int64)
    role = np.zeros(n, dtype=np.uint8)
    choices, draw = rng.choices, rng.random
    j = 0
    for i in range(n_parents):
        m = per + int(bonus[i])
        if not m:
            continue
        start = counts[i]
        for t in range(m):
            parent[j] = i
            op[j] = code[choices(names, w)[0]]
            role[j] = 1 if evolver2_share > 0 and draw() < evolver2_share else 0
            index[j] = start + t
            j += 1
        counts[i] = start + m
    return Plan(names, parent, op, index, role)


class SeedRef(NamedTuple):
    """A seed as the engine reads it (see :func:`run`)."""

    id: str
    question: str
    root_id: str
    source: str


SEED_COLUMNS = ["id", "question", "root_id", "source"]


class Segment:
    """A part of the pool: ``(problem, root source)`` pairs read lazily (the seeds, or one round's kept problems in id
    order) and the children each has had so far (child indices continue across passes and rounds)."""

    def __init__(self, items: Sequence[tuple[Parent | Problem, str]]):
        self.items = items
        self.counts = np.zeros(len(items), dtype=np.int64)


class Parents(Sequence):  # type: ignore[type-arg]
    """The parents of a round: segments one after the other, as one sequence of ``(problem, root source)``;
    :attr:`counts` reads and updates the children per parent."""

    def __init__(self, segments: list[Segment]):
        self.segments = segments
        self._starts = [0]
        for s in segments:
            self._starts.append(self._starts[-1] + len(s.items))
        self.counts = _Counts(self)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, i: int) -> tuple[Segment, int]:
        s = bisect.bisect_right(self._starts, i) - 1
        return self.segments[s], i - self._starts[s]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        seg, j = self.locate(int(i))
        return seg.items[j]


class _Counts:
    def __init__(self, parents: Parents):
        self.parents = parents

    def __getitem__(self, i: int) -> int:
        seg, j = self.parents.locate(i)
        return int(seg.counts[j])

    def __setitem__(self, i: int, v: int) -> None:
        seg, j = self.parents.locate(i)
        seg.counts[j] = v


class Children(Sequence):  # type: ignore[type-arg]
    """The children of a :class:`Plan`, each made when asked (children of one parent are next to each other, so the
    parent is read once for all of them)."""

    def __init__(self, parents: Sequence[tuple[Parent | Problem, str]], plan: Plan, round_: int, pass_: int):
        self.parents = parents
        self.plan = plan
        self.round = round_
        self.pass_ = pass_
        self._last: tuple[int, tuple[Parent | Problem, str]] | None = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        plan = self.plan
        pi = int(plan.parent[j])
        if self._last is None or self._last[0] != pi:
            self._last = (pi, self.parents[pi])
        p, root_source = self._last[1]
        op, idx = plan.ops[plan.op[j]], int(plan.index[j])
        return Child(child_id(self.round, p.id, op, idx), p, op, idx, self.round, self.pass_, ROLES[plan.role[j]],
                     root_source)


# --------------------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RoundStats:
    round: int
    pool: str
    parents: int = 0
    planned: float = 0.0
    requested: int = 0
    passes: int = 0
    kept: int = 0
    flagged: int = 0
    eliminated: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    contaminated: dict[str, int] = field(default_factory=dict)

    def count(self, d: dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1


def evolution_rows(env: StepEnv, child: Child, res: Any, sampling: dict[str, Any]) -> list[dict[str, Any]]:
    """The row of one evolution request (a generation step's row maker)."""
    comp = res.completions[0] if res.ok and res.completions else None
    return [{
        "id": child.id, "round": child.round, "pass": child.pass_, "parent_id": child.parent.id,
        "operation": child.op, "index": child.index, "role": child.role, "model": env.model,
        "sampling": dict(sampling),
        "text": comp.text if comp else None,
        "finish_reason": comp.finish_reason if comp else None,
        "error": res.error if not res.ok else (None if comp else "no completion"),
    }]


def check_rows(env: StepEnv, item: tuple[Child, str], res: Any) -> list[dict[str, Any]]:
    """The row of one information-gain check (a generation step's row maker); ``item`` = (child, its text)."""
    return [{"id": item[0].id, "reply": res.completions[0].text if res.ok and res.completions else None,
             "error": res.error}]


class Decisions:
    """Every child decided in this session, kept or eliminated, as one JSON line in the stage's scratch folder; in
    memory only each record's sort key (the child id's hash) and byte offset, per round. The outputs are written from
    here in their final order (round, then id) once every round is done."""

    def __init__(self, path: Path):
        from ..store import ShardWriter

        self.path = path
        self._w = ShardWriter(path, fsync_every=1 << 62)  # scratch: scrubbed like every file, never fsynced
        self._index: dict[tuple[str, int], tuple[array, array]] = {}
        self._f: Any = None

    def add(self, kind: str, round_: int, child: str, record: dict[str, Any]) -> None:
        keys, offs = self._index.setdefault((kind, round_), (array("Q"), array("q")))
        keys.append(int(child.rsplit("-", 1)[1], 16))  # ids of one round differ only in their hex hash
        offs.append(self._w.write(record))

    def count(self, kind: str, round_: int) -> int:
        return len(self._index.get((kind, round_), ((), ()))[0])

    def sorted(self, kind: str, round_: int) -> Iterator[dict[str, Any]]:
        """The records of ``kind`` in round ``round_``, by child id."""
        keys, offs = self._index.get((kind, round_), (array("Q"), array("q")))
        if not keys:
            return
        if self._f is None:
            self._f = open(self.path, "rb")
        order = np.argsort(np.frombuffer(keys, dtype=np.uint64), kind="stable")
        offsets = np.frombuffer(offs, dtype=np.int64)
        for o in order.tolist():
            self._f.seek(int(offsets[o]))
            yield json.loads(self._f.readline())

    def close(self) -> None:
        self._w.close()
        if self._f is not None:
            self._f.close()
            self._f = None


#: Children go through decontamination and dedup this many at a time (their texts and hashes are what is in memory).
FILTER_CHUNK = 2048
#: Answered children are voted on this many at a time.
VOTE_CHUNK = 512


class Engine:
    def __init__(self, ctx: StageContext, cfg: Config):
        self.ctx = ctx
        self.cfg = cfg
        self.store = ctx.store
        self.seed = cfg.seed if cfg.seed is not None else ctx.config.seed
        self.has_evolver2 = ctx.config.evolver_backend is not None
        self.eliminator = filters.Eliminator(
            cfg.elimination.artifacts, cfg.elimination.refusals, cfg.elimination.min_chars, cfg.elimination.max_chars,
            cfg.elimination.parent_similarity, solution_markers=cfg.elimination.solution_markers,
        )
        self.deduper = filters.Deduper(cfg.dedup.near_threshold, cfg.dedup.num_perm, cfg.dedup.shingle)
        self.decontam: filters.Decontaminator | None = None
        self.decontam_info: dict[str, Any] = {"enabled": cfg.decontamination.enabled}
        sft_cfg = ctx.config.stages.get("sft") or sft_stage.Config()
        self.sft_cfg: sft_stage.Config = sft_cfg.model_copy(update={
            "k": cfg.k, "sampling": {**sft_cfg.sampling, **cfg.answer_sampling},
            "fewshot": sft_cfg.fewshot if cfg.answer_fewshot is None else cfg.answer_fewshot,
        })
        self.evolve_sampling = ctx.sampling(cfg.sampling)
        self.rounds: list[RoundStats] = []
        self.requested_total = 0
        self.kept_total = 0
        self.last_survival: float | None = None
        #: Eliminations by round, operation and reason, and by reason over all rounds (in the order they happened).
        self.elim_by_op: dict[int, dict[str, dict[str, int]]] = {}
        self.elim_totals: dict[str, int] = {}
        # Scratch space of this session: the decisions, and each round's kept problems (the next rounds' parents).
        self.work = self.store.stage_dir(STAGE) / ".work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.decisions = Decisions(self.work / "decisions.jsonl")
        self.seeds_segment: Segment | None = None
        self.round_segments: dict[int, Segment] = {}
        # Prompt files resolved up front, so a missing one fails before any request is sent.
        self._system = prompts.load_text(cfg.system_prompt) if cfg.system_prompt else None
        used = {op for rc in cfg.rounds for op in rc.operations}
        self._op_paths = {k: str(prompts.prompt_path(cfg.operations[k].prompt)) for k in sorted(used)}
        if cfg.elimination.llm_check:
            prompts.load_text(cfg.elimination.llm_check_prompt)
        self._prefixes = sft_stage.prefixes(self.sft_cfg)
        for path in self._op_paths.values():
            prompts.load_text(path)

    def close(self) -> None:
        self.decisions.close()
        self.round_segments.clear()
        shutil.rmtree(self.work, ignore_errors=True)

    # -- setup -------------------------------------------------------------------------------------------------------
    def setup_decontamination(self, seeds: Sequence[Problem]) -> None:
        dc = self.cfg.decontamination
        if not dc.enabled:
            return
        present, missing = [], []
        for f in dc.test_files:
            (present if expand_path(f).exists() else missing).append(f)
        if missing:
            if dc.required:
                raise ConfigError(f"stages.evolve.decontamination.test_files: not found: {', '.join(missing)}")
            log.warning("decontamination: test files not found, skipped: %s", ", ".join(missing))
        self.decontam_info.update(files=present, missing=missing)
        if not present:
            self.decontam_info["enabled"] = False
            return
        self.decontam = filters.Decontaminator.from_files(
            present, ngram=dc.ngram, min_shared=dc.min_shared, min_tokens=dc.min_tokens,
            near_threshold=dc.near_threshold, num_perm=dc.num_perm, ignore_common=dc.ignore_common,
        )
        self.decontam_info["test_problems"] = len(self.decontam)
        if dc.check_seeds and len(seeds):
            matches, examples = 0, []
            for lo in range(0, len(seeds), FILTER_CHUNK):
                chunk = seeds[lo : lo + FILTER_CHUNK]
                for s, h in zip(chunk, self.decontam.match_many([s.question for s in chunk])):
                    if h is not None:
                        matches += 1
                        if len(examples) < 20:
                            examples.append({"seed_id": s.id, **h.as_dict()})
            self.decontam_info["seed_matches"] = matches
            self.decontam_info["seed_match_examples"] = examples

    # -- one pass: evolve, filter, answer -----------------------------------------------------------------------------
    def _messages(self, child: Child) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self._system}] if self._system else []
        msgs.append({"role": "user", "content": prompts.render(self._op_paths[child.op], question=child.parent.question)})
        return msgs

    async def evolve(self, children: Children, r: int) -> GroupReader:
        """Request the evolutions of ``children`` (only those without a successful record) and return the reader of
        every evolution record of the round."""
        name = f"round{r:02d}_evolutions"
        sampling_d = self.evolve_sampling.as_dict()
        roles = children.plan.role if self.has_evolver2 else np.zeros(len(children), dtype=np.uint8)
        codes = sorted(set(np.unique(roles).tolist()), key=lambda c: int(np.argmax(roles == c)))  # first seen first
        reader = None
        for code in codes:
            step = Step(ROLES[code], Subseq(children, np.nonzero(roles == code)[0]), key=lambda c: c.id,
                        request=self._request, make_rows=functools.partial(evolution_rows, sampling=sampling_d),
                        desc=f"evolve: round {r} evolving")
            if reader is not None:
                reader.close()
            reader = await self.ctx.generate(STAGE, name, step)
        return reader if reader is not None else self.store.groups(STAGE, name)

    def _request(self, c: Child) -> Request:
        return Request(self._messages(c), self.evolve_sampling, sample_offset=c.index, task=f"evolve:{c.op}")

    def _eliminate(self, child: Child, reason: str, detail: str, stats: RoundStats, text: str | None = None,
                   match: dict[str, Any] | None = None, model: str | None = None) -> None:
        stats.count(stats.eliminated, reason)
        by_op = self.elim_by_op.setdefault(child.round, {}).setdefault(child.op, {})
        by_op[reason] = by_op.get(reason, 0) + 1
        self.elim_totals[reason] = self.elim_totals.get(reason, 0) + 1
        self.decisions.add("eliminated", child.round, child.id, {
            "id": child.id, "round": child.round, "pass": child.pass_, "parent_id": child.parent.id,
            "root_id": child.parent.root_id, "operation": child.op,
            "direction": self.cfg.operations[child.op].direction, "model": model, "question": text,
            "reason": reason, "detail": detail, "match": match,
        })

    async def llm_checks(self, items: Sequence[tuple[Child, str]], r: int) -> GroupReader:
        """The reader of the model's replies to the information-gain check, by child id (resumable)."""
        sampling = self.ctx.sampling({"temperature": 0.0, "max_tokens": 48})
        prompt = self.cfg.elimination.llm_check_prompt
        schema = yes_no_schema() if self.cfg.elimination.structured_output else None

        def request(item: tuple[Child, str]) -> Request:
            c, t = item
            text = prompts.render(prompt, parent=c.parent.question, child=t)
            return Request([{"role": "user", "content": text}], sampling, task="check:info_gain", json_schema=schema)

        step = Step("main", items, key=lambda it: it[0].id, request=request, make_rows=check_rows,
                    desc=f"evolve: round {r} checking")
        return await self.ctx.generate(STAGE, f"round{r:02d}_checks", step)

    def _filter(self, buf: list[tuple[int, str, str | None]], children: Children, stats: RoundStats,
                survivors: array) -> None:
        """Decontamination, then dedup against the pool (earlier rounds and earlier children), of one chunk of
        children that passed the text rules; the texts are tokenised and hashed once for both."""
        if not buf:
            return
        enc = self.deduper.minhasher.hasher.encode([t for _, t, _ in buf])
        if self.decontam is not None:
            hits = self.decontam.match_many([t for _, t, _ in buf], encoded=enc)
            rest, idx = [], []
            for k, ((j, t, model), m) in enumerate(zip(buf, hits)):
                if m is None:
                    rest.append((j, t, model))
                    idx.append(k)
                else:
                    stats.count(stats.contaminated, m.kind)
                    self._eliminate(children[j], "contaminated",
                                    f"{m.kind} match with test problem {m.test_id} ({m.test_file})", stats, t,
                                    m.as_dict(), model)
            buf = rest
            enc = filters.TextHasher.subset(enc, idx)
        if not buf:
            return
        dups = self.deduper.check([children[j].id for j, _, _ in buf], [t for _, t, _ in buf], encoded=enc)
        for (j, t, model), d in zip(buf, dups):
            if d is None:
                survivors.append(j)
            else:
                stats.count(stats.duplicates, d.kind)
                self._eliminate(children[j], f"duplicate_{d.kind}",
                                f"duplicate of {d.key} (similarity {d.similarity:.2f})", stats, t,
                                {"id": d.key, "similarity": d.similarity}, model)

    @staticmethod
    def _evolution(reader: GroupReader, c: Child) -> tuple[str, dict[str, Any]]:
        row = (reader.get(c.id) or [{}])[0]
        return filters.clean_evolved(row.get("text")), row

    async def run_pass(self, children: Children, r: int, stats: RoundStats) -> int:
        """Evolve, filter and answer the children of one pass; returns how many were kept. Children stream through
        in chunks: what stays in memory is a few bytes per child."""
        reader = await self.evolve(children, r)
        survivors = array("q")
        buf: list[tuple[int, str, str | None]] = []
        for j in range(len(children)):
            c = children[j]
            rows = reader.get(c.id)
            row = rows[0] if rows else None
            if row is None or row.get("error"):
                self._eliminate(c, "request_failed", (row or {}).get("error") or "no result", stats)
                continue
            text = filters.clean_evolved(row.get("text"))
            if self.cfg.drop_truncated and row.get("finish_reason") == "length":
                self._eliminate(c, "truncated", "the evolution was cut off by the token limit", stats, text,
                                model=row.get("model"))
                continue
            bad = self.eliminator.check(text, c.parent.question)
            if bad:
                self._eliminate(c, bad[0], bad[1], stats, text, model=row.get("model"))
                continue
            buf.append((j, text, row.get("model")))
            if len(buf) >= FILTER_CHUNK:
                self._filter(buf, children, stats, survivors)
                buf = []
        self._filter(buf, children, stats, survivors)
        del buf
        if self.cfg.elimination.llm_check and survivors:
            items = Mapped(Subseq(children, survivors), lambda c: (c, self._evolution(reader, c)[0]))
            checks = await self.llm_checks(items, r)
            rest = array("q")
            for j in survivors:
                c = children[j]
                rows = checks.get(c.id)
                reply = (rows[0].get("reply") or "") if rows else ""
                if yes_no(reply) is False:
                    t, row = self._evolution(reader, c)
                    self._eliminate(c, "no_information_gain_llm", "the LLM check answered No", stats, t,
                                    model=row.get("model"))
                    self.deduper.remove([c.id])
                else:
                    rest.append(j)
            checks.close()
            survivors = rest
        try:
            return await self.answer(children, survivors, reader, r, stats)
        finally:
            reader.close()

    async def answer(self, children: Children, survivors: array, evolutions: GroupReader, r: int,
                     stats: RoundStats) -> int:
        if not survivors:
            return 0
        cfg = self.cfg

        def problem_of(j: int) -> Problem:
            c = children[j]
            t, row = self._evolution(evolutions, c)
            return Problem(id=c.id, source=c.root_source, question=t, root_id=c.parent.root_id, parent_id=c.parent.id,
                           round=r, operation=c.op, model=row.get("model"))

        reader = await sft_stage.solve_problems(
            self.ctx, Mapped(survivors, problem_of), self.sft_cfg, stage=STAGE, name=f"round{r:02d}_solutions",
            task="solve", desc=f"evolve: round {r} answering", gold_of=lambda p: None,
            keys=Mapped(survivors, lambda j: children[j].id),
        )
        checker = self.ctx.checker()
        answer_model = self.ctx.backend("main").model
        kept = 0
        for lo in range(0, len(survivors), VOTE_CHUNK):
            chunk = []
            for j in survivors[lo : lo + VOTE_CHUNK]:
                c = children[j]
                sols = reader.get(c.id) or []
                answers = [self._usable_answer(s) for s in sols]
                # Agreement counts all k samples: a failed request (one row) or a missing sample counts as no answer.
                padded = answers + [None] * max(0, cfg.k - len(answers))
                pseudo, share = majority_answer(padded, checker) if answers else (None, 0.0)
                chunk.append((c, sols, answers, pseudo, share))
            pairs = [(a, pseudo) for _, _, answers, pseudo, _ in chunk for a in answers
                     if a is not None and pseudo is not None]
            verdicts = iter(await checker.acheck_many(pairs)) if pairs else iter(())
            dropped: list[str] = []
            for c, sols, answers, pseudo, share in chunk:
                t, row = self._evolution(evolutions, c)
                if self._decide(c, t, row, sols, answers, pseudo, share, verdicts, r, stats, answer_model):
                    kept += 1
                else:
                    dropped.append(c.id)
            if dropped:
                self.deduper.remove(dropped)
        reader.close()
        return kept

    def _decide(self, c: Child, t: str, row: dict[str, Any], sols: list[dict[str, Any]], answers: list[str | None],
                pseudo: str | None, share: float, verdicts: Iterator[Any], r: int, stats: RoundStats,
                answer_model: str) -> bool:
        """Mark the child's solutions against its pseudo-gold and keep or eliminate it (a decision record)."""
        cfg = self.cfg
        marked = []
        for s, a in zip(sols, answers):
            s = dict(s)
            if a is None:
                s["verdict"], s["reason"] = ("failed", s.get("reason")) if s["verdict"] == "failed" else (
                    "no_answer", s.get("reason") or "no usable final answer")
            elif pseudo is None:
                s["verdict"] = "unchecked"
            else:
                ok = next(verdicts).equal
                s["verdict"] = "correct" if ok else "incorrect"
                s["reason"] = None if ok else f"disagrees with the pseudo-gold {pseudo!r}"
            marked.append(s)
        if pseudo is None:
            if sols and all(s["verdict"] == "failed" for s in sols):
                self._eliminate(c, "request_failed", f"the answer request failed: {sols[0].get('reason')}",
                                stats, t, model=row.get("model"))
            else:
                self._eliminate(c, "no_answer", f"no final answer in {cfg.k} teacher samples", stats, t,
                                model=row.get("model"))
            return False
        agreeing = round(share * max(cfg.k, len(answers)))
        if agreeing < cfg.min_agreeing:
            self._eliminate(c, "low_agreement", f"{agreeing} of {cfg.k} answers agree (< {cfg.min_agreeing})",
                            stats, t, {"pseudo_gold": pseudo, "agreement": share}, row.get("model"))
            return False
        flagged = share < cfg.min_agreement
        if flagged and cfg.low_agreement == "drop":
            self._eliminate(c, "low_agreement", f"agreement {share:.2f} < {cfg.min_agreement}", stats, t,
                            {"pseudo_gold": pseudo, "agreement": share}, row.get("model"))
            return False
        good = [s for s in marked if s["verdict"] == "correct"]
        problem = Problem(
            id=c.id, source="evol", question=t, gold_answer=pseudo,
            reference_solution=good[0]["text"] if good else None, root_id=c.parent.root_id,
            parent_id=c.parent.id, round=r, operation=c.op, model=row.get("model"),
        )
        evol = EvolExample(
            id=c.id, question=t, pseudo_gold=pseudo, agreement=round(share, 4), n_samples=len(sols),
            solutions=[s["text"] for s in marked], root_id=c.parent.root_id, parent_id=c.parent.id, round=r,
            operation=c.op, direction=cfg.operations[c.op].direction, model=row.get("model"), flagged=flagged,
            sampling=row.get("sampling") or {}, answer_model=answer_model, answers=answers,
        )
        steps = [len(s.get("steps") or split_steps(s["text"])) for s in good]
        chars = [len(s["text"]) for s in good]
        self.decisions.add("kept", r, c.id, {
            "problem": problem.row(), "evol": evol.row(), "solutions": marked, "root_source": c.root_source,
            "steps": sum(steps) / len(steps) if steps else None, "chars": sum(chars) / len(chars) if chars else None,
        })
        stats.flagged += int(flagged)
        return True

    def _usable_answer(self, s: dict[str, Any]) -> str | None:
        if s["verdict"] == "failed":
            return None
        if self.sft_cfg.drop_truncated and s.get("finish_reason") == "length":
            return None
        return s.get("answer") if s.get("answer") is not None else extract_answer(s.get("text"))

    # -- rounds --------------------------------------------------------------------------------------------------------
    def survival_estimate(self) -> float:
        """Expected share of requested children that survive: the last round's share (when it had >= 20 requests),
        else the share over everything so far, else ``expected_survival``."""
        floor = self.cfg.survival_floor
        if self.cfg.adapt_survival:
            if self.last_survival is not None:
                return min(1.0, max(floor, self.last_survival))
            if self.requested_total >= 20:
                return min(1.0, max(floor, self.kept_total / self.requested_total))
        return max(floor, self.cfg.expected_survival)

    def _parents(self, r: int, rc: RoundConfig) -> Parents:
        assert self.seeds_segment is not None
        if rc.pool == "seeds" or (rc.pool == "previous" and r == 1):
            return Parents([self.seeds_segment])
        if rc.pool == "previous":
            return Parents([self.round_segments[r - 1]])
        return Parents([self.seeds_segment] + [self.round_segments[k] for k in sorted(self.round_segments)])

    def _close_round(self, r: int) -> None:
        """The round's kept problems in id order, as the next rounds' parents (a scratch Parquet file read lazily)."""
        if not self.decisions.count("kept", r):
            self.round_segments[r] = Segment([])
            return
        sink = ParquetSink(self.work / f"round{r:02d}_problems.parquet")
        for rec in self.decisions.sorted("kept", r):
            sink.write({**rec["problem"], "root_source": rec["root_source"]})
        sink.close()
        table = ParquetTable(sink.path, _kept_parent, columns=PARENT_COLUMNS + ["root_source"])
        self.round_segments[r] = Segment(table)

    async def run_round(self, r: int, rc: RoundConfig, planned: float) -> RoundStats:
        cfg = self.cfg
        stats = RoundStats(round=r, pool=rc.pool, planned=planned)
        parents = self._parents(r, rc)
        stats.parents = len(parents)
        target = int(round(planned))
        cap = int(math.ceil(cfg.max_children_per_parent * len(parents)))
        round_kept = 0
        if not len(parents):
            log.warning("evolve: round %d has no parents (pool %r is empty)", r, rc.pool)
        for p in range(cfg.max_topups + 1):
            need = target - round_kept
            if need <= 0 or not len(parents) or (p > 0 and need <= cfg.topup_tolerance * target):
                break
            n_req = min(int(math.ceil(need / self.survival_estimate())), cap - stats.requested)
            if n_req <= 0:
                break
            rng = random.Random(f"evolve:{self.seed}:{r}:{p}")
            plan = plan_arrays(len(parents), n_req, rc.operations, rng, parents.counts,
                               cfg.evolver2_share if self.has_evolver2 else 0.0)
            children = Children(parents, plan, r, p)
            got = await self.run_pass(children, r, stats)
            stats.passes += 1
            stats.requested += len(children)
            self.requested_total += len(children)
            self.kept_total += got
            round_kept += got
        self._close_round(r)
        stats.kept = round_kept
        if stats.requested >= 20:
            self.last_survival = stats.kept / stats.requested
        return stats

    async def run(self, seeds: Sequence[Problem]) -> None:
        """Run every round from ``seeds`` (anything with ``id``, ``question``, ``root_id`` and ``source``: e.g. the
        few columns of the seeds' Parquet file that evolving needs, see :func:`run`)."""
        self.seeds_segment = Segment(Mapped(seeds, lambda p: (Parent(p.id, p.question, p.root_id), p.source)))
        for lo in range(0, len(seeds), FILTER_CHUNK):
            chunk = seeds[lo : lo + FILTER_CHUNK]
            self.deduper.add([s.id for s in chunk], [s.question for s in chunk])
        plan = planned_sizes(self.cfg.rounds, len(seeds))
        for r, rc in enumerate(self.cfg.rounds, start=1):
            t0 = time.time()
            stats = await self.run_round(r, rc, plan[r - 1])
            self.rounds.append(stats)
            log.info("evolve: round %d: kept %d of %d requested (planned %.0f) in %.1f s", r, stats.kept,
                     stats.requested, stats.planned, time.time() - t0)


# --------------------------------------------------------------------------------------------------------------------
# Summary, report, outputs
# --------------------------------------------------------------------------------------------------------------------


class Difficulty:
    """The difficulty proxy of a set of kept problems, accumulated one at a time (means as ``_mean`` computes them,
    over the problems in the order they are added)."""

    def __init__(self) -> None:
        self.n = 0
        self._sums: dict[str, Any] = {"steps": [0, 0], "solution_chars": [0, 0], "agreement": [0, 0],
                                      "question_chars": [0, 0]}

    def add(self, rec: dict[str, Any]) -> None:
        self.n += 1
        for name, v in (("steps", rec["steps"]), ("solution_chars", rec["chars"]),
                        ("agreement", rec["evol"]["agreement"]), ("question_chars", len(rec["problem"]["question"]))):
            if v is not None:
                acc = self._sums[name]
                acc[0] += v
                acc[1] += 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        for name, (total, n) in self._sums.items():
            out[name] = round(total / n, 3) if n else None
        return out


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


def seed_difficulty(ctx: StageContext, seeds: Sequence[Problem]) -> dict[str, Any] | None:
    """The same proxy for the seeds, from the sft stage's correct solutions (None when that stage has not run);
    streamed from the Parquet file."""
    if not ctx.store.has_output("sft", "solutions"):
        return None
    ids = np.sort(np.fromiter((key_digest(s.id) for s in seeds), dtype="S16", count=len(seeds)))
    steps_sum = steps_n = chars_sum = 0
    q_sum = sum(len(s.question) for s in seeds)
    for s in ctx.store.iter_output("sft", "solutions"):
        if s["verdict"] != "correct":
            continue
        d = key_digest(s["problem_id"])
        i = int(np.searchsorted(ids, d))
        if i < len(ids) and ids[i] == d:
            steps_sum += len(s.get("steps") or [])
            chars_sum += len(s["text"])
            steps_n += 1
    return {"n": len(seeds), "steps": round(steps_sum / steps_n, 3) if steps_n else None,
            "solution_chars": round(chars_sum / steps_n, 3) if steps_n else None, "agreement": None,
            "question_chars": round(q_sum / len(seeds), 3) if len(seeds) else None}


@dataclass
class Outputs:
    """What :func:`write_outputs` measured while writing the outputs (for the summary)."""

    by_round: dict[int, Difficulty] = field(default_factory=dict)
    by_round_op: dict[tuple[int, str], Difficulty] = field(default_factory=dict)
    by_round_dir: dict[tuple[int, str], Difficulty] = field(default_factory=dict)
    by_op: dict[str, Difficulty] = field(default_factory=dict)
    evolved: int = 0
    flagged: int = 0
    sft_evolved: int = 0
    eliminated: int = 0
    steps: Any = None


def write_outputs(engine: Engine, sinks: dict[str, Any]) -> Outputs:
    """Stream every kept problem (rounds in order, ids in order within a round) and every eliminated child into the
    output sinks, measuring the summary's figures on the way."""
    out = Outputs(steps=StepsTally())
    for st in engine.rounds:
        r = st.round
        for rec in engine.decisions.sorted("kept", r):
            problem, evol = rec["problem"], rec["evol"]
            sinks["problems"].write(problem)
            sinks["evol"].write(evol)
            for s in rec["solutions"]:
                sinks["solutions"].write(s)
                if s["verdict"] != "failed":
                    out.steps.add(rec["root_source"], s.get("steps"), s.get("text"))
            if not evol["flagged"]:
                p = Problem.model_validate(problem)
                for row in sft_stage.sft_rows([p], lambda _pid: rec["solutions"], engine.sft_cfg):
                    sinks["sft_evolved"].write(row.row())
                    out.sft_evolved += 1
            for acc in (out.by_round.setdefault(r, Difficulty()),
                        out.by_round_op.setdefault((r, problem["operation"]), Difficulty()),
                        out.by_round_dir.setdefault((r, evol["direction"]), Difficulty()),
                        out.by_op.setdefault(problem["operation"], Difficulty())):
                acc.add(rec)
            out.evolved += 1
            out.flagged += int(evol["flagged"])
    for st in engine.rounds:
        for e in engine.decisions.sorted("eliminated", st.round):
            sinks["eliminated"].write(e)
            out.eliminated += 1
    return out


def build_summary(engine: Engine, n: int, base_difficulty: dict[str, Any] | None, got: Outputs) -> dict[str, Any]:
    cfg = engine.cfg
    plan = planned_sizes(cfg.rounds, n)
    rounds = []
    planned_pool = achieved_pool = float(n)
    empty = Difficulty().as_dict()
    for st, planned in zip(engine.rounds, plan):
        planned_pool += planned
        achieved_pool += st.kept
        by_op = {op: dict(got.by_round_op[(st.round, op)].as_dict()) if (st.round, op) in got.by_round_op
                 else dict(empty) for op in cfg.rounds[st.round - 1].operations}
        by_dir = {d: got.by_round_dir[(st.round, d)].as_dict() if (st.round, d) in got.by_round_dir else dict(empty)
                  for d in ("upward", "downward")}
        elim_by_op = engine.elim_by_op.get(st.round, {})
        for op in by_op:
            by_op[op]["eliminated"] = elim_by_op.get(op, {})
        rounds.append({
            "round": st.round, "pool": st.pool, "parents": st.parents,
            "children_per_parent": cfg.rounds[st.round - 1].children_per_parent,
            "children_per_parent_effective": round(st.requested / st.parents, 3) if st.parents else 0.0,
            "planned": round(planned, 1), "requested": st.requested, "passes": st.passes, "kept": st.kept,
            "flagged": st.flagged, "survival": round(st.kept / st.requested, 4) if st.requested else None,
            "planned_pool": round(planned_pool, 1), "achieved_pool": int(achieved_pool),
            "planned_growth": round(planned_pool / n, 4) if n else None,
            "achieved_growth": round(achieved_pool / n, 4) if n else None,
            "eliminated": dict(sorted(st.eliminated.items())), "duplicates": st.duplicates,
            "contaminated": st.contaminated, "by_operation": by_op, "by_direction": by_dir,
            "difficulty": got.by_round[st.round].as_dict() if st.round in got.by_round else dict(empty),
        })
    by_op_all = {op: got.by_op[op].as_dict() for op in cfg.operations if op in got.by_op}
    return {
        "seeds": n, "evolved": got.evolved, "pool": n + got.evolved,
        "flagged": got.flagged,
        "growth": {"planned": round((n + sum(plan)) / n, 4) if n else None,
                   "achieved": round((n + got.evolved) / n, 4) if n else None},
        "requested": engine.requested_total,
        "eliminated": dict(sorted(engine.elim_totals.items())),
        "decontamination": engine.decontam_info,
        "seed_difficulty": base_difficulty,
        "by_operation": {k: v for k, v in by_op_all.items() if v["n"]},
        "rounds": rounds,
    }


def print_report(summary: dict[str, Any]) -> None:
    from .. import report

    rows = []
    for r in summary["rounds"]:
        dedup = sum(r["duplicates"].values())
        contam = sum(r["contaminated"].values())
        other = {k: v for k, v in r["eliminated"].items() if not k.startswith(("duplicate_", "contaminated"))}
        up, down = r["by_direction"]["upward"], r["by_direction"]["downward"]
        rows.append([
            r["round"], r["pool"], r["parents"], f"{r['planned']:.0f}", r["requested"], r["kept"],
            f"{r['planned_growth']:.2f}x", f"{r['achieved_growth']:.2f}x", report.format_counts(other) or "-",
            dedup, contam, report.fmt(up["steps"]), report.fmt(down["steps"]), report.fmt(r["difficulty"]["agreement"]),
        ])
    report.print_table(
        "evolve: rounds (planned vs achieved; eliminations; difficulty proxy)",
        ["round", "pool", "parents", "planned", "requested", "kept", "growth plan", "growth got", "eliminated",
         "dup", "contam", "steps up", "steps down", "agree"],
        rows,
    )
    ops = [[op, d["n"], report.fmt(d["steps"]), report.fmt(d["solution_chars"], 0), report.fmt(d["agreement"]),
            report.fmt(d["question_chars"], 0)] for op, d in summary["by_operation"].items()]
    if ops:
        report.print_table("evolve: difficulty proxy by operation",
                           ["operation", "kept", "steps", "solution chars", "agreement", "question chars"], ops)


def make_plots(summary: dict[str, Any], out_dir: Any) -> list[str]:
    from .. import report

    rounds = summary["rounds"]
    if not rounds:
        return []
    xs = [0] + [r["round"] for r in rounds]
    n = summary["seeds"]
    paths = []
    p = report.line_plot(
        out_dir / "growth.png", xs,
        {"planned pool": [n] + [r["planned_pool"] for r in rounds],
         "achieved pool": [n] + [r["achieved_pool"] for r in rounds]},
        title=f"Evol-Instruct growth: {n} seeds -> {summary['pool']} problems "
              f"({summary['growth']['achieved']:.2f}x, planned {summary['growth']['planned']:.2f}x)",
        xlabel="round", ylabel="problems in pool",
        bars={"kept this round": [0] + [r["kept"] for r in rounds]},
    )
    paths.append(str(p))
    base = summary.get("seed_difficulty") or {}
    panels = {}
    for metric, label in (("steps", "solution steps"), ("solution_chars", "solution length (chars)"),
                          ("agreement", "answer agreement"), ("question_chars", "question length (chars)")):
        series = {d: [None] + [r["by_direction"][d][metric] for r in rounds] for d in ("upward", "downward")}
        if base.get(metric) is not None:
            series["seeds (sft solutions)"] = [base[metric]] + [None] * len(rounds)
        panels[label] = series
    p = report.panel_plot(out_dir / "difficulty.png", xs, panels,
                          title="Difficulty proxy by round and direction (round 0 = seeds)", xlabel="round")
    paths.append(str(p))
    return paths


def run(ctx: StageContext) -> dict[str, Any]:
    t0 = time.time()
    cfg: Config = ctx.config.stage(STAGE)
    store = ctx.store
    ctx.seeds()  # the seeds stage is done
    # The seeds as the engine reads them, over and over: only the columns it needs, as light tuples.
    seeds = store.table("seeds", "problems", lambda r: SeedRef(r["id"], r["question"], r["root_id"], r["source"]),
                        columns=SEED_COLUMNS)
    engine = Engine(ctx, cfg)
    try:
        engine.setup_decontamination(seeds)
        asyncio.run(engine.run(seeds))
        # The outputs: streamed from the decisions in their final order (nothing of them is held in memory). The
        # evolved problems' SFT rows (their solutions that agree with the pseudo-gold; flagged ones left out) go to
        # sft_evolved: whether they join the published sft config is a publishing choice (off by default, as in the
        # recipe: the evolved problems are the RL prompts).
        sinks = {name: store.sink(STAGE, name) for name in ("problems", "evol", "solutions", "sft_evolved",
                                                               "eliminated")}
        got = write_outputs(engine, sinks)
        summary = build_summary(engine, len(seeds), seed_difficulty(ctx, seeds), got)
        if cfg.plots:
            summary["plots"] = make_plots(summary, store.stage_dir(STAGE))
        summary["steps_per_solution"] = got.steps.as_dict()
        summary["sft_evolved_rows"] = got.sft_evolved
        summary["failed_items"] = engine.elim_totals.get("request_failed", 0)
        store.finish(STAGE, sinks, summary, started=t0)
    finally:
        engine.close()
    print_report(summary)
    return {k: v for k, v in summary.items() if k not in ("rounds", "by_operation", "seed_difficulty")}
