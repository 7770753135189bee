"""Runs the stages a config names, in order, through the run store.

Each stage is a module of :mod:`evolkit.stages` with ``Config`` and ``run(ctx) -> summary``. A stage that the manifest
marks done is skipped (``--force`` re-runs it); a stage that was killed resumes from its shards.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend, make_backend  # noqa: F401  (make_backend: kept importable from here)
from .config import BackendConfig, RunConfig
from .records import Problem
from .store import RunStore

log = logging.getLogger("evolkit")


@dataclass
class Context:
    """What a stage gets: the config, the store, backends (each wrapped in the run's request cache) and the checker."""

    config: RunConfig
    store: RunStore
    show_progress: bool = True
    _backends: dict[str, Backend] = field(default_factory=dict)
    _backend_cfgs: dict[str, BackendConfig] = field(default_factory=dict)
    _checker: Any = None
    _executor: Any = None

    @classmethod
    def open(cls, config: RunConfig, run_dir: str | Path | None = None, show_progress: bool = True) -> Context:
        store = RunStore(run_dir or config.run_dir)
        store.save_config(config.public_dict())
        return cls(config, store, show_progress)

    def backend_config(self, role: str = "main") -> BackendConfig:
        c = self.config
        if role == "judge" and c.judge_backend is not None:
            return c.judge_backend
        if role == "evolver2" and c.evolver_backend is not None:
            return c.evolver_backend
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

            self._checker = AnswerChecker()
        return self._checker

    def seeds(self) -> list[Problem]:
        if not self.store.is_done("seeds"):
            run_seeds(self)
        return [Problem.model_validate(r) for r in self.store.load("seeds", "problems")]

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


def run_seeds(ctx: Context) -> dict[str, Any]:
    from .seeds import load_seeds

    t0 = time.time()
    problems = load_seeds(ctx.config.seeds, seed=ctx.config.seed)
    by_source: dict[str, int] = {}
    for p in problems:
        by_source[p.source] = by_source.get(p.source, 0) + 1
    summary = {"problems": len(problems), "by_source": by_source}
    ctx.store.finish("seeds", {"problems": [p.row() for p in problems]}, summary, started=t0)
    return summary


def run_stage(ctx: Context, name: str, force: bool = False) -> dict[str, Any]:
    if name == "seeds":
        return run_seeds(ctx) if force or not ctx.store.is_done("seeds") else ctx.store.stage_info("seeds")["summary"]
    if ctx.store.is_done(name) and not force:
        log.info("stage %s already done; skipping (use --force to re-run)", name)
        return ctx.store.stage_info(name).get("summary", {})
    if force:
        ctx.store.invalidate(name)
    mod = importlib.import_module(f"evolkit.stages.{name}")
    t0 = time.time()
    summary = mod.run(ctx)
    info = ctx.store.stage_info(name)
    if info.get("status") != "done":  # the stage may have called finish itself
        raise RuntimeError(f"stage {name} returned without finishing its outputs")
    summary = dict(summary or {})
    summary.setdefault("seconds", round(time.time() - t0, 2))
    return summary


def run_all(config: RunConfig, run_dir: str | Path | None = None, force: bool = False, stages: list[str] | None = None,
            show_progress: bool = True) -> dict[str, Any]:
    """Run the config's stages (or the ones named) and return {stage: summary}."""
    results: dict[str, Any] = {}
    with Context.open(config, run_dir, show_progress) as ctx:
        results["seeds"] = run_stage(ctx, "seeds", force=False)
        from .stages import STAGE_CONFIGS

        order = list(STAGE_CONFIGS)
        # Data flows one way: stages always run in pipeline order, whatever order the YAML lists them in.
        for name in sorted(stages or list(config.stages), key=order.index):
            results[name] = run_stage(ctx, name, force=force)
        results["_run_dir"] = str(ctx.store.root)
        results["_backend"] = {k: be.stats.__dict__ for k, be in ctx._backends.items()}
    return results
