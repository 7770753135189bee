"""The YAML run config as pydantic models.

Each stage module owns its own config model (``evolkit.stages.<stage>.Config``); this module assembles them. Errors name
the file and the field (``config.yaml: stages.sft.k: Input should be greater than 0``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .executors import ExecutorConfig


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Model):
    kind: Literal["openai", "transformers", "vllm", "custom"] = "transformers"
    model: str = "smollm2-135m-instruct"
    #: OpenAI-compatible server(s). Several URLs spread the load by in-flight count.
    base_url: str | None = None
    base_urls: list[str] | None = None
    #: Name of the environment variable holding the API key (the key itself never goes in a config).
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(128, gt=0)
    max_retries: int = Field(6, ge=0)
    request_timeout: float = Field(600.0, gt=0)
    rpm: float | None = None
    tpm: float | None = None
    #: openai backend: the HTTP client. auto: evolkit's lean HTTP/1.1 client for plain http:// endpoints without a
    #: proxy (vllm serve replicas; much less CPU per request), the OpenAI SDK's client otherwise; sdk: always the SDK's.
    http_client: Literal["auto", "lean", "sdk"] = "auto"
    batch_size: int = Field(8, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    engine_kwargs: dict[str, Any] = {}
    cache: bool = True
    #: kind custom: "package.module:callable", called as callable(model=model, **options), returning a Backend.
    factory: str | None = None
    #: kind custom: keyword arguments of the factory; kind transformers: engine (auto, evolkit, generate), threads.
    options: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_inline_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("put API keys in the environment and name the variable with api_key_env, not in the config")
        return data


class SamplingConfig(_Model):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, gt=0)
    seed: int | None = 0
    stop: list[str] = []


class SeedSource(_Model):
    """Where seed problems come from: a local file/folder (``path``) or a Hub dataset (``hub_id``)."""

    source: Literal["gsm8k", "math"]
    path: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    split: str = "train"
    n: int | None = Field(None, gt=0, description="sample this many (all when unset)")
    stratify: bool = True

    @model_validator(mode="after")
    def _one_location(self) -> SeedSource:
        if self.path and self.hub_id:
            raise ValueError("give either path or hub_id, not both")
        return self


def _stage_models() -> dict[str, type[BaseModel]]:
    from .stages import STAGE_CONFIGS

    return STAGE_CONFIGS


class RunConfig(_Model):
    name: str = "evolkit-run"
    output_dir: str | None = None
    seed: int = 0
    backend: BackendConfig = BackendConfig()
    #: Backend of the judge (IRM ranking, PRM step labels); the main backend when unset.
    judge_backend: BackendConfig | None = None
    #: A second evolver (IRM needs variants from at least two evolvers).
    evolver_backend: BackendConfig | None = None
    sampling: SamplingConfig = SamplingConfig()
    seeds: list[SeedSource] = [SeedSource(source="gsm8k"), SeedSource(source="math")]
    #: Stages to run, in order, with their settings (see each stage's Config).
    stages: dict[str, Any] = {"sft": {}}
    publish: dict[str, Any] | None = None
    #: Where generation steps run: this process (local) or a Ray cluster (see evolkit.executors).
    executor: ExecutorConfig = ExecutorConfig()

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
                    f"stages.{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
                )) from None
        self.stages = parsed
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def stage(self, name: str) -> Any:
        return self.stages[name]

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
        lines.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RunConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        cur = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, str(p))) from None
