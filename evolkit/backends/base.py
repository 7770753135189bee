"""The one interface every model backend implements.

Chat messages go in; ``n`` completions come out, each with text, finish_reason and token usage. A backend streams results
as they finish (no batch barrier), and a request that fails for good becomes a :class:`Result` with ``error`` set: it never
nulls or stalls its neighbours. Caching, retries and accounting live in the backends, never in the stages.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..types import MakeRows, Rows, StepEnv

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Request:
    """One chat request. ``sample_offset`` tells which samples of this prompt these are (0 for the first n)."""

    messages: Messages
    sampling: Sampling = field(default_factory=Sampling)
    sample_offset: int = 0
    #: What the request is for (``solve``, ``evolve:simplify``, ``judge:irm`` ...): a label for accounting that
    #: backends ignore; not part of the cache key.
    task: str = ""
    #: Raw completion: send :meth:`prompt_text` as plain text, without a chat template (base-model prompts such as the
    #: WizardMath Alpaca template or few-shot ``Q: ... A:`` prompts). transformers/vllm tokenize the text as is (with
    #: the tokenizer's BOS), the OpenAI backend calls ``/v1/completions``.
    raw: bool = False
    #: Structured output: a JSON Schema (a dict) the answer must follow. Backends whose ``supports_json_schema`` is
    #: true constrain generation to it (OpenAI-compatible servers through ``response_format``, vLLM through structured
    #: outputs); the others ignore it and answer freely, so readers still parse answers tolerantly. The schema's
    #: ``title`` (letters, digits, ``_``, ``-``) names it where a server wants a name. For OpenAI's strict mode every
    #: object in it lists all its properties in ``required`` and sets ``additionalProperties: false``. Part of the cache
    #: key only when set.
    json_schema: dict[str, Any] | None = None

    def prompt_text(self) -> str:
        """The plain-text prompt of a raw request: the messages' contents, concatenated (normally there is one)."""
        return "".join(m.get("content", "") for m in self.messages)

    def cache_key(self, model: str) -> str:
        parts: list[Any] = [model, self.messages, self.sampling.as_dict(), self.sample_offset]
        if self.raw:  # only when set, so chat requests keep the keys they always had
            parts.append("raw")
        if self.json_schema is not None:  # likewise: requests without a schema keep their keys
            parts.append({"json_schema": self.json_schema})
        payload = json.dumps(parts, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Result:
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None
    cached: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> str:
        # The fields spelled out (what dataclasses.asdict gives, in the same order, several times faster).
        comps = [{"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                  "completion_tokens": c.completion_tokens} for c in self.completions]
        return json.dumps({"completions": comps, "error": self.error})

    @classmethod
    def from_json(cls, s: str) -> Result:
        d = json.loads(s)
        return cls([Completion(**c) for c in d["completions"]], d.get("error"), cached=True, attempts=0)


@dataclass
class Stats:
    requests: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, r: Result) -> None:
        self.requests += 1
        if r.cached:
            self.cached += 1
        if r.error:
            self.failed += 1
        self.retries += max(0, r.attempts - 1)
        for c in r.completions:
            self.prompt_tokens += c.prompt_tokens if not r.cached else 0
            self.completion_tokens += c.completion_tokens if not r.cached else 0


class Backend(abc.ABC):
    """Subclasses implement :meth:`stream`; :meth:`generate` and :meth:`run` are conveniences over it."""

    model: str = ""
    #: Whether :attr:`Request.json_schema` constrains this backend's answers (otherwise it is ignored).
    supports_json_schema: bool = False

    def __init__(self) -> None:
        self.stats = Stats()

    @abc.abstractmethod
    def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        """Yield ``(index into requests, result)`` as each request finishes, in completion order."""

    async def generate(self, requests: Sequence[Request]) -> list[Result]:
        out: list[Result | None] = [None] * len(requests)
        async for i, r in self.stream(requests):
            out[i] = r
        return [r if r is not None else Result(error="lost") for r in out]

    def run(self, requests: Sequence[Request]) -> list[Result]:
        """Synchronous helper (not for use inside a running event loop)."""
        return asyncio.run(self.generate(list(requests)))

    def stream_rows(self, requests: Sequence[Request], items: Sequence[Any], make_rows: MakeRows, env: StepEnv,
                    concurrency: int = 64) -> AsyncIterator[tuple[int, Result, Rows]]:
        """Stream ``requests`` and make each result's rows with ``make_rows(env, items[i], result)``: yields
        ``(index, result, rows)`` as rows are made (see :func:`process_rows`)."""
        return process_rows(self.stream(requests), items, make_rows, env, concurrency)

    def describe(self) -> dict[str, Any]:
        """What goes into records and cards about this backend (never secrets)."""
        return {"backend": type(self).__name__, "model": self.model}

    async def aclose(self) -> None:  # pragma: no cover - default no-op
        return None

    def close(self) -> None:
        pass


def chunked(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


# ------------------------------------------------------------------------------------------- rows from results
class Subseq(Sequence):  # type: ignore[type-arg]
    """``seq[idx[0]], seq[idx[1]], ...`` without copying: items (and lazily built requests) are fetched when asked."""

    def __init__(self, seq: Sequence[Any], idx: Sequence[int]):
        self.seq = seq
        self.idx = idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self.seq[self.idx[k]] for k in range(*j.indices(len(self.idx)))]
        return self.seq[self.idx[j]]


class Mapped(Sequence):  # type: ignore[type-arg]
    """``fn(seq[i])`` for each item of ``seq``, computed when asked (a lazy ``[fn(x) for x in seq]``)."""

    def __init__(self, seq: Sequence[Any], fn: Callable[[Any], Any]):
        self.seq = seq
        self.fn = fn

    def __len__(self) -> int:
        return len(self.seq)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.fn(x) for x in self.seq[i]]
        return self.fn(self.seq[i])

    def __iter__(self) -> Iterator[Any]:
        return map(self.fn, self.seq)


#: The requests of a step's items, each built by ``build(item)`` only when a backend asks for it (memory stays flat
#: however many items a step has): ``LazyRequests(items, build)``.
LazyRequests = Mapped


class Recent(Sequence):  # type: ignore[type-arg]
    """``seq`` with the last ``size`` items asked for kept: a lazily built item (a request, a row maker's input) is
    asked for several times while it is in flight (sent, stored in the cache, turned into rows, written) and is built
    once for all of them; memory holds ``size`` items whatever the length of ``seq``."""

    def __init__(self, seq: Sequence[Any], size: int = 2048):
        self.seq = seq
        self.size = size
        self._kept: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.seq)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        try:
            return self._kept[i]
        except KeyError:
            pass
        x = self._kept[i] = self.seq[i]
        if len(self._kept) > self.size:
            del self._kept[next(iter(self._kept))]  # the oldest
        return x


async def make_rows_of(make_rows: MakeRows, env: StepEnv, item: Any, res: Result) -> Rows:
    out = make_rows(env, item, res)
    if inspect.isawaitable(out):
        out = await out
    return list(out)  # type: ignore[arg-type]


async def process_rows(source: AsyncIterator[tuple[int, Result]], items: Sequence[Any], make_rows: MakeRows,
                       env: StepEnv, concurrency: int = 64) -> AsyncIterator[tuple[int, Result, Rows]]:
    """Make the rows of each result of ``source`` (``(index, result)`` pairs) with up to ``concurrency`` row makers
    at a time (answer checking runs in a process pool: several checks in flight keep it busy). Yields
    ``(index, result, rows)`` as each is made; a row maker that raises ends the stream with its exception."""
    out: asyncio.Queue[Any] = asyncio.Queue()
    sem = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    end = object()

    async def one(i: int, res: Result) -> None:
        try:
            out.put_nowait((i, res, await make_rows_of(make_rows, env, items[i], res)))
        except BaseException as e:  # noqa: BLE001 - raised to the consumer
            out.put_nowait(e)
        finally:
            sem.release()

    async def feed() -> None:
        try:
            async for i, res in source:
                await sem.acquire()
                t = asyncio.create_task(one(i, res))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            out.put_nowait(end)
        except BaseException as e:  # noqa: BLE001
            out.put_nowait(e)

    feeder = asyncio.create_task(feed())
    try:
        while True:
            x = await out.get()
            if x is end:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        feeder.cancel()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(feeder, *tasks, return_exceptions=True)
