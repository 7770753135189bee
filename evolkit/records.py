"""Typed records: the single source of truth for every dataset evolkit writes.

Stages produce these records, the run store persists them as JSON lines / Parquet, and ``schemas/*.json`` (one per
published dataset) are generated from the models in :data:`PUBLISHED` (``python -m evolkit.records`` rewrites them; a
test fails when they drift apart).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def row(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Usage(Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Problem(Record):
    """A math problem: a seed from GSM8k/MATH or an evolved one. Lineage fields are flat so they stay Parquet-friendly."""

    id: str
    source: str = Field(description="gsm8k | math | evol | a user-given name")
    split: str = "train"
    question: str
    gold_answer: str | None = Field(None, description="Ground truth (seeds) or pseudo-gold from majority voting (evolved)")
    reference_solution: str | None = None
    level: int | None = Field(None, description="MATH level 1-5")
    type: str | None = Field(None, description="MATH subject")
    root_id: str = Field(description="Id of the seed this problem descends from (itself for seeds)")
    parent_id: str | None = None
    round: int = 0
    operation: str | None = Field(None, description="Evolution operation that produced it; None for seeds")
    model: str | None = Field(None, description="Evolver model")


class Solution(Record):
    """One sampled solution of a problem, checked against the (pseudo-)gold answer."""

    problem_id: str
    sample_index: int = 0
    text: str
    steps: list[str] = []
    answer: str | None = None
    verdict: Literal["correct", "incorrect", "no_answer", "failed", "unchecked"] = "unchecked"
    reason: str | None = None
    model: str | None = None
    sampling: dict[str, Any] = {}
    usage: Usage = Usage()
    finish_reason: str | None = None


class SFTExample(Record):
    """A row of the ``sft`` dataset: Alpaca fields, the full WizardMath prompt text, and TRL prompt/completion columns."""

    id: str
    problem_id: str
    kind: Literal["math", "open_domain"] = "math"
    source: str
    instruction: str
    input: str = ""
    output: str
    prompt: str = Field(description="WizardMath Alpaca template with the instruction filled in")
    completion: str = Field(description="The response (what the loss is computed on)")
    gold_answer: str | None = None
    model: str | None = None
    round: int = 0


class EvolExample(Record):
    """A row of the ``evol`` dataset: an evolved problem with its pseudo-gold answer and solutions."""

    id: str
    question: str
    pseudo_gold: str | None
    agreement: float = Field(description="Share of the k teacher samples whose answer equals the pseudo-gold")
    n_samples: int
    solutions: list[str]
    root_id: str
    parent_id: str
    round: int
    operation: str
    direction: Literal["upward", "downward"]
    model: str | None = Field(None, description="Evolver model")
    source: str = "evol"
    flagged: bool = False
    sampling: dict[str, Any] = Field({}, description="Sampling parameters of the evolver")
    answer_model: str | None = Field(None, description="Teacher model that produced the solutions")
    answers: list[str | None] = Field([], description="Final answer extracted from each solution (None: none found)")


class RankedVariant(Record):
    id: str
    text: str
    evolver: str
    operation: str | None = None
    rank: int = Field(description="1 = best")
    definition: float | None = None
    precision: float | None = None
    integrity: float | None = None


class IRMRanking(Record):
    """A row of ``irm_rankings``: one instruction's evolved variants ranked by the judge (or reviewers)."""

    id: str
    instruction_id: str
    instruction: str
    variants: list[RankedVariant]
    judge: str | None = None
    consistent: bool = True
    label_source: Literal["model", "human"] = "model"
    agreement: float | None = None


class IRMPair(Record):
    """A row of ``irm_pairs``: TRL RewardTrainer's implicit-prompt preference format."""

    id: str
    ranking_id: str
    chosen: str
    rejected: str
    margin: float = 0.0
    label_source: Literal["model", "human"] = "model"


class PRMExample(Record):
    """A row of ``prm``: TRL's stepwise-supervision format (prompt, completions=steps, labels=step verdicts)."""

    id: str
    problem_id: str
    prompt: str
    completions: list[str]
    labels: list[bool]
    labeller: str = Field(description="judge | montecarlo | human")
    label_source: Literal["model", "human"] = "model"
    step_scores: list[float] | None = None
    final_correct: bool | None = None
    source: str = Field("sft", description="Where the labelled solution comes from: policy | sft | evolve")
    solution_model: str | None = Field(None, description="Model that wrote the labelled solution")
    labeller_model: str | None = Field(None, description="Model that labelled the steps (judge or rollout policy)")


class RLPrompt(Record):
    """A row of ``rl_prompts``: instructions for the RL stage (the reward r = rI x rA needs the instruction and gold)."""

    id: str
    prompt: str
    instruction: str
    gold_answer: str | None = None
    source: str


#: Published dataset configs and their row models.
PUBLISHED: dict[str, type[Record]] = {
    "sft": SFTExample,
    "evol": EvolExample,
    "irm_rankings": IRMRanking,
    "irm_pairs": IRMPair,
    "prm": PRMExample,
    "rl_prompts": RLPrompt,
}

def _resource_dir(name: str) -> Path:
    """Top-level folders (schemas/, hub_cards/) live beside the package in a checkout and inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / name, here / name):
        if cand.is_dir():
            return cand
    return here.parent / name


SCHEMA_DIR = _resource_dir("schemas")


def json_schema(config: str) -> dict[str, Any]:
    schema = PUBLISHED[config].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"evolkit/{config}.schema.json"
    return schema


def write_schemas(out: Path = SCHEMA_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PUBLISHED:
        p = out / f"{name}.schema.json"
        p.write_text(json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n")
        paths.append(p)
    return paths


if __name__ == "__main__":  # pragma: no cover
    for p in write_schemas():
        print(p)
