"""The YAML run config as pydantic models.

Each stage module owns its own config model (``evolkit.stages.<stage>.Config``); this module assembles them. Errors name
the file and the field (``config.yaml: stages.sft.k: Input should be greater than 0``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .types import BACKEND_RUNTIME_FIELDS, BackendConfig, ExecutorConfig, SamplingConfig

__all__ = ["BackendConfig", "ExecutorConfig", "SamplingConfig", "SeedSource", "RunConfig", "load_config",
           "apply_overrides", "data_differences"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedSource(_Model):
    """Where seed problems come from: a local file/folder (``path``) or a Hub dataset (``hub_id``)."""

    source: Literal["gsm8k", "math"]
    path: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    split: str = "train"
    n: int | None = Field(None, gt=0, description="sample this many (all when unset)")
    stratify: bool = True
    #: Which n: a seeded random sample (stratified by MATH level and subject), or the easiest (lowest MATH level, then
    #: fewest reference-solution steps and shortest question; for small models that solve only easy problems).
    pick: Literal["random", "easiest"] = "random"

    @model_validator(mode="after")
    def _one_location(self) -> SeedSource:
        if self.path and self.hub_id:
            raise ValueError("give either path or hub_id, not both")
        return self


def _stage_models() -> dict[str, type[BaseModel]]:
    from .stages import STAGE_CONFIGS

    return STAGE_CONFIGS


class RunConfig(_Model):
    #: The run's name: its folder is runs/<name> unless output_dir is given.
    name: str = Field("evolkit-run", min_length=1)
    output_dir: str | None = None
    seed: int = 0
    backend: BackendConfig = BackendConfig()
    #: Backend of the judge (IRM ranking, PRM step labels); the main backend when unset.
    judge_backend: BackendConfig | None = None
    #: A second evolver (IRM needs variants from at least two evolvers).
    evolver_backend: BackendConfig | None = None
    #: The policy being trained (e.g. a checkpoint saved by trainers.sft): PRM labels its own solutions
    #: (``stages.prm.sources: [policy]``).
    policy_backend: BackendConfig | None = None
    sampling: SamplingConfig = SamplingConfig()
    seeds: list[SeedSource] = Field([SeedSource(source="gsm8k"), SeedSource(source="math")], min_length=1)
    #: Stages to run, in order, with their settings (see each stage's Config).
    stages: dict[str, Any] = {"sft": {}}
    publish: dict[str, Any] | None = None
    #: Where generation steps run: this process (local) or a Ray cluster (see evolkit.executors).
    executor: ExecutorConfig = ExecutorConfig()
    #: A stage whose requests failed at least this share (after retries) ends the run with an error and is not
    #: marked done (an authentication error ends it at once); 1.0: only when every request failed.
    max_failed_share: float = Field(1.0, gt=0, le=1)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if "/" in name or "\\" in name or name.strip(".") == "":
            raise ValueError(f"{name!r} is not a folder name (it names runs/<name>; use output_dir for a path)")
        return name

    @model_validator(mode="after")
    def _validate_stages(self) -> RunConfig:
        models = _stage_models()
        parsed: dict[str, Any] = {}
        for name, value in self.stages.items():
            if name not in models:
                raise ValueError(f"unknown stage {name!r} (known: {', '.join(models)})")
            if isinstance(value, models[name]):
                parsed[name] = value
                continue
            try:
                parsed[name] = models[name].model_validate(value or {})
            except ValidationError as e:  # keep the full path: stages.<name>.<field>
                raise ValueError("; ".join(
                    f"{'.'.join(['stages', name, *(str(p) for p in err['loc'])])}: "
                    f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors()
                )) from None
        self.stages = parsed
        self._check_roles()
        return self

    def _check_roles(self) -> None:
        """Recipe steps that need a model of their own fail here, before any work, not halfway through a run."""
        prm = self.stages.get("prm")
        if prm is not None and "policy" in prm.sources and self.policy_backend is None:
            raise ValueError("stages.prm.sources: 'policy' labels the solutions of the model being trained: give it as "
                             "policy_backend (e.g. {kind: transformers, model: out/sft}), or label the teacher's "
                             "solutions with sources: [sft, evolve]")
        irm = self.stages.get("irm")
        if irm is not None and not irm.allow_single_evolver:
            roles = {e.role for e in irm.evolvers} if irm.evolvers else {"main", "evolver2"}
            models = {(b.kind, b.model) for r in roles if (b := self.evolver_of(r)) is not None}
            if len(models) < 2:
                raise ValueError("stages.irm: the IRM data needs variants from two evolver models (the recipe's "
                                 "Wizard-E and ChatGPT): set evolver_backend to a second model, or "
                                 "stages.irm.allow_single_evolver: true to rank variants of one model (the card says so)")

    def evolver_of(self, role: str) -> BackendConfig | None:
        return self.evolver_backend if role == "evolver2" else self.backend

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def stage(self, name: str) -> Any:
        return self.stages[name]

    def backend_roles(self) -> dict[str, BackendConfig]:
        """Every configured backend by role (main, judge, evolver2, policy)."""
        roles = {"main": self.backend, "judge": self.judge_backend, "evolver2": self.evolver_backend,
                 "policy": self.policy_backend}
        return {k: v for k, v in roles.items() if v is not None}

    def secret_envs(self) -> list[str]:
        """The key variables this config names (values never written anywhere)."""
        return sorted({b.api_key_env for b in self.backend_roles().values()})

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (there are no secrets in it by construction; the store scrubs anyway)."""
        d = self.model_dump(mode="json")
        d["stages"] = {k: v.model_dump(mode="json") for k, v in self.stages.items()}
        return d


def _format_validation(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if loc and msg.startswith(f"{loc}."):  # the message names the full path already (stages.<stage>.<field>)
            loc = ""
        lines.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RunConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(p))
    if data is None:
        raise ConfigError(f"{p}: the config is empty (it needs at least the stages to run; see `evolkit recipes`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping (key: value lines), not a {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
    return validate(data, str(p))


def validate(data: dict[str, Any], where: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (YAML's last-wins would hide a mistake)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark)
        try:
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: YAML's own error follows
            pass
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to data; errors name ``where`` and the line (duplicate keys are errors)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise ConfigError(f"{at}: invalid YAML: {getattr(e, 'problem', None) or e}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (VALUE in YAML) from ``--set``."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set seeds.0.n=50)")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: {key!r} is not a dotted key (e.g. stages.sft.k)")
    return key, parse_yaml(value, f"--set {key}") if value.strip() else None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set ``a.b.0.c``-style keys in ``data`` (a copy): mappings get missing keys, lists take an existing index."""
    import copy

    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        cur: Any = data
        keys = dotted.split(".")
        path: list[str] = []
        for k in keys[:-1]:
            path.append(k)
            cur = _child(cur, k, path, dotted, create=True)
        last = keys[-1]
        if isinstance(cur, list):
            cur[_index(cur, last, path + [last], dotted)] = value
        elif isinstance(cur, dict):
            cur[last] = value
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(path) or 'the config'} is a {type(cur).__name__} "
                              f"({cur!r}), not a mapping or a list")
    return data


def _index(cur: list[Any], k: str, path: list[str], dotted: str) -> int:
    try:
        i = int(k)
    except ValueError:
        raise ConfigError(f"--set {dotted}: {'.'.join(path[:-1])} is a list: use a number, not {k!r}") from None
    if not -len(cur) <= i < len(cur):
        raise ConfigError(f"--set {dotted}: {'.'.join(path[:-1])} has {len(cur)} entries (0-{len(cur) - 1}), "
                          f"no entry {i}")
    return i


def _child(cur: Any, k: str, path: list[str], dotted: str, create: bool) -> Any:
    if isinstance(cur, list):
        return cur[_index(cur, k, path, dotted)]
    if isinstance(cur, dict):
        nxt = cur.get(k)
        if nxt is None and create:
            nxt = cur[k] = {}
        return nxt
    raise ConfigError(f"--set {dotted}: {'.'.join(path[:-1]) or 'the config'} is a {type(cur).__name__} "
                      f"({cur!r}), not a mapping or a list")


#: Top-level config keys that never change what a run's data means (they may change when a run is resumed).
RUNTIME_KEYS = frozenset({"name", "output_dir", "executor", "publish", "max_failed_share"})
_BACKEND_KEYS = frozenset({"backend", "judge_backend", "evolver_backend", "policy_backend"})
#: Stage settings that only change how results are shown.
_STAGE_RUNTIME_KEYS = frozenset({"plots"})


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted path; lists of mappings (seeds, rounds) by index too, so a difference names its field."""
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        obj = {str(i): v for i, v in enumerate(obj)}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def _data_view(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config (``public_dict``) that decide what the data is."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k in RUNTIME_KEYS:
            continue
        if k in _BACKEND_KEYS and isinstance(v, dict):
            v = {a: b for a, b in v.items() if a not in BACKEND_RUNTIME_FIELDS}
        if k == "stages" and isinstance(v, dict):
            v = {s: ({a: b for a, b in c.items() if a not in _STAGE_RUNTIME_KEYS} if isinstance(c, dict) else c)
                 for s, c in v.items()}
        out[k] = v
    return out


def data_differences(old: dict[str, Any], new: dict[str, Any], stages: list[str] | None = None) -> list[str]:
    """What differs between two resolved configs in ways that change the data (``key: old -> new`` lines).

    Stages present in only one of them do not count (a resumed run may add or leave out stages); ``stages`` limits the
    stage settings compared to those named."""
    a, b = _data_view(old), _data_view(new)
    sa, sb = a.pop("stages", {}) or {}, b.pop("stages", {}) or {}
    common = [s for s in sa if s in sb and (stages is None or s in stages)]
    a["stages"] = {s: sa[s] for s in common}
    b["stages"] = {s: sb[s] for s in common}
    fa, fb = _flatten(a), _flatten(b)
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, "(unset)"), fb.get(key, "(unset)")
        if va != vb:
            diffs.append(f"{key}: {va!r} -> {vb!r}")
    return diffs
