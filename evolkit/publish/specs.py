"""What a publish holds: which run outputs make which published config, the publish settings, and the train/test split
by root problem.

:data:`CONFIG_SPECS` is the one table: published config <- stage outputs (the first one present wins, so a review
stage's output replaces the model-labelled one). Two configs are assembled rather than copied:

* ``sft``: the seed problems' verified solutions (``sft/sft``); the evolved problems' solutions
  (``evolve/sft_evolved``, or the ``round > 0`` rows of an older run's ``evolve/sft``) join only with the publish
  setting ``sft_include_evolved`` (off by default, as in the recipe, where evolved problems are RL prompts);
* ``rl_prompts``: every seed problem (``seeds/problems``) and every kept evolved problem (``evolve/problems``), the
  instructions of the RL stage (at full scale the ~96k of WizardMath).

The split is deterministic and seeded by *root problem*: a hash of (seed, root id) decides, so every variant of one seed
problem lands on the same side in every config, and a growing run never moves a problem from test to train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import EvolkitError
from ..records import PUBLISHED, RLPrompt
from ..store import RunStore, read_parquet


class PublishError(EvolkitError):
    """A publish that cannot go on (invalid rows, missing token, no permission, conflicting commit ...)."""


def short(value: Any, n: int = 160) -> str:
    s = str(value)
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------------


class PublishOptions(BaseModel):
    """Publish settings: the run config's ``publish:`` section, overridden by CLI flags / keyword arguments."""

    model_config = ConfigDict(extra="forbid")
    repo: str | None = Field(None, description="USER/NAME of the dataset repo (separate repos: the name prefix)")
    private: bool = False
    local: str | None = Field(None, description="local folder (default RUN_DIR/dataset when no repo is given)")
    separate_repos: bool = Field(False, description="one repo (or sub-folder) per config: <repo>-<config>")
    configs: list[str] | None = Field(None, description="publish only these configs (default: all that exist)")
    test_size: float = Field(0.1, ge=0, lt=1, description="share of root problems in the test split")
    min_split_rows: int = Field(100, ge=0, description="configs with fewer rows get a train split only")
    seed: int | None = Field(None, description="split seed (default: the run's seed)")
    sft_include_evolved: bool = Field(
        False, description="add the evolved problems' verified solutions to the sft config (the recipe keeps them "
                           "out: evolved problems are the RL prompts)")
    pretty_name: str | None = None
    language: list[str] = ["en"]
    tags: list[str] = []
    include_plots: bool = True
    overwrite: bool = Field(False, description="publish into an existing repo/folder that holds another run's data")
    commit_message: str | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Lineage and the table
# ---------------------------------------------------------------------------------------------------------------------


class Lineage:
    """Maps any problem id (seed, evolved, or a published row's id) to the id of the seed problem it descends from."""

    def __init__(self, store: RunStore):
        import pyarrow.parquet as pq

        self.root: dict[str, str] = {}
        for _stage, outs in store.outputs().items():
            for path in outs.values():
                if not path.exists():
                    continue
                names = set(pq.read_schema(path).names)
                if {"id", "root_id"} <= names:
                    t = pq.read_table(path, columns=["id", "root_id"]).to_pydict()
                    for i, r in zip(t["id"], t["root_id"], strict=True):
                        if i is not None and r is not None:
                            self.root.setdefault(str(i), str(r))

    def root_of(self, pid: str | None) -> str:
        seen = 0
        cur = str(pid)
        while cur in self.root and self.root[cur] != cur and seen < 32:
            cur = self.root[cur]
            seen += 1
        return cur

    def register(self, ids: Iterable[str], groups: Iterable[str]) -> None:
        for i, g in zip(ids, groups, strict=True):
            self.root.setdefault(str(i), g)


@dataclass
class Gathered:
    """A config's rows as read from the run store, before validation."""

    rows: list[dict[str, Any]]
    source: str  # "sft/sft", "review/prm", "seeds/problems + evolve/problems" ...
    info: dict[str, Any] = field(default_factory=dict)  # what the card states about how the rows were chosen


@dataclass(frozen=True)
class ConfigSpec:
    """How one published config is made from the run store."""

    name: str
    #: (stage, output) candidates; the first one the manifest lists is used (reviewed outputs come first).
    sources: tuple[tuple[str, str], ...]
    description: str
    #: The dataset format a trainer reads (TRL's names).
    trl_format: str
    #: The id this row's split is decided by (its root problem); gets (row, lineage).
    group: Callable[[dict[str, Any], Lineage], str]
    splittable: bool = True
    #: Assembles the rows from several stage outputs instead of copying the first of ``sources``.
    gather: Callable[[RunStore, PublishOptions], Gathered | None] | None = None
    #: Extra checks a JSON Schema cannot express: row -> [(field, message)].
    check: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None


def _first_source(store: RunStore, sources: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    outputs = store.outputs()
    hit = next(((st, nm) for st, nm in sources if nm in outputs.get(st, {})), None)
    if hit is not None and not outputs[hit[0]][hit[1]].exists():
        raise PublishError(f"{outputs[hit[0]][hit[1]]}: listed in the manifest but missing (re-run stage {hit[0]!r})")
    return hit


def gather(spec: ConfigSpec, store: RunStore, options: PublishOptions) -> Gathered | None:
    """The rows of one config from the run store (None when the run has none)."""
    if spec.gather is not None:
        return spec.gather(store, options)
    hit = _first_source(store, spec.sources)
    if hit is None:
        return None
    return Gathered(read_parquet(store.outputs()[hit[0]][hit[1]]), f"{hit[0]}/{hit[1]}")


#: Seed SFT rows (first present wins) and the evolved problems' SFT rows (first present wins; the ``evolve/sft`` of
#: older runs holds seed rows too, so only its ``round > 0`` rows count as evolved).
SFT_SEED_SOURCES = (("review", "sft"), ("sft", "sft"))
SFT_EVOLVED_SOURCES = (("evolve", "sft_evolved"), ("evolve", "sft"), ("evolve", "sft_union"))


def _gather_sft(store: RunStore, options: PublishOptions) -> Gathered | None:
    outputs = store.outputs()
    seed = _first_source(store, SFT_SEED_SOURCES)
    evolved_at = _first_source(store, SFT_EVOLVED_SOURCES)
    rows = read_parquet(outputs[seed[0]][seed[1]]) if seed else []
    evolved: list[dict[str, Any]] = []
    evolved_source = None
    if evolved_at is not None:
        evolved = read_parquet(outputs[evolved_at[0]][evolved_at[1]])
        evolved_source = f"{evolved_at[0]}/{evolved_at[1]}"
        if evolved_at[1] != "sft_evolved":
            evolved = [r for r in evolved if int(r.get("round") or 0) > 0]
            evolved_source += " (rows with round > 0)"
    included = evolved if options.sft_include_evolved else []
    if seed is None and not included:
        return None
    source = " + ".join(([f"{seed[0]}/{seed[1]}"] if seed else []) + ([str(evolved_source)] if included else []))
    info = {"include_evolved": options.sft_include_evolved, "evolved_available": len(evolved),
            "evolved_included": len(included), "evolved_source": evolved_source,
            "seed_rows": len(rows)}
    return Gathered(rows + included, source, info)


def _gather_rl_prompts(store: RunStore, options: PublishOptions) -> Gathered | None:
    """Every seed problem and every kept evolved problem as an RL instruction (WizardMath's PPO prompts).

    The gold answer is the seed's ground truth or the evolved problem's majority-vote pseudo-gold; a flagged evolved
    problem (agreement below the evolve stage's ``min_agreement``, kept with ``low_agreement: flag``) is published
    without one, since its pseudo-gold did not pass the vote."""
    from .. import prompts

    template = prompts.wizardmath_template("default")
    outputs = store.outputs()
    out: dict[str, dict[str, Any]] = {}
    parts = []
    n_seed = n_evolved = n_no_gold = 0
    if "problems" in outputs.get("seeds", {}):
        parts.append("seeds/problems")
        for p in read_parquet(outputs["seeds"]["problems"]):
            if p["id"] not in out:
                out[p["id"]] = RLPrompt(id=p["id"], prompt=template.replace("{instruction}", p["question"]),
                                        instruction=p["question"], gold_answer=p.get("gold_answer"),
                                        source=p.get("source") or "seed").row()
                n_seed += 1
    evolve = outputs.get("evolve", {})
    flagged: set[str] = set()
    if "evol" in evolve:
        import pyarrow.parquet as pq

        if {"id", "flagged"} <= set(pq.read_schema(evolve["evol"]).names):  # an empty output has no columns
            t = pq.read_table(evolve["evol"], columns=["id", "flagged"]).to_pydict()
            flagged = {i for i, f in zip(t["id"], t["flagged"], strict=True) if f}
    if "problems" in evolve:
        parts.append("evolve/problems")
        evolved = [(p["id"], p["question"], p.get("gold_answer"), p.get("source")) for p in
                   read_parquet(evolve["problems"])]
    elif "evol" in evolve:  # a run folder without evolve/problems: the evol rows name the same problems
        parts.append("evolve/evol")
        evolved = [(r["id"], r["question"], r.get("pseudo_gold"), r.get("source")) for r in
                   read_parquet(evolve["evol"])]
    else:
        evolved = []
    for pid, question, gold, src in evolved:
        if pid in out:
            continue
        if pid in flagged:
            gold = None
        n_no_gold += gold is None
        out[pid] = RLPrompt(id=pid, prompt=template.replace("{instruction}", question), instruction=question,
                            gold_answer=gold, source=src or "evol").row()
        n_evolved += 1
    if not out:
        return None
    return Gathered(list(out.values()), " + ".join(parts),
                    {"seed_prompts": n_seed, "evolved_prompts": n_evolved, "evolved_without_gold": n_no_gold,
                     "flagged_evolved": len(flagged)})


def _check_sft(r: dict[str, Any]) -> list[tuple[str, str]]:
    errs = []
    for f in ("prompt", "completion", "instruction"):
        if isinstance(r.get(f), str) and not r[f].strip():
            errs.append((f, "is empty"))
    return errs


def _check_rankings(r: dict[str, Any]) -> list[tuple[str, str]]:
    v = r.get("variants") or []
    errs = []
    if len(v) < 2:
        errs.append(("variants", f"{len(v)} variant(s); a ranking needs at least 2"))
    for i, x in enumerate(v):
        if isinstance(x, dict) and isinstance(x.get("rank"), int) and x["rank"] < 1:
            errs.append((f"variants.{i}.rank", f"{x['rank']} is below 1 (1 = best)"))
    return errs


def _check_pairs(r: dict[str, Any]) -> list[tuple[str, str]]:
    if isinstance(r.get("chosen"), str) and r.get("chosen") == r.get("rejected"):
        return [("rejected", "equals 'chosen'")]
    return []


def _check_prm(r: dict[str, Any]) -> list[tuple[str, str]]:
    c, lab, sc = r.get("completions"), r.get("labels"), r.get("step_scores")
    errs = []
    if isinstance(c, list) and not c:
        errs.append(("completions", "no steps"))
    if isinstance(c, list) and isinstance(lab, list) and len(c) != len(lab):
        errs.append(("labels", f"{len(lab)} labels for {len(c)} steps (one label per step)"))
    if isinstance(c, list) and isinstance(sc, list) and len(sc) != len(c):
        errs.append(("step_scores", f"{len(sc)} scores for {len(c)} steps"))
    return errs


#: Published config <- stage outputs. A new stage plugs in by adding its output to ``sources`` (or a new row here).
CONFIG_SPECS: tuple[ConfigSpec, ...] = (
    ConfigSpec(
        "sft", SFT_SEED_SOURCES + SFT_EVOLVED_SOURCES,
        "Verified step-by-step solutions (WizardMath SFT data) in the Alpaca fields and as prompt/completion.",
        "prompt-completion (SFTTrainer)", group=lambda r, lin: lin.root_of(r["problem_id"]), gather=_gather_sft,
        check=_check_sft,
    ),
    ConfigSpec(
        "evol", (("review", "evol"), ("evolve", "evol")),
        "Evolved problems (upward/downward Evol-Instruct) with majority-vote pseudo-gold answers and teacher "
        "solutions.",
        "problems + solutions", group=lambda r, lin: lin.root_of(r.get("root_id") or r["id"]),
    ),
    ConfigSpec(
        "irm_rankings", (("review", "irm_rankings"), ("irm", "irm_rankings"), ("irm", "rankings")),
        "Instruction Reward Model data: each instruction's evolved variants ranked by the judge (or reviewers).",
        "rankings", group=lambda r, lin: lin.root_of(r["instruction_id"]), check=_check_rankings,
    ),
    ConfigSpec(
        "irm_pairs", (("review", "irm_pairs"), ("irm", "irm_pairs"), ("irm", "pairs")),
        "IRM preference pairs from the rankings (better variant chosen, worse rejected).",
        "implicit-prompt preference (RewardTrainer)", group=lambda r, lin: lin.root_of(r["ranking_id"]),
        check=_check_pairs,
    ),
    ConfigSpec(
        "prm", (("review", "prm"), ("prm", "prm")),
        "Process-supervision data: solution steps with a correct/incorrect label per step.",
        "stepwise supervision (prompt, completions, labels)", group=lambda r, lin: lin.root_of(r["problem_id"]),
        check=_check_prm,
    ),
    ConfigSpec(
        "rl_prompts", (("seeds", "problems"), ("evolve", "problems")),
        "Instructions for the RL stage (reward = IRM score x PRM score): every seed problem and every kept evolved "
        "problem, with the gold or pseudo-gold answer.",
        "prompt-only (GRPO/RLOO)", group=lambda r, lin: lin.root_of(r["id"]), gather=_gather_rl_prompts,
    ),
)
SPECS: dict[str, ConfigSpec] = {s.name: s for s in CONFIG_SPECS}
if set(SPECS) != set(PUBLISHED):  # pragma: no cover - a programming error caught at import
    raise RuntimeError("CONFIG_SPECS and records.PUBLISHED must name the same configs")


# ---------------------------------------------------------------------------------------------------------------------
# Collected data and the split
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ConfigData:
    spec: ConfigSpec
    rows: list[dict[str, Any]]
    source: str  # "sft/sft", "review/prm", "seeds/problems + evolve/problems" ...
    groups: list[str] = field(default_factory=list)
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> row indices
    info: dict[str, Any] = field(default_factory=dict)  # how the rows were chosen (see Gathered.info)

    @property
    def name(self) -> str:
        return self.spec.name

    def split_rows(self, split: str) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.splits[split]]

    def counts(self) -> dict[str, int]:
        return {s: len(ix) for s, ix in self.splits.items()}


def _unit(seed: int, key: str) -> float:
    h = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def assign_splits(datasets: list[ConfigData], test_size: float, seed: int, min_split_rows: int) -> None:
    """train/test by root problem: a root goes to test when hash(seed, root) < test_size, in every config alike."""
    for d in datasets:
        if not d.spec.splittable or test_size <= 0 or len(d.rows) < max(min_split_rows, 2):
            d.splits = {"train": list(range(len(d.rows)))}
            continue
        test = [i for i, g in enumerate(d.groups) if _unit(seed, g) < test_size]
        train = [i for i, g in enumerate(d.groups) if _unit(seed, g) >= test_size]
        d.splits = {"train": train, "test": test} if test and train else {"train": list(range(len(d.rows)))}
