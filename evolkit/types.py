"""The types every stage uses, in one leaf module that imports nothing of evolkit.

* configs shared by the run config and the stages: :class:`BackendConfig`, :class:`SamplingConfig`,
  :class:`ExecutorConfig`;
* a generation step (:class:`Step`) and what its row maker sees (:class:`StepEnv`);
* :class:`StageContext`, the protocol a stage is written against (implemented by :class:`evolkit.pipeline.Context`).

Import direction: ``types`` <- backends / answers / store <- pipeline / executors <- stages <- publish / eval / review
<- cli. Nothing here imports anything above it (annotations only, under ``TYPE_CHECKING``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from .backends.base import Backend, Request, Result, Sampling
    from .records import Problem
    from .store import GroupReader, RunStore

Rows = list[dict[str, Any]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------------------ configs
#: Backend settings that change *where* or *how fast* requests go, never what comes back: they may change when a run is
#: resumed (see :func:`evolkit.config.data_differences`).
BACKEND_RUNTIME_FIELDS = frozenset({
    "base_url", "base_urls", "api_key_env", "max_concurrency", "max_retries", "request_timeout", "rpm", "tpm",
    "http_client", "batch_size", "cache",
})


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
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    #: openai backend: the HTTP client. auto: a lean client for plain http:// endpoints without a proxy, the OpenAI
    #: SDK's client otherwise; sdk: always the SDK's; aiohttp: aiohttp's (see docs/performance.md for why not default).
    http_client: Literal["auto", "lean", "sdk", "aiohttp"] = "auto"
    batch_size: int = Field(8, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    engine_kwargs: dict[str, Any] = {}
    #: kind custom: ``"package.module:callable"``, called as ``callable(model=..., **options)``; returns a Backend.
    #: options: kind custom: the keyword arguments of the factory; kind transformers: engine (auto, evolkit, generate),
    #: threads.
    factory: str | None = None
    options: dict[str, Any] = {}
    cache: bool = True

    @model_validator(mode="before")
    @classmethod
    def _no_inline_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("put API keys in the environment and name the variable with api_key_env, not in the config")
        return data

    @model_validator(mode="after")
    def _factory(self) -> BackendConfig:
        if self.kind == "custom" and not self.factory:
            raise ValueError("kind custom needs factory: 'package.module:callable'")
        return self


class SamplingConfig(_Model):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, gt=0)
    seed: int | None = 0
    stop: list[str] = []


class ExecutorConfig(_Model):
    """Where generation steps run: this process (``local``) or Ray worker actors (``ray``, see evolkit.executors)."""

    kind: Literal["local", "ray"] = "local"
    #: ``ray.init(address=...)``: ``auto``, ``ray://head:10001``, ... (null: ``RAY_ADDRESS`` or a new local instance).
    address: str | None = None
    #: Worker actors, each with its own backend (null: what the cluster's CPUs/GPUs allow at the per-task sizes).
    shards: int | None = Field(None, gt=0)
    num_cpus_per_task: float = Field(1.0, ge=0)
    num_gpus_per_task: float = Field(0.0, ge=0)
    #: Results a worker collects before sending them back (it also sends whatever it has every ``batch_seconds``).
    batch_size: int = Field(64, gt=0)
    batch_seconds: float = Field(0.25, gt=0)
    #: Answer-checker processes per worker (null: one per CPU of the task, at least one).
    checker_workers: int | None = Field(None, gt=0)


# ------------------------------------------------------------------------------------------------------- generation
@dataclass
class StepEnv:
    """What a row maker may use: the backend's model name and the answer checker of the process it runs in."""

    model: str
    _checker: Callable[[], Any] = field(repr=False, default=lambda: None)

    def checker(self) -> Any:
        return self._checker()


#: ``make_rows(env, item, result) -> rows`` (or an awaitable of rows). Under Ray it runs in the workers, so it must be
#: picklable: a module-level function, or a ``functools.partial`` of one with picklable arguments.
MakeRows = Callable[[StepEnv, Any, "Result"], "Rows | Awaitable[Rows]"]


@dataclass
class Step:
    """One generation step: for each item, one request to the backend of ``role``.

    ``key(item)`` names the item in the run store (unique within the step's output; a string or a JSON-able tuple);
    ``request(item)`` builds its request, only when the item is not done yet (requests are made lazily, as the backend
    asks for them); ``make_rows(env, item, result)`` turns the result into the rows written for the item, all of them
    as one record, so an item is either wholly done or not at all."""

    role: str
    items: Sequence[Any]
    key: Callable[[Any], Hashable]
    request: Callable[[Any], Request]
    make_rows: MakeRows
    #: Shown on the progress line.
    desc: str = ""
    #: The items' keys in item order, when they can be had without building the items (resume checks every key
    #: before anything is sent; items that are costly to build are then built only when sent). None: ``key(item)``.
    keys: Sequence[Hashable] | None = None


class RunConfigLike(Protocol):
    """The parts of :class:`evolkit.config.RunConfig` that stages read."""

    seed: int
    sampling: SamplingConfig
    backend: BackendConfig
    judge_backend: BackendConfig | None
    evolver_backend: BackendConfig | None
    policy_backend: BackendConfig | None
    stages: dict[str, Any]

    def stage(self, name: str) -> Any: ...


class StageContext(Protocol):
    """What a stage gets (see :class:`evolkit.pipeline.Context`)."""

    config: RunConfigLike
    store: RunStore
    show_progress: bool

    def backend(self, role: str = "main") -> Backend: ...

    def backend_config(self, role: str = "main") -> BackendConfig: ...

    def checker(self) -> Any: ...

    def seeds(self) -> Sequence[Problem]: ...

    def sampling(self, *overrides: dict[str, Any] | None, n: int = 1) -> Sampling: ...

    async def generate(self, stage: str, name: str, step: Step) -> GroupReader:
        """Run ``step``, resuming from the store: items whose rows are durable are not sent again; each item's rows
        are written as one record as its result is processed. Returns a reader of every item's rows by key."""
        ...


def iter_rows(groups: Iterator[Rows]) -> Iterator[dict[str, Any]]:
    """Flatten groups of rows."""
    for g in groups:
        yield from g
