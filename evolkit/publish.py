"""Publish a run's datasets as one Hugging Face dataset repo (or a local folder with exactly the repo's layout).

```
evolkit publish RUN_DIR                        # -> RUN_DIR/dataset/ (the default target)
evolkit publish RUN_DIR --local DIR            # -> DIR/
evolkit publish RUN_DIR --repo USER/NAME [--private] [--dry-run] [--overwrite] [--separate-repos]
```

Steps, in order, all before anything is written or pushed:

1. **collect** every dataset the run store holds, through :data:`CONFIG_SPECS` (one table: published config <- stage
   outputs, the first one present wins, so a review stage's output replaces the model-labelled one); ``rl_prompts`` is
   derived from the ``sft`` and ``evol`` rows;
2. **validate** each row against ``schemas/<config>.schema.json`` (errors name config, row, id and field), plus checks a
   JSON Schema cannot express (e.g. as many PRM labels as steps);
3. **split** into train/test, deterministic and seeded, by *root problem*: a hash of (seed, root id) decides, so every
   variant of one seed problem lands on the same side in every config, and a growing run never moves a problem from
   test to train. Tiny configs (fewer than ``min_split_rows`` rows) get a train split only;
4. **write** ``data/<config>/<split>-00000-of-00001.parquet``, ``images/<stage>/*.png`` (the stages' plots),
   ``README.md`` (the card, from ``hub_cards/dataset_card.md.jinja``) and ``provenance.json``.

The folder is then moved into place (``--local``) or pushed in **one commit** (``--repo``): ``create_repo`` then
``create_commit`` with every file added and stale files of an earlier publish deleted, parented on the head read at
the start (a concurrent commit gives a clear conflict error instead of a silent merge). The run folder itself is only
read. :func:`publish_run` is the API; :func:`load_hint` is what the CLI prints after a publish.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .errors import EvolkitError
from .records import PUBLISHED, SCHEMA_DIR, RLPrompt, _resource_dir, json_schema
from .store import RunStore, check_output_folder, read_parquet, scrub

CARD_DIR = _resource_dir("hub_cards")
CARD_TEMPLATE = "dataset_card.md.jinja"
DEFAULT_LOCAL_NAME = "dataset"  # RUN_DIR/dataset when neither --local nor --repo is given
#: Paths of a repo that a publish owns: files under these prefixes that the new publish lacks are deleted.
MANAGED_PREFIXES = ("data/", "images/")
GENERATOR = "evolkit"


class PublishError(EvolkitError):
    """A publish that cannot go on (invalid rows, missing token, no permission, conflicting commit ...)."""


# ---------------------------------------------------------------------------------------------------------------------
# The config table
# ---------------------------------------------------------------------------------------------------------------------


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
    #: Builds the rows from other configs' rows instead of reading a stage output.
    derive: Callable[[dict[str, list[dict[str, Any]]]], list[dict[str, Any]]] | None = None
    derived_from: tuple[str, ...] = ()
    #: Extra checks a JSON Schema cannot express: row -> [(field, message)].
    check: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None


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


def _derive_rl_prompts(rows_by_config: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Instructions with a gold answer for the RL stage: math SFT rows (one per problem) and kept evolved problems."""
    from . import prompts

    template = prompts.wizardmath_template("default")
    out: dict[str, dict[str, Any]] = {}
    for r in rows_by_config.get("sft", []):
        if r.get("kind", "math") != "math" or not r.get("gold_answer"):
            continue
        pid = r["problem_id"]
        if pid not in out:
            out[pid] = RLPrompt(id=pid, prompt=r.get("prompt") or template.replace("{instruction}", r["instruction"]),
                                instruction=r["instruction"], gold_answer=r["gold_answer"], source=r["source"]).row()
    for r in rows_by_config.get("evol", []):
        if r.get("flagged") or not r.get("pseudo_gold") or r["id"] in out:
            continue
        out[r["id"]] = RLPrompt(id=r["id"], prompt=template.replace("{instruction}", r["question"]),
                                instruction=r["question"], gold_answer=r["pseudo_gold"],
                                source=r.get("source") or "evol").row()
    return list(out.values())


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
        "sft", (("review", "sft"), ("evolve", "sft"), ("evolve", "sft_union"), ("sft", "sft")),
        "Verified step-by-step solutions (WizardMath SFT data) in the Alpaca fields and as prompt/completion.",
        "prompt-completion (SFTTrainer)", group=lambda r, lin: lin.root_of(r["problem_id"]), check=_check_sft,
    ),
    ConfigSpec(
        "evol", (("review", "evol"), ("evolve", "evol")),
        "Evolved problems (upward/downward Evol-Instruct) with majority-vote pseudo-gold answers and teacher solutions.",
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
        "rl_prompts", (), "Instructions with gold answers for the RL stage (reward = IRM score x PRM score).",
        "prompt-only (GRPO/RLOO)", group=lambda r, lin: lin.root_of(r["id"]),
        derive=_derive_rl_prompts, derived_from=("sft", "evol"),
    ),
)
SPECS: dict[str, ConfigSpec] = {s.name: s for s in CONFIG_SPECS}
assert set(SPECS) == set(PUBLISHED), "CONFIG_SPECS and records.PUBLISHED must name the same configs"


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
    pretty_name: str | None = None
    language: list[str] = ["en"]
    tags: list[str] = []
    include_plots: bool = True
    overwrite: bool = Field(False, description="publish into an existing repo/folder that holds another run's data")
    commit_message: str | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Collect and validate
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ConfigData:
    spec: ConfigSpec
    rows: list[dict[str, Any]]
    source: str  # "sft/sft", "review/sft", or "derived from sft, evol"
    groups: list[str] = field(default_factory=list)
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> row indices

    @property
    def name(self) -> str:
        return self.spec.name

    def split_rows(self, split: str) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.splits[split]]

    def counts(self) -> dict[str, int]:
        return {s: len(ix) for s, ix in self.splits.items()}


def load_schema(config: str) -> dict[str, Any]:
    """``schemas/<config>.schema.json`` (generated by ``python -m evolkit.records``); the records model if absent."""
    path = SCHEMA_DIR / f"{config}.schema.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return json_schema(config)


def _short(value: Any, n: int = 160) -> str:
    s = str(value)
    return s if len(s) <= n else s[: n - 3] + "..."


_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$defs", "$comment"}
_PY_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                          "boolean": (bool,), "null": (type(None),), "array": (list,), "object": (dict,)}


def _all(checks: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]

    def f(v: Any) -> bool:
        for c in checks:
            if not c(v):
                return False
        return True

    return f


def fast_checker(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A compiled check for the JSON Schema subset the records generate (type, enum, anyOf, properties, required,
    additionalProperties, items, local $ref): far faster than ``jsonschema`` per row. It never accepts a row that
    ``jsonschema`` rejects (it may reject one that ``jsonschema`` accepts: such rows go to ``jsonschema``). None when
    the schema uses a keyword outside that subset (then every row goes to ``jsonschema``)."""
    defs = schema.get("$defs", {})
    compiled: dict[str, Callable[[Any], bool]] = {}

    def type_check(types: list[str]) -> Callable[[Any], bool] | None:
        if not all(t in _PY_TYPES for t in types):
            return None
        py = tuple(x for t in types for x in _PY_TYPES[t])
        bool_ok = "boolean" in types
        if bool_ok:
            return lambda v: isinstance(v, py)
        return lambda v: isinstance(v, py) and v is not True and v is not False

    def comp(s: Any) -> Callable[[Any], bool] | None:
        if not isinstance(s, dict):
            return None
        checks: list[Callable[[Any], bool]] = []
        for key, val in s.items():
            if key in _ANNOTATIONS:
                continue
            if key == "$ref":
                name = val.rsplit("/", 1)[-1] if isinstance(val, str) and val.startswith("#/$defs/") else None
                if name is None or name not in defs:
                    return None
                if name not in compiled:
                    compiled[name] = lambda v: False  # recursion guard (records have no recursive types)
                    sub = comp(defs[name])
                    if sub is None:
                        return None
                    compiled[name] = sub
                checks.append(lambda v, n=name: compiled[n](v))
            elif key == "type":
                tc = type_check([val] if isinstance(val, str) else list(val))
                if tc is None:
                    return None
                checks.append(tc)
            elif key == "enum":
                if not all(isinstance(x, str) for x in val):
                    return None
                allowed = frozenset(val)
                checks.append(lambda v, a=allowed: isinstance(v, str) and v in a)
            elif key == "anyOf":
                subs = [comp(x) for x in val]
                if any(x is None for x in subs):
                    return None
                if len(subs) == 2 and val[1] == {"type": "null"}:  # the common "X | None"
                    first = subs[0]
                    checks.append(lambda v, f=first: v is None or f(v))
                else:
                    checks.append(lambda v, subs=subs: any(f(v) for f in subs))
            elif key == "items":
                sub = comp(val)
                if sub is None:
                    return None

                def items(v: Any, f: Callable[[Any], bool] = sub) -> bool:
                    if isinstance(v, list):
                        for x in v:
                            if not f(x):
                                return False
                    return True

                checks.append(items)
            elif key == "properties":
                props = {k: comp(x) for k, x in val.items()}
                if any(x is None for x in props.values()):
                    return None

                def properties(v: Any, props: dict[str, Any] = props) -> bool:
                    if isinstance(v, dict):
                        for k, x in v.items():
                            f = props.get(k)
                            if f is not None and not f(x):
                                return False
                    return True

                checks.append(properties)
            elif key == "required":
                req = tuple(val)
                checks.append(lambda v, req=req: not isinstance(v, dict) or all(k in v for k in req))
            elif key == "additionalProperties":
                if val is True:
                    continue
                if val is not False:
                    return None
                known = frozenset(s.get("properties", {}))
                checks.append(lambda v, known=known: not isinstance(v, dict) or known.issuperset(v))
            else:
                return None
        return _all(checks)

    return comp(schema)


def validate_rows(config: str, rows: list[dict[str, Any]], schema: dict[str, Any] | None = None,
                  check: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None,
                  max_errors: int = 20) -> list[dict[str, Any]]:
    """Validate rows against the config's JSON Schema; return them normalised (defaults filled, model field order).

    Raises :class:`PublishError` listing up to ``max_errors`` problems as ``config sft, row 17 (id 'x'), field
    'completion': None is not of type 'string'`` (rows are counted from 1 in the stage output's order).
    """
    from jsonschema import Draft202012Validator

    schema = schema or load_schema(config)
    validator = Draft202012Validator(schema)
    props = set(schema.get("properties", {}))
    problems: list[str] = []
    total = 0

    def add(i: int, row: Any, fld: str, msg: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < max_errors:
            rid = row.get("id") if isinstance(row, dict) else None
            where = f"config {config}, row {i + 1}" + (f" (id {rid!r})" if rid is not None else "")
            problems.append(f"{where}, field {fld!r}: {_short(msg)}")

    fast = fast_checker(schema)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            add(i, row, "(row)", f"expected an object, got {type(row).__name__}")
            continue
        if fast is not None and fast(row):
            errors: list[Any] = []
        else:
            errors = list(validator.iter_errors(row))
        for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
            path = ".".join(str(p) for p in e.absolute_path)
            if e.validator == "required" and isinstance(e.instance, dict):
                for name in e.validator_value:
                    if name not in e.instance:
                        add(i, row, ".".join(filter(None, [path, name])), "missing (required)")
            elif e.validator == "additionalProperties" and isinstance(e.instance, dict):
                known = set(e.schema.get("properties", {})) if isinstance(e.schema, dict) else props
                for name in sorted(set(e.instance) - known):
                    add(i, row, ".".join(filter(None, [path, name])), "not a field of this config")
            else:
                add(i, row, path or "(row)", e.message)
        if check is not None:
            for fld, msg in check(row):
                add(i, row, fld, msg)
    if total:
        more = f"\n... and {total - len(problems)} more" if total > len(problems) else ""
        if config in PUBLISHED and schema != json_schema(config):
            more += (f"\n(schemas/{config}.schema.json differs from evolkit.records: regenerate it with "
                     f"`python -m evolkit.records`)")
        raise PublishError(f"{total} invalid value(s); nothing was written or pushed:\n" + "\n".join(problems) + more)
    model = PUBLISHED[config]
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(model.model_validate(row).row())
        except ValidationError as e:  # the schema file and the model disagree: the drift test should have caught it
            err = e.errors()[0]
            raise PublishError(f"config {config}, row {i + 1}, field {'.'.join(map(str, err['loc']))!r}: {err['msg']} "
                               f"(schemas/{config}.schema.json is out of date: run python -m evolkit.records)") from None
    return out


def collect(store: RunStore, options: PublishOptions) -> list[ConfigData]:
    """Each config's validated rows from the run store, in :data:`CONFIG_SPECS` order; absent configs are left out."""
    outputs = store.outputs()
    wanted = options.configs or [s.name for s in CONFIG_SPECS]
    unknown = [c for c in wanted if c not in SPECS]
    if unknown:
        raise PublishError(f"unknown config(s) {', '.join(unknown)} (known: {', '.join(SPECS)})")
    lineage = Lineage(store)
    rows_by_config: dict[str, list[dict[str, Any]]] = {}
    found: list[ConfigData] = []
    needed = set(wanted) | {d for c in wanted for d in SPECS[c].derived_from}
    for spec in CONFIG_SPECS:
        if spec.name not in needed:
            continue
        if spec.derive is not None:
            if not any(d in rows_by_config for d in spec.derived_from):
                continue
            rows = spec.derive(rows_by_config)
            source = "derived from " + ", ".join(d for d in spec.derived_from if d in rows_by_config)
        else:
            hit = next(((st, nm) for st, nm in spec.sources if nm in outputs.get(st, {})), None)
            if hit is None:
                continue
            path = outputs[hit[0]][hit[1]]
            if not path.exists():
                raise PublishError(f"{path}: listed in the manifest but missing (re-run stage {hit[0]!r})")
            rows = read_parquet(path)
            source = f"{hit[0]}/{hit[1]}"
        rows = validate_rows(spec.name, rows, check=spec.check)
        rows_by_config[spec.name] = rows
        groups = [spec.group(r, lineage) for r in rows]
        lineage.register([r["id"] for r in rows], groups)
        if spec.name in wanted and rows:
            found.append(ConfigData(spec, rows, source, groups))
    if not found:
        raise PublishError(f"{store.root}: nothing to publish (no finished output for {', '.join(wanted)}; "
                           f"run at least the sft stage)")
    return found


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


# ---------------------------------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------------------------------


def _arrow_type(s: dict[str, Any], defs: dict[str, Any]) -> Any:
    import pyarrow as pa

    if "$ref" in s:
        return _arrow_type(defs[s["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in s:
        options = [x for x in s["anyOf"] if x.get("type") != "null"]
        if len(options) != 1:
            raise PublishError(f"cannot store a union of {options} in Parquet")
        return _arrow_type(options[0], defs)
    t = s.get("type")
    if t == "string" or (t is None and "enum" in s):
        return pa.string()
    if t == "integer":
        return pa.int64()
    if t == "number":
        return pa.float64()
    if t == "boolean":
        return pa.bool_()
    if t == "array":
        return pa.list_(_arrow_type(s.get("items", {"type": "string"}), defs))
    if t == "object" and s.get("properties"):
        return pa.struct([pa.field(k, _arrow_type(v, defs)) for k, v in s["properties"].items()])
    if t == "object":  # free-form mapping (e.g. sampling parameters): JSON text, see json_columns()
        return pa.string()
    raise PublishError(f"no Parquet type for JSON Schema {s}")


def json_columns(config: str) -> list[str]:
    """Top-level columns holding free-form mappings: published as JSON text (``json.loads`` them back)."""
    schema = load_schema(config)
    out = []
    for name, prop in schema["properties"].items():
        options = [x for x in prop.get("anyOf", [prop]) if x.get("type") != "null"]
        if len(options) == 1 and options[0].get("type") == "object" and not options[0].get("properties"):
            out.append(name)
    return out


def arrow_schema(config: str) -> Any:
    """The Parquet schema of a config: types from its JSON Schema, columns in the records model's field order."""
    import pyarrow as pa

    schema = load_schema(config)
    props, defs = schema["properties"], schema.get("$defs", {})
    names = [n for n in PUBLISHED[config].model_fields if n in props] + [n for n in props
                                                                       if n not in PUBLISHED[config].model_fields]
    return pa.schema([pa.field(n, _arrow_type(props[n], defs)) for n in names])


def write_config_parquet(path: Path, config: str, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(config)
    jc = set(json_columns(config))
    table = pa.Table.from_pylist(
        [{k: (json.dumps(r.get(k), sort_keys=True, ensure_ascii=False) if k in jc and r.get(k) is not None
              else r.get(k)) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path, compression="zstd")


# ---------------------------------------------------------------------------------------------------------------------
# Card and provenance
# ---------------------------------------------------------------------------------------------------------------------

#: Hub license ids evolkit knows (https://huggingface.co/docs/hub/repositories-licenses); others map to ``other``.
HUB_LICENSES = {
    "mit", "apache-2.0", "bsd-3-clause", "bsd-2-clause", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-nd-4.0",
    "gpl-3.0", "lgpl-3.0", "odc-by", "odbl", "pddl", "openrail", "llama3", "gemma", "other", "unknown",
}
#: Licenses of the seed sources (both are MIT).
SEED_LICENSES = {"gsm8k": "mit", "math": "mit"}
SEED_HUB_IDS = {"gsm8k": "openai/gsm8k", "math": "EleutherAI/hendrycks_math"}
KNOWN_HUB_IDS = {"dolly": "databricks/databricks-dolly-15k"}
LICENSE_NAMES = {"mit": "MIT", "cc-by-sa-3.0": "CC BY-SA 3.0", "cc-by-sa-4.0": "CC BY-SA 4.0", "apache-2.0": "Apache 2.0",
                 "cc-by-4.0": "CC BY 4.0", "cc-by-3.0": "CC BY 3.0", "cc0-1.0": "CC0 1.0"}


def hub_license_id(name: str | None) -> str:
    if not name:
        return "unknown"
    lid = name.strip().lower().replace("_", "-").replace(" ", "-")
    return lid if lid in HUB_LICENSES else "other"


def _share_alike(lid: str) -> bool:
    return "-sa-" in f"-{lid}-"


def _size_category(n: int) -> str:
    for limit, cat in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                       (10_000_000, "1M<n<10M")):
        if n < limit:
            return cat
    return "10M<n<100M"


def _package_versions() -> dict[str, str]:
    names = ["evolkit", "datasets", "huggingface-hub", "pyarrow", "pydantic", "jsonschema", "Jinja2", "transformers",
             "torch", "trl", "vllm", "openai", "math-verify", "argilla"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return "" if v is None else str(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _flat(v: Any) -> bool:
    return _is_scalar(v) or (isinstance(v, dict) and all(_is_scalar(x) for x in v.values())) or (
        isinstance(v, list) and all(_is_scalar(x) for x in v))


def _cell(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or "-"
    return _fmt(v)


def summary_items(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage summary as card items: scalars, flat dicts (inline) and lists of records (tables).

    Table columns nested deeper than one level are left out (``provenance.json`` has every figure)."""
    items = []
    for k, v in summary.items():
        if k in ("plots", "plot") or v is None or v == "":
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = [c for c in dict.fromkeys(c for x in v for c in x) if all(_flat(x.get(c)) for x in v)]
            items.append({"key": k, "kind": "table", "columns": cols,
                          "rows": [[_cell(x.get(c)) for c in cols] for x in v]})
            continue
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            cols = [c for c in dict.fromkeys(c for x in v.values() for c in x)
                    if all(_flat(x.get(c)) for x in v.values())]
            items.append({"key": k, "kind": "table", "columns": ["", *cols],
                          "rows": [[str(a)] + [_cell(x.get(c)) for c in cols] for a, x in v.items()]})
            continue
        if _is_scalar(v):
            items.append({"key": k, "kind": "scalar", "value": _fmt(v)})
        elif isinstance(v, dict) and all(_is_scalar(x) for x in v.values()):
            items.append({"key": k, "kind": "scalar", "value": ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())})
        else:
            items.append({"key": k, "kind": "scalar", "value": _short(_inline(v), 400)})
    return items


def _inline(v: Any) -> str:
    """A nested value on one line: ``a: 1, b: (c: 2, d: 3)``."""
    if isinstance(v, dict):
        return ", ".join(f"{a}: {'(' + _inline(b) + ')' if isinstance(b, (dict, list)) and b else _inline(b)}"
                         for a, b in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_inline(x) for x in v) or "-"
    return _fmt(v)


def _find_key(obj: Any, needle: str) -> list[tuple[str, Any]]:
    hits = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if needle in str(k).lower():
                hits.append((str(k), v))
            else:
                hits.extend(_find_key(v, needle))
    return hits


def _growth(datasets: dict[str, ConfigData]) -> list[dict[str, Any]]:
    """Rows per evolution round from the published data (round 0: the seed problems' SFT rows)."""
    rounds: dict[int, dict[str, Any]] = {}
    for r in datasets["sft"].rows if "sft" in datasets else []:
        if r.get("kind") == "math":
            d = rounds.setdefault(int(r.get("round") or 0), {"sft_rows": 0})
            d["sft_rows"] = d.get("sft_rows", 0) + 1
    for r in datasets["evol"].rows if "evol" in datasets else []:
        d = rounds.setdefault(int(r["round"]), {"sft_rows": 0})
        d["evolved"] = d.get("evolved", 0) + 1
        d[r["direction"]] = d.get(r["direction"], 0) + 1
        d["flagged"] = d.get("flagged", 0) + int(bool(r.get("flagged")))
        d["with_pseudo_gold"] = d.get("with_pseudo_gold", 0) + int(r.get("pseudo_gold") is not None)
        d.setdefault("_agreement", []).append(float(r["agreement"]))
    out, total = [], 0
    for rnd in sorted(rounds):
        d = rounds[rnd]
        ag = d.pop("_agreement", [])
        added = d.get("evolved", d.get("sft_rows", 0)) if rnd else d.get("sft_rows", 0)
        total += added
        out.append({"round": rnd, "sft_rows": d.get("sft_rows", 0), "evolved": d.get("evolved", 0),
                    "upward": d.get("upward", 0), "downward": d.get("downward", 0), "flagged": d.get("flagged", 0),
                    "with_pseudo_gold": d.get("with_pseudo_gold", 0),
                    "mean_agreement": round(sum(ag) / len(ag), 3) if ag else None, "cumulative": total})
    return out


def _review_stats(d: ConfigData) -> dict[str, Any]:
    rows = d.rows
    st: dict[str, Any] = {"config": d.name, "rows": len(rows), "source": d.source,
                          "reviewed_stage": d.source.startswith("review/")}
    if rows and "label_source" in rows[0]:
        human = sum(r.get("label_source") == "human" for r in rows)
        st["human_share"] = human / len(rows)
        st["human_rows"] = human
        # PRM rows with some (not all) steps resolved by reviewers keep label_source model, labeller "<x>+human"
        st["partial_rows"] = sum(r.get("label_source") != "human" and "+human" in str(r.get("labeller") or "")
                                 for r in rows)
    # Reviewer agreement, over human-labelled rows (model rows' `agreement` is the judge's own consistency and
    # evol's is teacher self-consistency: neither is review agreement).
    ag = [r["agreement"] for r in rows if r.get("label_source") == "human" and isinstance(r.get("agreement"),
                                                                                          (int, float))]
    if ag:
        st["agreement"] = sum(ag) / len(ag)
    return st


def config_licenses(d: ConfigData, od_licenses: dict[str, str]) -> dict[str, Any]:
    """The license a config must carry, from the sources of its rows: MIT seeds, plus any open-domain source's license."""
    sources: dict[str, int] = {}
    for r in d.rows:
        s = r.get("source")
        if s:
            sources[s] = sources.get(s, 0) + 1
    parts = []
    for s, n in sorted(sources.items()):
        lid = od_licenses.get(s) or SEED_LICENSES.get(s) or "mit"  # other sources derive from the MIT seeds
        parts.append({"source": s, "rows": n, "license": lid, "license_name": LICENSE_NAMES.get(lid, lid)})
    if not parts:
        parts = [{"source": "gsm8k/math (derived)", "rows": len(d.rows), "license": "mit", "license_name": "MIT"}]
    lids = {p["license"] for p in parts}
    sa = sorted(x for x in lids if _share_alike(x))
    if sa:
        lid = sa[-1]
    elif lids == {"mit"}:
        lid = "mit"
    else:
        lid = sorted(lids - {"mit"})[0]
    sa_rows = sum(p["rows"] for p in parts if _share_alike(p["license"]))
    return {"license": lid, "license_name": LICENSE_NAMES.get(lid, lid), "parts": parts, "share_alike": bool(sa),
            "share_alike_rows": sa_rows}


def _open_domain_licenses(store: RunStore) -> dict[str, str]:
    out = {}
    for _stage, info in store.manifest()["stages"].items():
        s = info.get("summary") or {}
        if s.get("open_domain_source") and s.get("open_domain_license"):
            out[s["open_domain_source"]] = hub_license_id(s["open_domain_license"])
    return out


def run_identity(store: RunStore) -> dict[str, Any]:
    cfg = store.load_config()
    m = store.manifest()["stages"]
    first = next(iter(m.values()), {}) if m else {}
    key = json.dumps([cfg.get("name"), (m.get("seeds") or first).get("finished_at")], sort_keys=True)
    return {"name": cfg.get("name") or store.root.name, "id": hashlib.sha256(key.encode()).hexdigest()[:16]}


@dataclass
class Build:
    """A staged publish folder and what is in it."""

    folder: Path
    datasets: list[ConfigData]
    files: dict[str, dict[str, Any]]  # path in repo -> {bytes, sha256, rows?}
    card: str
    provenance: dict[str, Any]
    license: str
    run: dict[str, Any]


def _models(cfg: dict[str, Any], by: dict[str, ConfigData]) -> list[dict[str, Any]]:
    out = []
    main_roles = ["solver", "evolver"] + [r for r, k in (("judge", "judge_backend"),) if not cfg.get(k)]
    for role, key in ((f"main ({', '.join(main_roles)})", "backend"), ("judge", "judge_backend"),
                      ("second evolver", "evolver_backend")):
        b = cfg.get(key)
        if b:
            out.append({"role": role, "kind": b.get("kind"), "model": b.get("model")})
    seen: dict[str, set[str]] = {}
    for name, col in (("sft", "model"), ("evol", "model"), ("irm_rankings", "judge"), ("prm", "labeller")):
        if name in by:
            vals = {str(r.get(col)) for r in by[name].rows if r.get(col)}
            if vals:
                seen[f"{name}.{col}"] = vals
    for k, vals in seen.items():
        out.append({"role": f"in data ({k})", "kind": "", "model": ", ".join(sorted(vals))})
    return out


def _seed_rows(cfg: dict[str, Any], store: RunStore) -> list[dict[str, Any]]:
    counts = (store.stage_info("seeds").get("summary") or {}).get("by_source", {})
    out = []
    for s in cfg.get("seeds") or []:
        src = s.get("source")
        where = s.get("hub_id") or s.get("path") or "evolkit's packaged sample (evolkit/data)"
        out.append({"source": src, "where": where, "split": s.get("split", "train"), "n": s.get("n") or "all",
                    "used": counts.get(src, ""), "license": LICENSE_NAMES.get(SEED_LICENSES.get(src, ""), "see source"),
                    "hub_id": s.get("hub_id") or SEED_HUB_IDS.get(src)})
    return out


def render_card(context: dict[str, Any], card_data: Any, template_dir: Path = CARD_DIR) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["fmt"] = _fmt
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    env.filters["cell"] = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")
    try:
        return env.get_template(CARD_TEMPLATE).render(card_data=card_data.to_yaml(), **context)
    except jinja2.TemplateError as e:
        raise PublishError(f"{template_dir / CARD_TEMPLATE}:{getattr(e, 'lineno', '?')}: card template error: "
                           f"{getattr(e, 'message', e)}") from None


def build(run_dir: str | os.PathLike[str], out_dir: Path, options: PublishOptions,
          repo_id: str | None = None, datasets: list[ConfigData] | None = None) -> Build:
    """Collect, validate, split and write the whole publish folder into ``out_dir`` (which must be empty)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    store = RunStore(run_dir)
    cfg = scrub(store.load_config())
    run = run_identity(store)
    if datasets is None:
        datasets = collect(store, options)
        seed = options.seed if options.seed is not None else int(cfg.get("seed") or 0)
        assign_splits(datasets, options.test_size, seed, options.min_split_rows)
    by = {d.name: d for d in datasets}
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}

    def record(rel: str, **extra: Any) -> None:
        data = (out_dir / rel).read_bytes()
        files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}

    # Data files
    configs_yaml = []
    for d in datasets:
        entry: dict[str, Any] = {"config_name": d.name}
        if d is datasets[0]:
            entry["default"] = True
        entry["data_files"] = []
        for split in d.splits:
            rel = f"data/{d.name}/{split}-00000-of-00001.parquet"
            write_config_parquet(out_dir / rel, d.name, d.split_rows(split))
            record(rel, rows=len(d.splits[split]))
            entry["data_files"].append({"split": split, "path": f"data/{d.name}/{split}-*.parquet"})
        configs_yaml.append(entry)

    # Plots of the stages that ran
    plots: dict[str, list[str]] = {}
    if options.include_plots:
        for stage in store.manifest()["stages"]:
            sdir = store.root / stage
            for png in sorted(sdir.glob("*.png")) if sdir.is_dir() else []:
                rel = f"images/{stage}/{png.name}"
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, out_dir / rel)
                record(rel)
                plots.setdefault(stage, []).append(rel)

    # Licenses
    od = _open_domain_licenses(store)
    lic = {d.name: config_licenses(d, od) for d in datasets}
    lids = {x["license"] for x in lic.values()}
    sa = sorted(x for x in lids if _share_alike(x))
    repo_license = sa[-1] if sa else ("mit" if lids == {"mit"} else sorted(lids - {"mit"})[0])

    # Card
    manifest = store.manifest()["stages"]
    stages = [{"name": n, "finished_at": i.get("finished_at"), "seconds": i.get("seconds"),
               "outputs": {k: v.get("rows") for k, v in (i.get("outputs") or {}).items()},
               "summary": summary_items(i.get("summary") or {}), "plots": plots.get(n, []),
               "config": (cfg.get("stages") or {}).get(n)} for n, i in manifest.items() if i.get("status") == "done"]
    seeds = _seed_rows(cfg, store)
    source_datasets = sorted({s["hub_id"] for s in seeds if s["hub_id"]} | {
        next((h for k, h in KNOWN_HUB_IDS.items() if k in src), src) for src in od
        if any(p["source"] == src for x in lic.values() for p in x["parts"])})
    human = any(r.get("human_rows") for r in [_review_stats(d) for d in datasets])
    tags = list(dict.fromkeys(["math", "reasoning", "synthetic", "evol-instruct", "wizardmath", "rleif", "evolkit",
                               *options.tags]))
    card_data = DatasetCardData(
        license=repo_license, language=options.language, pretty_name=options.pretty_name or f"evolkit: {run['name']}",
        task_categories=["text-generation", "question-answering"], size_categories=[
            _size_category(max(len(d.rows) for d in datasets))], tags=tags, source_datasets=source_datasets or None,
        annotations_creators=["machine-generated", *(["expert-generated"] if human else [])],
        language_creators=["machine-generated", "found"], multilinguality=["monolingual"], configs=configs_yaml,
    )
    decontam = [{"stage": n, "key": k, "enabled": not (isinstance(v, dict) and v.get("enabled") is False),
                 "entries": summary_items(v if isinstance(v, dict) else {k: v})}
                for n, i in manifest.items() for k, v in _find_key(i.get("summary") or {}, "decontam")]
    rs = (manifest.get("review") or {}).get("summary") or {}
    review_summary = ([{"kind": k, "entries": summary_items(v)} for k, v in rs.items() if isinstance(v, dict)]
                      + ([{"kind": "", "entries": summary_items({k: v for k, v in rs.items()
                                                                 if not isinstance(v, dict)})}]
                         if any(not isinstance(v, dict) for v in rs.values()) else []))
    context = {
        "pretty_name": card_data.pretty_name, "repo_id": repo_id, "run": run, "cfg": cfg,
        "configs": [{"name": d.name, "description": d.spec.description, "format": d.spec.trl_format,
                     "source": d.source, "counts": d.counts(), "rows": len(d.rows),
                     "columns": list(arrow_schema(d.name).names), **lic[d.name]} for d in datasets],
        "absent": [s.name for s in CONFIG_SPECS if s.name not in by and (not options.configs or s.name in options.configs)],
        "stages": stages, "stage_names": [s["name"] for s in stages], "seeds": seeds, "models": _models(cfg, by),
        "sampling": cfg.get("sampling") or {}, "growth": _growth(by), "review": [_review_stats(d) for d in datasets],
        "review_ran": "review" in manifest, "review_summary": review_summary,
        "decontamination": [d for d in decontam if d["enabled"]],
        "decontamination_disabled": [d["stage"] for d in decontam if not d["enabled"]], "license": repo_license,
        "license_name": LICENSE_NAMES.get(repo_license, repo_license), "licenses": lic,
        "share_alike": any(x["share_alike"] for x in lic.values()), "split": {
            "test_size": options.test_size, "seed": options.seed if options.seed is not None else cfg.get("seed", 0),
            "min_split_rows": options.min_split_rows},
        "evolkit_version": __version__, "yaml": _yaml,
    }
    card = render_card(context, card_data)
    try:
        parsed = DatasetCard(card)
    except Exception as e:  # pragma: no cover - a template bug
        raise PublishError(f"the generated card does not parse: {e}") from None
    if [c["config_name"] for c in parsed.data.to_dict().get("configs", [])] != [d.name for d in datasets]:
        raise PublishError("the generated card lost its configs: check hub_cards/dataset_card.md.jinja")
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    record("README.md")

    provenance = {
        "generator": GENERATOR, "evolkit_version": __version__, "run": run,
        "config": cfg, "publish_options": scrub(options.model_dump(mode="json", exclude={"local"})),
        "packages": _package_versions(),
        "stages": {n: {k: i.get(k) for k in ("status", "finished_at", "seconds", "outputs", "summary")}
                   for n, i in manifest.items()},
        "configs": {d.name: {"source": d.source, "rows": len(d.rows), "splits": d.counts(),
                             "license": lic[d.name]["license"],
                             "schema_sha256": hashlib.sha256(json.dumps(load_schema(d.name), sort_keys=True)
                                                             .encode()).hexdigest()} for d in datasets},
        "license": repo_license,
        "files": dict(sorted(files.items())),
    }
    provenance = scrub(provenance)
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    record("provenance.json")
    return Build(out_dir, datasets, files, card, provenance, repo_license, run)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=120).rstrip()


# ---------------------------------------------------------------------------------------------------------------------
# Targets: local folder and Hub
# ---------------------------------------------------------------------------------------------------------------------


def _is_publish_folder(path: Path) -> dict[str, Any] | None:
    p = path / "provenance.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def write_local(staged: Path, dest: Path, run: dict[str, Any], overwrite: bool = False) -> None:
    """Move a staged folder to ``dest``, replacing an earlier publish there (never a folder evolkit did not write)."""
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise PublishError(f"{dest}: exists and is not a folder")
        earlier = _is_publish_folder(dest)
        if any(dest.iterdir()) and earlier is None:
            raise PublishError(f"{dest}: folder exists and is not an evolkit publish folder (no provenance.json); "
                               f"choose an empty or new folder")
        if earlier is not None and earlier.get("run", {}).get("id") != run["id"] and not overwrite:
            raise PublishError(f"{dest}: holds a publish of another run ({earlier.get('run', {}).get('name')!r}); "
                               f"pass --overwrite to replace it or choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    final = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    shutil.rmtree(final)
    shutil.copytree(staged, final)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(final, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def _server_message(e: BaseException) -> str:
    msg = getattr(e, "server_message", None) or str(e).splitlines()[0]
    return _short(msg, 300)


def hub_error(e: BaseException, repo_id: str, action: str, user: str | None = None) -> PublishError:
    """A clear, actionable message for an HTTP error of the Hub client."""
    status = _status(e)
    detail = _server_message(e)
    if status == 401:
        return PublishError(f"{action} {repo_id}: the Hub rejected the token (HTTP 401: {detail}). Set HF_TOKEN to a "
                            f"valid token with write access, or run `hf auth login`")
    if status == 403:
        who = f"user {user!r}" if user else "this token"
        return PublishError(f"{action} {repo_id}: {who} may not write to {repo_id.split('/')[0]!r} (HTTP 403: "
                            f"{detail}). Use a token with write permission to that user or organisation, or publish "
                            f"under your own namespace")
    if status == 404:
        return PublishError(f"{action} {repo_id}: not found or not visible with this token (HTTP 404: {detail})")
    if status == 409:
        return PublishError(f"{action} {repo_id}: conflict (HTTP 409: {detail}). The repo already exists or another "
                            f"commit is in progress; nothing was committed")
    if status == 412:
        return PublishError(f"{action} {repo_id}: the repo changed while publishing (HTTP 412: {detail}); someone "
                            f"else committed after this publish read it. Nothing was committed: run publish again")
    return PublishError(f"{action} {repo_id} failed ({'HTTP ' + str(status) if status else type(e).__name__}: "
                        f"{detail})")


def _is_network_error(e: BaseException) -> bool:
    mod = type(e).__module__.split(".")[0]
    return isinstance(e, (ConnectionError, TimeoutError)) or mod in ("httpx", "httpx2", "httpcore", "requests",
                                                                      "urllib3")


def _hub_call(repo_id: str, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a Hub client method; HTTP and network errors become :class:`PublishError` (409 is re-raised as is)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn(*args, **kwargs)
    except HfHubHTTPError as e:
        raise hub_error(e, repo_id, action) from None
    except PublishError:
        raise
    except Exception as e:
        if _is_network_error(e):
            raise PublishError(f"{action} {repo_id}: cannot reach the Hub at {constants.ENDPOINT} "
                               f"({type(e).__name__}: {_short(e, 200)}); nothing was committed") from None
        raise


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_files(api: Any, repo_id: str, revision: str | None = None) -> dict[str, dict[str, Any]]:
    from huggingface_hub.hf_api import RepoFile

    out = {}
    for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, revision=revision):
        if isinstance(e, RepoFile):
            out[e.path] = {"blob_id": e.blob_id, "sha256": e.lfs.sha256 if e.lfs else None, "size": e.size}
    return out


def _file_state(local: Path, rel: str, sha256: str, remote: dict[str, dict[str, Any]] | None) -> str:
    if remote is None:
        return "add"
    r = remote.get(rel)
    if r is None:
        return "new"
    if (r.get("sha256") and r["sha256"] == sha256) or r.get("blob_id") == git_blob_sha1(local / rel):
        return "unchanged"
    return "changed"


@dataclass
class PushPlan:
    repo_id: str
    exists: bool | None
    adds: list[tuple[str, str, int]]  # (path, state, bytes)
    deletes: list[str]
    note: str = ""


def _stale(remote: dict[str, Any], files: dict[str, Any]) -> list[str]:
    return sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in files)


def _check_owner(api: Any, repo_id: str, remote: dict[str, Any], run: dict[str, Any], head: str,
                 overwrite: bool) -> None:
    """An existing repo may be updated when it is empty or holds a publish of this very run (or with --overwrite)."""
    if overwrite or not (set(remote) - {".gitattributes"}):
        return
    earlier = None
    if "provenance.json" in remote:
        path = api.hf_hub_download(repo_id, "provenance.json", repo_type="dataset", revision=head)
        try:
            earlier = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError:
            earlier = None
    if not isinstance(earlier, dict) or earlier.get("generator") != GENERATOR:
        raise PublishError(f"dataset repo {repo_id} already exists and holds files evolkit did not publish "
                           f"(HTTP 409 on create). Choose another --repo, or pass --overwrite to publish into it "
                           f"(one commit; its history stays)")
    if (earlier.get("run") or {}).get("id") != run["id"]:
        raise PublishError(f"dataset repo {repo_id} already exists and holds another run's data (run "
                           f"{(earlier.get('run') or {}).get('name')!r}). Choose another --repo, or pass --overwrite "
                           f"to replace it (one commit; its history stays)")


def _api(token: str | None) -> tuple[Any, str]:
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN (a token with write access, "
                           "https://huggingface.co/settings/tokens) or run `hf auth login`")
    return HfApi(token=token), token


def plan_push(b: Build, repo_id: str, token: str | None) -> PushPlan:
    """What a push would do (for --dry-run): compares with the remote repo when it can be read."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    note, remote, exists = "", None, None
    try:
        api, _ = _api(token)
        try:
            head = api.dataset_info(repo_id).sha  # fails fast when the Hub is unreachable (tree listing retries)
            remote = _remote_files(api, repo_id, revision=head)
            exists = True
        except RepositoryNotFoundError:
            remote, exists = {}, False
    except PublishError as e:
        note = f"remote state unknown: {e}"
    except HfHubHTTPError as e:
        note = f"remote state unknown: {hub_error(e, repo_id, 'reading')}"
    except Exception as e:
        if not _is_network_error(e):
            raise
        note = f"remote state unknown: cannot reach the Hub ({type(e).__name__}: {_short(e, 200)})"
    adds = [(p, _file_state(b.folder, p, f["sha256"], remote), f["bytes"]) for p, f in sorted(b.files.items())]
    return PushPlan(repo_id, exists, adds, _stale(remote or {}, b.files), note)


def push(b: Build, repo_id: str, token: str | None = None, private: bool = False, overwrite: bool = False,
         commit_message: str | None = None) -> dict[str, Any]:
    """Create the dataset repo if needed and push the folder in one commit. Returns {repo_id, commit, url, ...}."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api, _ = _api(token)
    created = False
    try:
        _hub_call(repo_id, "creating dataset repo", api.create_repo, repo_id, repo_type="dataset", private=private,
                  exist_ok=False)
        created = True
    except PublishError as e:
        if "(HTTP 409" not in str(e):
            raise
    except ValueError as e:  # malformed repo id (HFValidationError)
        raise PublishError(f"--repo {repo_id!r}: {e}") from None
    info = _hub_call(repo_id, "reading dataset repo", api.dataset_info, repo_id)
    head = info.sha
    remote = _hub_call(repo_id, "reading dataset repo", _remote_files, api, repo_id, revision=head)
    if not created:
        _hub_call(repo_id, "reading dataset repo", _check_owner, api, repo_id, remote, b.run, head, overwrite)
    ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(b.folder / p)) for p in sorted(b.files)]
    deletes = _stale(remote, b.files)
    ops += [CommitOperationDelete(path_in_repo=p) for p in deletes]
    counts = ", ".join(f"{d.name} {sum(d.counts().values())}" for d in b.datasets)
    message = commit_message or f"evolkit publish of run {b.run['name']} ({counts})"
    commit = _hub_call(repo_id, "pushing to", api.create_commit, repo_id, ops, commit_message=message,
                       repo_type="dataset", parent_commit=head,
                       commit_description=f"evolkit {__version__}, run id {b.run['id']}")
    is_private = bool(getattr(info, "private", private))
    note = ("the repo already existed and is public: --private only applies when creating it"
            if private and not created and not is_private else None)
    return {"repo_id": repo_id, "commit": commit.oid, "url": commit.commit_url,
            "created": created, "changed": commit.oid != head, "deleted": deletes, "private": is_private, "note": note}


# ---------------------------------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PublishResult:
    configs: dict[str, dict[str, int]]  # config -> split -> rows
    local: list[Path] = field(default_factory=list)
    repos: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    license: str = ""
    #: (target, config) pairs that load_dataset takes: target is the local folder or the repo id.
    targets: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def hint(self) -> str:
        return load_hint(self)


def load_hint(result: PublishResult) -> str:
    """The lines printed after a publish: what went where and how to ``load_dataset`` it."""
    lines = []
    if result.dry_run:
        lines.append("dry run: nothing was written or pushed")
        lines.extend(result.plan)
        return "\n".join(lines)
    for name, counts in result.configs.items():
        lines.append(f"  {name:<13} " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    where = [str(p) for p in result.local] + [r["repo_id"] + ("" if r.get("changed", True) else " (unchanged)")
                                             for r in result.repos]
    head = f"published {len(result.configs)} config(s) ({result.license} license) to {', '.join(where)}:"
    lines.insert(0, head)
    lines.extend(f"note: {r['repo_id']}: {r['note']}" for r in result.repos if r.get("note"))
    lines.append("load them with:")
    lines.append("    from datasets import load_dataset")
    for target, configs in result.targets[:2]:
        for c in configs[:1]:
            lines.append(f"    ds = load_dataset({target!r}, {c!r})   # configs: {', '.join(configs)}")
    return "\n".join(lines)


def _options(run_dir: Path, **kwargs: Any) -> PublishOptions:
    store_cfg = RunStore(run_dir).load_config() if (run_dir / "config.yaml").exists() else {}
    base = dict(store_cfg.get("publish") or {})
    if kwargs.get("local") is not None or kwargs.get("repo") is not None:
        base.pop("local", None)  # a target given by the caller replaces the config's targets (no surprise push)
        base.pop("repo", None)
    base.update({k: v for k, v in kwargs.items() if v is not None})
    try:
        return PublishOptions.model_validate(base)
    except ValidationError as e:
        raise PublishError("; ".join(f"publish.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None


def publish_run(run_dir: str | os.PathLike[str], local: str | os.PathLike[str] | None = None, repo: str | None = None,
                *, private: bool | None = None, dry_run: bool = False, token: str | None = None,
                separate_repos: bool | None = None, configs: list[str] | None = None, test_size: float | None = None,
                min_split_rows: int | None = None, seed: int | None = None, overwrite: bool | None = None,
                pretty_name: str | None = None, commit_message: str | None = None,
                echo: Callable[[str], Any] | None = None) -> PublishResult:
    """Publish a run folder's datasets to a local folder (default ``RUN_DIR/dataset``) and/or a Hub dataset repo.

    Everything is validated and written to a staging folder first; the run folder is only read. With ``repo`` and
    ``local`` both given, the local folder is written and the same files are pushed. ``echo`` (e.g. ``print``) gets
    the :func:`load_hint` text. Raises :class:`PublishError` with a message a user can act on.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise PublishError(f"{run_dir}: not a run folder (no manifest.json); run `evolkit run` first")
    opts = _options(run_dir, repo=repo, local=str(local) if local is not None else None, private=private,
                    separate_repos=separate_repos, configs=configs, test_size=test_size, min_split_rows=min_split_rows,
                    seed=seed, overwrite=overwrite, pretty_name=pretty_name, commit_message=commit_message)
    if opts.local is None and opts.repo is None:
        opts.local = str(run_dir / DEFAULT_LOCAL_NAME)
    if opts.repo is not None and opts.repo.count("/") != 1:
        raise PublishError(f"--repo {opts.repo!r}: expected USER/NAME (or ORG/NAME)")
    if opts.repo is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(opts.repo)
        except HFValidationError as e:
            raise PublishError(f"--repo {opts.repo!r}: not a valid repo id ({e})") from None
    local_dir = Path(opts.local) if opts.local else None
    if local_dir is not None and local_dir.resolve() == run_dir.resolve():
        raise PublishError(f"--local {local_dir}: that is the run folder itself; choose another folder")
    if local_dir is not None:
        check_output_folder(local_dir, "--local folder")

    store = RunStore(run_dir)
    datasets = collect(store, opts)
    cfg = store.load_config()
    split_seed = opts.seed if opts.seed is not None else int(cfg.get("seed") or 0)
    assign_splits(datasets, opts.test_size, split_seed, opts.min_split_rows)
    # One publish unit = (sub-folder, repo id, configs): all configs together, or one per config.
    units: list[tuple[str, str | None, list[ConfigData]]]
    if opts.separate_repos:
        units = [(d.name, f"{opts.repo}-{d.name.replace('_', '-')}" if opts.repo else None, [d]) for d in datasets]
    else:
        units = [("", opts.repo, datasets)]
    result = PublishResult(configs={d.name: d.counts() for d in datasets}, dry_run=dry_run)

    with tempfile.TemporaryDirectory(prefix="evolkit-publish-") as tmp:
        builds = []
        for sub, repo_id, ds in units:
            b = build(run_dir, Path(tmp) / (sub or "all"), opts, repo_id=repo_id, datasets=ds)
            builds.append((sub, repo_id, b))
        result.license = ", ".join(sorted({b.license for _, _, b in builds}))
        if dry_run:
            for sub, repo_id, b in builds:
                if local_dir is not None:
                    dest = local_dir / sub if sub else local_dir
                    result.plan.append(f"would write {dest}/ ({len(b.files)} files):")
                    result.plan.extend(f"  {p}  {f['bytes']} bytes" + (f", {f['rows']} rows" if 'rows' in f else '')
                                       for p, f in sorted(b.files.items()))
                if repo_id is not None:
                    plan = plan_push(b, repo_id, token)
                    state = {True: "exists", False: "would be created", None: "unknown"}[plan.exists]
                    result.plan.append(f"would push to dataset repo {repo_id} ({state}) in one commit"
                                       f"{' (private)' if opts.private else ''}:")
                    result.plan.extend(f"  {st:<9} {p}  {n} bytes" for p, st, n in plan.adds)
                    result.plan.extend(f"  delete    {p}" for p in plan.deletes)
                    if plan.note:
                        result.plan.append(f"  ({plan.note})")
            if echo:
                echo(load_hint(result))
            return result
        for sub, repo_id, b in builds:
            if local_dir is not None:
                dest = local_dir / sub if sub else local_dir
                write_local(b.folder, dest, b.run, overwrite=opts.overwrite)
                result.local.append(dest)
                result.targets.append((str(dest), [d.name for d in b.datasets]))
        for sub, repo_id, b in builds:
            if repo_id is not None:
                info = push(b, repo_id, token=token, private=opts.private, overwrite=opts.overwrite,
                            commit_message=opts.commit_message)
                result.repos.append(info)
                result.targets.append((repo_id, [d.name for d in b.datasets]))
    if echo:
        echo(load_hint(result))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    publish_run(
        args.run_dir, local=args.local, repo=args.repo, private=True if args.private else None, dry_run=args.dry_run,
        separate_repos=True if args.separate_repos else None,
        configs=[c for x in args.configs for c in x.split(",") if c] if args.configs else None,
        test_size=args.test_size, min_split_rows=args.min_split_rows, seed=args.seed,
        overwrite=True if args.overwrite else None, pretty_name=args.pretty_name, commit_message=args.message,
        echo=lambda s: print(s, file=sys.stdout),
    )
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "publish", help="publish a run's datasets (Parquet configs + card) to a local folder or a Hub dataset repo",
        description="Validate every dataset of a run against schemas/, split it, and write it as one dataset repo "
                    "(README.md card with configs, data/<config>/<split>-*.parquet, images/, provenance.json): to a "
                    "local folder (default RUN_DIR/dataset) and/or a Hugging Face Hub dataset repo in one commit. "
                    "Pushing uses HF_TOKEN or the login token.",
    )
    p.add_argument("run_dir", help="the run folder (runs/<name>)")
    p.add_argument("--repo", metavar="USER/NAME", help="Hub dataset repo to push to (created when missing)")
    p.add_argument("--local", metavar="DIR", help="local folder (default: RUN_DIR/dataset when --repo is not given)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--dry-run", action="store_true", help="validate and show what would be written or pushed")
    p.add_argument("--separate-repos", action="store_true",
                   help="one repo (or sub-folder) per config: USER/NAME-<config>")
    p.add_argument("--configs", action="append", metavar="NAME[,NAME]",
                   help=f"publish only these configs (default: all that exist; known: {', '.join(SPECS)})")
    p.add_argument("--test-size", type=float, help="share of root problems in the test split (default 0.1)")
    p.add_argument("--min-split-rows", type=int, help="configs with fewer rows get a train split only (default 100)")
    p.add_argument("--seed", type=int, help="split seed (default: the run's seed)")
    p.add_argument("--overwrite", action="store_true",
                   help="publish over another run's publish (a local folder or a Hub repo), or into an existing Hub "
                        "repo evolkit did not publish: data/ and images/ are replaced by this run's, README.md and "
                        "provenance.json overwritten, other files stay (one commit; the history stays). A local "
                        "folder evolkit did not write is never replaced")
    p.add_argument("--pretty-name", help="the card's title / pretty_name")
    p.add_argument("-m", "--message", help="commit message")
    p.set_defaults(func=cmd_publish)
