"""Where a stage's generation steps run: in this process (``local``, the default) or over a Ray cluster (``ray``).

A *generation step* (:class:`evolkit.types.Step`) is a list of items, each with one request to a backend role, plus a
function that turns each result into the rows the stage writes (parsing, answer extraction, answer checking). A stage
runs it with ``ctx.generate`` (:class:`evolkit.pipeline.Context`), which resumes, caches and writes the rows; the
executor only decides which backend object ``ctx.backend(role)`` is:

* ``local``: the role's backend, in this process, wrapped in the run's request cache; rows are made on the event loop
  as results arrive.
* ``ray``: the run's request cache in front of a :class:`RayBackend`. The cache answers hits itself and sends the
  misses, with the row maker, to the RayBackend (:meth:`evolkit.backends.cache.CachedBackend.stream_rows`), which splits
  them into ``shards`` (one per worker actor; request ``j`` of the misses goes to shard ``j % shards``); each worker,
  holding its own backend built from the role's :class:`~evolkit.types.BackendConfig` (its own vLLM engine on its GPU,
  its own transformers model, or its own client of the endpoints) and its own answer checker, streams its shard and
  makes the rows there, sending them back in small batches. The cache stores the results as they come back, so resume,
  the request cache and dedup work as in a local run, and the outputs are the same.

A worker that dies turns its unfinished requests into failed results (``Result(error=...)``): the stage records them as
failures and a resumed run retries them, as with any failed request. An exception raised by a row maker in a worker is
raised on the driver, as it would be in a local run.

Config (``executor:`` in the run config, or ``--executor ray`` on the command line)::

    executor: {kind: ray, address: null, shards: null, num_cpus_per_task: 1, num_gpus_per_task: 0}

``address`` is passed to ``ray.init`` (null: connect to the cluster named by ``RAY_ADDRESS`` or start a local one);
``shards`` is the number of worker actors (null: as many as the cluster's CPUs, or GPUs when ``num_gpus_per_task`` is
set, allow). A backend's ``max_concurrency`` applies per worker. The workers import evolkit: on a cluster it must be
installed on every node (or shipped with ``runtime_env``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .backends.base import Backend, Request, Result, make_rows_of
from .types import BackendConfig, ExecutorConfig, MakeRows, Rows, StepEnv

log = logging.getLogger("evolkit.executors")


# ----------------------------------------------------------------------------------------------------------- local
class LocalExecutor:
    kind = "local"

    def make_backend(self, cfg: BackendConfig, cache_path: Any) -> Backend:
        from .backends import make_backend

        return make_backend(cfg, cache_path)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------- ray
class _WorkerImpl:
    """The body of a Ray worker actor: backends by config, an answer checker, and the shard loop."""

    def __init__(self, checker_workers: int):
        self.checker_workers = checker_workers
        self.backends: dict[str, Backend] = {}
        self._checker: Any = None

    def backend(self, cfg_json: str) -> Backend:
        be = self.backends.get(cfg_json)
        if be is None:
            from .backends import make_backend
            be = self.backends[cfg_json] = make_backend(BackendConfig.model_validate_json(cfg_json), None)
        return be

    def checker(self) -> Any:
        if self._checker is None:
            from .answers import AnswerChecker

            self._checker = AnswerChecker(workers=self.checker_workers)
        return self._checker

    async def run(self, cfg_json: str, requests: list[Request], items: list[Any] | None, make_rows: MakeRows | None,
                  batch_size: int, batch_seconds: float) -> AsyncIterator[list[tuple[int, Result, Rows | None]]]:
        be = self.backend(cfg_json)
        env = StepEnv(be.model, self.checker)
        batch: list[tuple[int, Result, Rows | None]] = []
        last = time.monotonic()
        async for i, res in be.stream(requests):
            # A row maker that raises ends the shard with its exception, which the driver raises (as a local run would).
            item = items[i] if items is not None else None
            rows = None if make_rows is None else await make_rows_of(make_rows, env, item, res)
            batch.append((i, res, rows))
            now = time.monotonic()
            if len(batch) >= batch_size or now - last >= batch_seconds:
                yield batch
                batch, last = [], now
        if batch:
            yield batch

    def stats(self) -> dict[str, dict[str, int]]:
        return {k: dict(be.stats.__dict__) for k, be in self.backends.items()}

    async def aclose(self) -> None:
        for be in self.backends.values():
            try:
                await be.aclose()
            except Exception:  # pragma: no cover - best effort
                pass
            be.close()
        self.backends.clear()
        if self._checker is not None:
            self._checker.close()
            self._checker = None


class RayExecutor:
    kind = "ray"

    def __init__(self, cfg: ExecutorConfig):
        self.cfg = cfg
        self._actors: list[Any] = []
        self._started_ray = False

    # -- cluster ---------------------------------------------------------------------------------------------------
    def _ensure_actors(self) -> list[Any]:
        if self._actors:
            return self._actors
        try:
            import ray
        except ImportError as e:
            from .errors import ConfigError

            raise ConfigError("executor: kind 'ray' needs Ray: pip install 'evolkit[ray]'") from e
        if not ray.is_initialized():
            ray.init(address=self.cfg.address, include_dashboard=False, ignore_reinit_error=True,
                     logging_level=logging.WARNING, log_to_driver=True)
            self._started_ray = True
        c = self.cfg
        n = c.shards
        if n is None:
            res = ray.cluster_resources()
            if c.num_gpus_per_task > 0:
                n = int(res.get("GPU", 0) // c.num_gpus_per_task)
            elif c.num_cpus_per_task > 0:
                n = int(res.get("CPU", 1) // c.num_cpus_per_task)
            else:
                n = int(res.get("CPU", 1))
            n = max(1, n)
        checker_workers = c.checker_workers or max(1, int(c.num_cpus_per_task))
        actor_cls = ray.remote(_WorkerImpl)
        self._actors = [
            actor_cls.options(num_cpus=c.num_cpus_per_task, num_gpus=c.num_gpus_per_task,
                              name=None, max_restarts=0).remote(checker_workers)
            for _ in range(n)
        ]
        log.info("executor: %d Ray workers (%s CPU, %s GPU each)", n, c.num_cpus_per_task, c.num_gpus_per_task)
        return self._actors

    @property
    def shards(self) -> int:
        return len(self._ensure_actors())

    def make_backend(self, cfg: BackendConfig, cache_path: Any) -> Backend:
        from .backends import CachedBackend, RequestCache

        be: Backend = RayBackend(cfg, self)
        if cache_path is not None and cfg.cache:
            be = CachedBackend(be, RequestCache(cache_path))
        return be

    def close(self) -> None:
        if not self._actors:
            return
        import ray

        for a in self._actors:
            try:
                ray.get(a.aclose.remote(), timeout=30)
            except Exception:  # pragma: no cover - best effort
                pass
            try:
                ray.kill(a)
            except Exception:  # pragma: no cover
                pass
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


class RayBackend(Backend):
    """A backend whose requests run on the :class:`RayExecutor`'s workers, each with its own backend built from
    ``cfg``. :meth:`stream` is the plain Backend interface (rows, if any, are made by the caller);
    :meth:`stream_rows` also makes each request's rows in the worker."""

    #: Rows are made where the requests run (see CachedBackend.stream_rows).
    makes_rows = True

    def __init__(self, cfg: BackendConfig, executor: RayExecutor):
        super().__init__()
        self.cfg = cfg
        self.executor = executor
        self.model = cfg.model
        self._cfg_json = cfg.model_dump_json()

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        async for i, res, _ in self._stream(requests, None, None):
            yield i, res

    async def stream_rows(self, requests: Sequence[Request], items: Sequence[Any], make_rows: MakeRows,  # type: ignore[override]
                          env: StepEnv, concurrency: int = 64) -> AsyncIterator[tuple[int, Result, Rows]]:
        async for i, res, rows in self._stream(requests, items, make_rows):
            if rows is None:  # the worker died before making them: make them here from the failed result
                rows = await make_rows_of(make_rows, env, items[i], res)
            yield i, res, rows

    async def _stream(self, requests: Sequence[Request], items: Sequence[Any] | None, make_rows: MakeRows | None
                      ) -> AsyncIterator[tuple[int, Result, Rows | None]]:
        n = len(requests)
        if n == 0:
            return
        actors = self.executor._ensure_actors()
        c = self.executor.cfg
        shards = [list(range(s, n, len(actors))) for s in range(min(len(actors), n))]
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        returned: list[set[int]] = [set() for _ in shards]

        async def pump(s: int) -> None:
            idx = shards[s]
            try:
                gen = actors[s].run.remote(
                    self._cfg_json, [requests[i] for i in idx], None if items is None else [items[i] for i in idx],
                    make_rows, c.batch_size, c.batch_seconds,
                )
                async for ref in gen:
                    batch = await ref
                    queue.put_nowait((s, batch))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                import ray

                if isinstance(e, ray.exceptions.RayTaskError):  # our code raised in the worker: raise it here
                    queue.put_nowait((s, e.as_instanceof_cause()))
                    return
                # The worker died (or could not be reached): its unfinished requests fail, none is lost.
                err = f"ray worker failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                lost = [(j, Result(error=err), None) for j in range(len(idx)) if j not in returned[s]]
                queue.put_nowait((s, lost))
            finally:
                queue.put_nowait((s, None))

        tasks = [asyncio.create_task(pump(s)) for s in range(len(shards))]
        open_ = len(tasks)
        try:
            while open_:
                s, batch = await queue.get()
                if batch is None:
                    open_ -= 1
                    continue
                if isinstance(batch, BaseException):
                    raise batch
                for j, res, rows in batch:
                    if j in returned[s]:
                        continue
                    returned[s].add(j)
                    self.stats.add(res)
                    yield shards[s][j], res, rows
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.cfg.kind, "model": self.model, "executor": "ray", "shards": len(self.executor._actors)}


def make_executor(cfg: ExecutorConfig | None) -> LocalExecutor | RayExecutor:
    if cfg is None or cfg.kind == "local":
        return LocalExecutor()
    return RayExecutor(cfg)

