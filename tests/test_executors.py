"""Executors: the generation steps of every stage spread over a local Ray instance give the same outputs as one process.

The pipeline (seeds -> sft -> evolve with the LLM check and a second evolver -> irm -> prm with judge and Monte-Carlo
labels) runs once in this process and once with ``--executor ray`` (two worker actors, each with its own deterministic
backend and answer checker); every output and every summary figure must be identical. Resume and the request cache
must hold too: a Ray run resumed from a half-written shard sends only the missing requests, and a re-run answers
everything from the cache. A worker that dies mid-shard turns its unfinished requests into failed results, none lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from evolkit.cli import main
from evolkit.config import RunConfig
from evolkit.store import read_parquet
from tests.doubles import fake_backend

if os.environ.get("CI") is None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'evolkit[ray]'); CI installs it")
else:  # in CI a missing Ray is a failure, not a skip
    import ray

RUN_CONFIG = {
    "name": "executors",
    "seed": 0,
    "backend": fake_backend("det-teacher"),
    "evolver_backend": fake_backend("det-evolver-2"),
    "seeds": [{"source": "gsm8k", "n": 8}, {"source": "math", "n": 8}],
    "stages": {
        "sft": {"k": 3, "fewshot": 1},
        "evolve": {"rounds": [{"pool": "seeds", "children_per_parent": 1.0},
                              {"pool": "previous", "children_per_parent": 1.0}],
                   "k": 3, "elimination": {"llm_check": True}, "decontamination": {"enabled": False}, "plots": False},
        "irm": {"n_instructions": 10, "variants_per_evolver": 2},
        "prm": {"sources": ["sft", "evolve"], "labellers": ["judge", "montecarlo"], "rollouts": 2, "max_solutions": 16, "max_rollout_solutions": 6},
    },
}
RAY_EXECUTOR = {"kind": "ray", "shards": 2, "num_cpus_per_task": 1, "batch_size": 4, "batch_seconds": 0.05}


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the whole session (it takes a while to start)."""
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        started = True
    yield ray
    if started:
        ray.shutdown()


def _write_config(path: Path, executor: dict | None = None, **changes) -> Path:
    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg.update(changes)
    if executor:
        cfg["executor"] = executor
    path.write_text(yaml.safe_dump(cfg))
    return path


def _outputs(run_dir: Path) -> dict[str, list[dict]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out = {}
    for stage, info in manifest["stages"].items():
        for name, o in info["outputs"].items():
            out[f"{stage}/{name}"] = read_parquet(run_dir / o["path"])
    return out


def _summaries(run_dir: Path) -> dict[str, dict]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    drop = {"seconds", "plots"}
    return {s: {k: v for k, v in info["summary"].items() if k not in drop} for s, info in manifest["stages"].items()}


def _partial_rows(run_dir: Path) -> dict[str, list[str]]:
    """Every appended row of every stage (sorted: the order of arrival may differ between executors)."""
    out = {}
    for p in sorted(run_dir.glob("*/*.shard-*.jsonl")):
        key = f"{p.parent.name}/{p.name.split('.shard-')[0]}"
        out.setdefault(key, []).extend(p.read_text().splitlines())
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exec-local")
    cfg = _write_config(root / "cfg.yaml")
    assert main(["run", str(cfg), "-o", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, ray_local) -> Path:
    root = tmp_path_factory.mktemp("exec-ray")
    cfg = _write_config(root / "cfg.yaml", executor={k: v for k, v in RAY_EXECUTOR.items() if k != "kind"})
    assert main(["run", str(cfg), "-o", str(root / "run"), "--no-progress", "--executor", "ray"]) == 0
    return root / "run"


def test_config_and_cli_flag(tmp_path: Path) -> None:
    from evolkit.cli import build_parser, load_run_config

    cfg = _write_config(tmp_path / "cfg.yaml")
    assert load_run_config(build_parser().parse_args(["run", str(cfg)])).executor.kind == "local"
    got = load_run_config(build_parser().parse_args(["sft", str(cfg), "--executor", "ray", "--ray-address", "auto"]))
    assert (got.executor.kind, got.executor.address) == ("ray", "auto")
    with pytest.raises(Exception):
        RunConfig.model_validate({"executor": {"kind": "dask"}})


def test_ray_run_equals_single_process_run(local_run: Path, ray_run: Path) -> None:
    ref, got = _outputs(local_run), _outputs(ray_run)
    assert sorted(ref) == sorted(got)
    for name in ref:
        assert got[name] == ref[name], name
    # Every stage produced something, so the comparison covers every generation step.
    for name in ("sft/solutions", "evolve/problems", "evolve/solutions", "irm/irm_rankings", "prm/prm",
                 "prm/rollouts", "irm/judgements"):
        assert ref[name], name
    assert _summaries(got_dir := ray_run) == _summaries(local_run), got_dir
    # The rows appended as results arrived (the resume state) are the same rows, whatever their order.
    assert _partial_rows(ray_run) == _partial_rows(local_run)
    cfg = yaml.safe_load((ray_run / "config.yaml").read_text())
    assert cfg["executor"]["kind"] == "ray"


def test_ray_resume_from_half_written_shard_sends_only_the_rest(tmp_path: Path, local_run: Path, ray_local) -> None:
    from evolkit.pipeline import run_all

    run_dir = tmp_path / "run"
    (run_dir / "sft").mkdir(parents=True)
    shutil.copytree(local_run / "seeds", run_dir / "seeds")
    manifest = json.loads((local_run / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {"seeds": manifest["stages"]["seeds"]}}))
    # A session killed after half of the problems: their records are in the shard (one per problem, all its samples),
    # nothing in the cache, and the last record is torn.
    lines = (local_run / "sft" / "solutions.shard-00000.jsonl").read_text().splitlines(keepends=True)
    done_pids = [json.loads(x)["key"] for x in lines][:7]
    kept = [x for x in lines if json.loads(x)["key"] in done_pids]
    (run_dir / "sft" / "solutions.shard-00000.jsonl").write_text("".join(kept) + '{"key": "torn')
    cfg = RunConfig.model_validate({**RUN_CONFIG, "stages": {"sft": RUN_CONFIG["stages"]["sft"]},
                                    "executor": RAY_EXECUTOR})
    results = run_all(cfg, run_dir, show_progress=False)
    stats = results["_backend"]["custom:det-teacher"]
    n_problems = len(read_parquet(run_dir / "seeds" / "problems.parquet"))
    assert stats["requests"] == n_problems - len(done_pids) and stats["cached"] == 0
    for name in ("solutions", "sft", "dropped"):
        assert read_parquet(run_dir / "sft" / f"{name}.parquet") == read_parquet(local_run / "sft" / f"{name}.parquet")

    # Run it again from scratch in the same folder (shards gone, cache kept): the requests answered by the workers
    # in the resumed session come from the driver's cache; only the ones answered before the "kill" (whose rows were
    # in the shard, not in this cache) are sent again.
    for shard in (run_dir / "sft").glob("*.jsonl"):
        shard.unlink()
    results = run_all(cfg, run_dir, force=True, show_progress=False)
    stats = results["_backend"]["custom:det-teacher"]
    assert stats["requests"] == n_problems and stats["cached"] == n_problems - len(done_pids)
    assert read_parquet(run_dir / "sft" / "solutions.parquet") == read_parquet(local_run / "sft" / "solutions.parquet")


def test_dead_worker_fails_its_unfinished_requests_and_loses_none(ray_local) -> None:
    from evolkit.backends import Request, Sampling
    from evolkit.config import BackendConfig
    from evolkit.executors import ExecutorConfig, RayBackend, RayExecutor

    ex = RayExecutor(ExecutorConfig(kind="ray", shards=2, num_cpus_per_task=0.5, batch_size=1, batch_seconds=0.01,
                                    checker_workers=1))
    be = RayBackend(BackendConfig(**fake_backend("slow", delay=0.05), cache=False), ex)
    reqs = [Request([{"role": "user", "content": f"What is {i} + 1?"}], Sampling(max_tokens=8)) for i in range(60)]

    async def go() -> list[tuple[int, object]]:
        got = []
        async for i, res in be.stream(reqs):
            got.append((i, res))
            if len(got) == 6:
                ray.kill(ex._actors[0])
        return got

    try:
        got = asyncio.run(go())
    finally:
        ex.close()
    assert sorted(i for i, _ in got) == list(range(60))
    failed = [(i, r) for i, r in got if not r.ok]
    assert failed and all("ray worker failed" in r.error for _, r in failed)
    assert all(i % 2 == 0 for i, _ in failed)  # only shard 0's requests (0, 2, 4, ...) were on the dead worker
    assert be.stats.requests == 60 and be.stats.failed == len(failed)


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_failing_row_maker_fails_the_step_in_both_executors(tmp_path: Path, kind: str, request) -> None:
    import functools

    from evolkit.backends import Request, Sampling
    from evolkit.pipeline import Context
    from evolkit.records import Problem
    from evolkit.stages.sft import solution_rows
    from evolkit.types import Step

    if kind == "ray":
        request.getfixturevalue("ray_local")
    cfg = RunConfig.model_validate({"backend": fake_backend(), "stages": {},
                                    "executor": RAY_EXECUTOR if kind == "ray" else {"kind": "local"}})
    probs = [Problem(id=f"p{i}", root_id=f"p{i}", source="gsm8k", question=f"What is {i} + 1?", gold_answer=str(i + 1))
             for i in range(6)]
    items: list = [(p, p.gold_answer) for p in probs]
    items[4] = (probs[4], probs[4].gold_answer, "one too many")  # the row maker cannot unpack it
    step = Step("main", items, key=lambda it: it[0].id,
                request=lambda it: Request([{"role": "user", "content": it[0].question}], Sampling(max_tokens=8),
                                           task="solve"),
                make_rows=functools.partial(solution_rows, drop_truncated=True, sampling={}))

    with Context.open(cfg, tmp_path / "run", show_progress=False) as ctx:
        with pytest.raises(ValueError, match="unpack"):
            asyncio.run(ctx.generate("sft", "solutions", step))
