"""Runs the stages a config names, in order, through the run store.

Each stage is a module of :mod:`evolkit.stages` with ``Config`` and ``run(ctx) -> summary``, written against
:class:`evolkit.types.StageContext`, which :class:`Context` implements. Every model call of a stage goes through ONE
helper, :meth:`Context.generate`: resume from the store (an item is done only when all its rows are durable), the
request cache, the executor (this process or Ray workers), durable group records, failure accounting and read-back.

A stage that the manifest marks done is skipped (``--force`` re-runs it); a stage that was killed resumes from its
shards. A resumed run also re-runs finished stages that have failed items (only those items are sent again) and every
stage after them. A run folder is bound to its config: resuming with settings that change what the data means is an
error (see :func:`evolkit.config.data_differences`).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import prompts
from .backends import Backend
from .backends.base import LazyRequests, Recent, Result, Sampling, Subseq
from .config import RunConfig, data_differences
from .errors import ConfigError, EvolkitError
from .progress import Progress
from .records import Problem
from .settings import register_secret_envs
from .store import GroupReader, RunStore, key_digest
from .types import BackendConfig, Step, StepEnv

log = logging.getLogger("evolkit")

#: Entries of the answer checker's verdict cache.
CHECKER_CACHE = 8192

#: Pipeline order of the stages (seeds first).
ORDER = ("seeds", "sft", "evolve", "irm", "prm")


class StageFailed(EvolkitError):
    """A stage whose requests failed (all of them, a configured share, or an authentication error): it is not marked
    done, the run exits non-zero, and ``--resume`` sends the failed items again."""


_AUTH_MARKERS = ("401", "403", "AuthenticationError", "PermissionDeniedError", "invalid api key", "Incorrect API key",
                 "Unauthorized", "Forbidden")


def is_auth_error(res: Result) -> bool:
    err = res.error or ""
    return any(m in err for m in _AUTH_MARKERS) and ("status" in err.lower() or "Error" in err or "401" in err)


@dataclass
class RequestCounts:
    requests: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    example: str | None = None

    def add(self, res: Result) -> None:
        self.requests += 1
        if not res.ok:
            self.failed += 1
            kind = (res.error or "error").split(":")[0][:60]
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if self.example is None:
                self.example = (res.error or "")[:300]

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "failed": self.failed, "errors": dict(self.errors)}


@dataclass
class Context:
    """What a stage gets: the config, the store, backends (each wrapped in the run's request cache), the answer
    checker and :meth:`generate`."""

    config: RunConfig
    store: RunStore
    show_progress: bool = True
    _backends: dict[str, Backend] = field(default_factory=dict)
    _backend_cfgs: dict[str, BackendConfig] = field(default_factory=dict)
    _checker: Any = None
    _executor: Any = None
    #: Requests and failures per stage in this session.
    counts: dict[str, RequestCounts] = field(default_factory=dict)

    @classmethod
    def open(cls, config: RunConfig, run_dir: str | Path | None = None, show_progress: bool = True,
             save_config: bool = False) -> Context:
        """The context of the run folder (made if new). The folder keeps the config it was made with; ``save_config``
        replaces it (a run redone with --force)."""
        register_secret_envs(config.secret_envs())
        prompts.start_record()
        store = RunStore(run_dir or config.run_dir)
        if save_config or not store.manifest_path.exists() or not (store.root / "config.yaml").exists():
            store.save_config(config.public_dict())
        return cls(config, store, show_progress)

    # -- backends ------------------------------------------------------------------------------------------------
    def backend_config(self, role: str = "main") -> BackendConfig:
        c = self.config
        if role == "judge" and c.judge_backend is not None:
            return c.judge_backend
        if role == "evolver2" and c.evolver_backend is not None:
            return c.evolver_backend
        if role == "policy":
            if c.policy_backend is None:
                raise ConfigError("policy_backend: not set (the PRM source 'policy' samples the model being trained: "
                                  "give it as policy_backend: {kind: transformers, model: out/sft} or an endpoint)")
            return c.policy_backend
        return c.backend

    @property
    def executor(self) -> Any:
        """Where generation steps run (:mod:`evolkit.executors`): this process, or Ray workers."""
        if self._executor is None:
            from .executors import make_executor

            self._executor = make_executor(self.config.executor)
        return self._executor

    def backend(self, role: str = "main") -> Backend:
        cfg = self.backend_config(role)
        key = f"{cfg.kind}:{cfg.model}"
        if key in self._backends and self._backend_cfgs[key] != cfg:
            key = f"{key}#{len(self._backends)}"
        if key not in self._backends:
            self._backends[key] = self.executor.make_backend(cfg, self.store.cache_path)
            self._backend_cfgs[key] = cfg
        return self._backends[key]

    def checker(self) -> Any:
        if self._checker is None:
            from .answers import AnswerChecker

            # A small verdict cache: the k samples of one problem share their checks; beyond that, 100k cached
            # pairs (the default) are ~40 MiB that grow with the run.
            self._checker = AnswerChecker(cache_size=CHECKER_CACHE)
        return self._checker

    def sampling(self, *overrides: dict[str, Any] | None, n: int = 1) -> Sampling:
        """The run's sampling settings with stage overrides applied in order (e.g. temperature 0 for judges)."""
        base = self.config.sampling.model_dump()
        for o in overrides:
            base.update(o or {})
        return Sampling(temperature=base["temperature"], top_p=base["top_p"], max_tokens=base["max_tokens"], n=n,
                        stop=tuple(base.get("stop") or ()), seed=base.get("seed"))

    def seeds(self) -> Sequence[Problem]:
        """The seed problems, read from the seeds stage's Parquet output a row group at a time (memory stays flat
        whatever their number)."""
        if not self.store.is_done("seeds"):
            run_seeds(self)
        return self.store.table("seeds", "problems", Problem.model_validate)

    # -- the one generation helper ----------------------------------------------------------------------------------
    async def generate(self, stage: str, name: str, step: Step) -> GroupReader:
        """Run ``step`` for the items without durable rows; return a reader of every item's rows by key.

        Items whose latest record in ``stage/name`` is a success are not sent again (failed ones are). Requests are
        built lazily as the backend takes them; each item's rows go to the shard as ONE record when its result has
        been turned into rows, and the result itself was stored in the request cache the moment it arrived. An
        authentication error ends the step at once (:class:`StageFailed`)."""
        store = self.store
        reader = store.groups(stage, name)
        todo = pending_items(step, reader)
        counts = self.counts.setdefault(stage, RequestCounts())
        if not len(todo):
            return reader
        # Items and requests are built when the backend asks for them; each is asked for several times while it is
        # in flight (sent, stored in the cache, made into rows, written), and built once for all of them.
        items = Recent(Subseq(step.items, todo))
        requests = Recent(LazyRequests(items, step.request))
        requests[0]  # build one request now: the prompt files it reads are recorded before anything is sent
        self.save_prompt_lock()
        backend = self.backend(step.role)
        env = StepEnv(backend.model, self.checker)
        desc = step.desc or f"{stage}: {name}"
        with store.writer(stage, name) as w, Progress(len(todo), desc, enabled=self.show_progress) as bar:
            stream = backend.stream_rows(requests, items, step.make_rows, env)
            try:
                async for j, res, rows in stream:
                    k = step.key(items[j])
                    offset = w.write_group(k, res.ok, rows)
                    reader.add(w.path, k, offset, res.ok)
                    counts.add(res)
                    bar.update(1, failed=int(not res.ok))
                    if not res.ok and is_auth_error(res):
                        raise StageFailed(
                            f"{stage}: the {step.role} backend ({backend.model}) refused the request: "
                            f"{scrub_text(res.error)}. Check the API key variable "
                            f"({self.backend_config(step.role).api_key_env}) and the endpoint, then run again "
                            f"with --resume.")
            finally:
                await stream.aclose()
        return reader

    def save_prompt_lock(self) -> None:
        """Record the prompt files read so far with their hashes (a resumed run checks them)."""
        loaded = prompts.loaded_files()
        known = self.store.manifest().get("prompts", {})
        if any(known.get(k) != v for k, v in loaded.items()):
            self.store.update_manifest(prompts={**known, **loaded})

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        for be in self._backends.values():
            try:
                asyncio.run(be.aclose())
            except Exception:  # pragma: no cover - best effort at shutdown
                pass
            be.close()
        self._backends.clear()
        if self._checker is not None:
            self._checker.close()
            self._checker = None
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pending_items(step: Step, reader: GroupReader) -> np.ndarray:
    """Positions of the step's items that still need a request: the first item of each key whose latest record is
    not a success. Keys are held as 16-byte digests in numpy arrays (memory stays small at any item count)."""
    keys = step.keys if step.keys is not None else (step.key(item) for item in step.items)
    digests = np.fromiter((key_digest(k) for k in keys), dtype="S16", count=len(step.items))
    first = np.zeros(len(digests), dtype=bool)
    first[np.unique(digests, return_index=True)[1]] = True
    todo = np.nonzero(first & ~reader.ok_many(digests))[0]
    return todo


def scrub_text(text: str | None) -> str:
    from .store import scrub

    return scrub(text or "")


def run_seeds(ctx: Context) -> dict[str, Any]:
    from .seeds import load_seeds

    t0 = time.time()
    problems = load_seeds(ctx.config.seeds, seed=ctx.config.seed)
    by_source: dict[str, int] = {}
    for p in problems:
        by_source[p.source] = by_source.get(p.source, 0) + 1
    summary = {"problems": len(problems), "by_source": by_source}
    ctx.store.finish("seeds", {"problems": (p.row() for p in problems)}, summary, started=t0)
    return summary


def check_resume(config: RunConfig, store: RunStore) -> None:
    """Refuse to continue a run whose data would mean something else under ``config``: settings that change the data
    (seeds, sizes, k, sampling, prompts, models) must equal the run's; prompt files read so far must be unchanged."""
    saved = store.load_config()
    if not saved:
        return
    diffs = data_differences(saved, config.public_dict())
    changed = []
    for path, digest in (store.manifest().get("prompts") or {}).items():
        p = Path(path)
        now = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "(missing)"
        if now != digest:
            changed.append(f"prompt file {path}: changed since the run read it")
    if diffs or changed:
        lines = "\n  ".join(diffs + changed)
        raise ConfigError(
            f"{store.root}: the run was made with other settings; resuming would mix data made two ways:\n  {lines}\n"
            f"Use the run's own settings (evolkit run -o {store.root} --resume, without a config), redo it with "
            f"--force, or start a new run folder (-o).")


def run_stage(ctx: Context, name: str) -> dict[str, Any]:
    store = ctx.store
    if name == "seeds":
        if not store.is_done("seeds"):
            return run_seeds(ctx)
        return store.stage_info("seeds")["summary"]
    if store.is_done(name):
        log.info("stage %s already done; skipping (use --force to re-run)", name)
        return store.stage_info(name).get("summary", {})
    mod = importlib.import_module(f"evolkit.stages.{name}")
    t0 = time.time()
    counts = ctx.counts[name] = RequestCounts()

    def check(stage: str) -> None:
        if stage == name and counts.requests and counts.failed / counts.requests >= ctx.config.max_failed_share:
            raise StageFailed(
                f"{name}: {counts.failed} of {counts.requests} requests failed "
                f"({', '.join(f'{k} x{v}' for k, v in counts.errors.items())}); e.g. {scrub_text(counts.example)}. "
                f"Check the backend (endpoint, model name, key), then run again with --resume: only the failed items "
                f"are sent again.")

    store.before_finish = check
    try:
        summary = dict(mod.run(ctx) or {})
    except StageFailed as e:
        store.set_status(name, "failed", reason=str(e), requests=counts.as_dict())
        raise
    finally:
        store.before_finish = None
    info = store.stage_info(name)
    if info.get("status") != "done":
        raise RuntimeError(f"stage {name} returned without finishing its outputs")
    summary.setdefault("seconds", round(time.time() - t0, 2))
    store.set_status(name, "done", requests=counts.as_dict(), failed_items=summary_failed(summary, counts))
    return summary


def summary_failed(summary: dict[str, Any], counts: RequestCounts) -> int:
    """Items of a finished stage whose requests failed for good (a resumed run sends them again)."""
    return int(summary.get("failed_items", counts.failed))


def stages_to_run(config: RunConfig, store: RunStore, stages: list[str] | None, retry_failed: bool) -> list[str]:
    names = sorted(stages or list(config.stages), key=ORDER.index)
    if not retry_failed:
        return names
    # A finished stage with failed items runs again (its done items come from the shards), and so does every stage
    # after it: their inputs change.
    for i, name in enumerate(names):
        info = store.stage_info(name)
        if info.get("status") == "done" and info.get("failed_items"):
            log.info("stage %s finished with %d failed items: sending them again", name, info["failed_items"])
            for later in names[i:]:
                store.invalidate(later)
            break
    return names


def run_all(config: RunConfig, run_dir: str | Path | None = None, force: bool = False, stages: list[str] | None = None,
            show_progress: bool = True, retry_failed: bool = True) -> dict[str, Any]:
    """Run the config's stages (or the ones named) and return {stage: summary}."""
    results: dict[str, Any] = {}
    if force:
        # A damaged manifest or cache fails here, before anything is forgotten or the run's config replaced.
        from .backends import RequestCache

        old = RunStore(run_dir or config.run_dir, create=False)
        old.manifest()
        if old.cache_path.exists():
            RequestCache(old.cache_path).close()
    with Context.open(config, run_dir, show_progress, save_config=force) as ctx:
        names = stages_to_run(config, ctx.store, stages, retry_failed and not force)
        if force:
            # The stages named are redone from nothing with this config, and so is every stage after them.
            first = min((ORDER.index(n) for n in names), default=len(ORDER))
            for later in ORDER[first:]:
                ctx.store.invalidate(later, clear_shards=True)
            ctx.store.invalidate("seeds")
        results["seeds"] = run_stage(ctx, "seeds")
        for name in names:
            results[name] = run_stage(ctx, name)
        results["_run_dir"] = str(ctx.store.root)
        results["_backend"] = {k: be.stats.__dict__ for k, be in ctx._backends.items()}
    return results
