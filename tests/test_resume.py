"""Kill and resume: `evolkit run` SIGKILLed at random points (mid-request, mid-stage, between stages, while Parquet is
written) and resumed, again and again, ends with the outputs of an uninterrupted run, row for row, at k = 1 and k = 64.

The server (tests/faultserver.py with content-aware replies) counts requests: after each kill at most the requests that
were in flight (``max_concurrency``) or answered within the request cache's last commit window are sent again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolkit.cli import main
from evolkit.store import read_parquet
from tests.faultserver import FaultServer
from tests.stub_replies import smart_reply

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = 4


@pytest.fixture(scope="module")
def server():
    # A small per-request delay keeps each stage busy for a while; replies are a function of the prompt.
    with FaultServer(reply=smart_reply, latency=0.01) as srv:
        yield srv


def _config(tmp_path: Path, url: str, k: int, n: int) -> Path:
    cfg = tmp_path / f"resume-k{k}.yaml"
    cfg.write_text(f"""
name: resume
backend: {{kind: openai, model: fault-model, base_url: "{url}", max_concurrency: {CONCURRENCY}}}
sampling: {{max_tokens: 64, temperature: 0.7}}
seeds:
  - {{source: gsm8k, n: {n}}}
  - {{source: math, n: {n}}}
stages:
  sft: {{k: {k}, fewshot: 1}}
  evolve:
    rounds: [{{pool: seeds, children_per_parent: 1.0}}]
    k: 3
    decontamination: {{enabled: false}}
    plots: false
  irm: {{n_instructions: 6, allow_single_evolver: true}}
  prm: {{sources: [sft, evolve], max_solutions: 12, labellers: [judge, montecarlo], rollouts: 2,
         max_rollout_solutions: 4}}
""")
    return cfg


def _outputs(run_dir: Path) -> dict[str, list[dict]]:
    return {str(p.relative_to(run_dir)): read_parquet(p) for p in sorted(run_dir.glob("*/*.parquet"))}


def _spawn(cfg: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "evolkit.cli", "run", str(cfg), "-o", str(run_dir), "--resume", "--no-progress"],
        cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its answer-checker workers
    except ProcessLookupError:
        pass
    proc.wait(30)
    if proc.stderr:
        proc.stderr.close()


def _stage_done(run_dir: Path, stage: str) -> bool:
    m = run_dir / "manifest.json"
    try:
        return m.exists() and f'"{stage}": {{\n      "status": "done"' in m.read_text()
    except OSError:
        return False


@pytest.mark.parametrize("k,n", [(1, 10), (64, 4)])
def test_random_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path: Path, server: FaultServer, k: int,
                                                                 n: int) -> None:
    cfg = _config(tmp_path, server.base_url, k, n)

    # 1. The reference: one uninterrupted run (in a subprocess, timed, so the kill points spread over a whole run).
    server.reset()
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    proc = _spawn(cfg, ref)
    assert proc.wait(600) == 0, proc.stderr.read().decode() if proc.stderr else ""
    duration = time.monotonic() - t0
    reference = _outputs(ref)
    ref_requests = len(server.entries())
    assert reference["sft/solutions.parquet"] and len(reference["sft/solutions.parquet"]) == 2 * n * k
    assert reference["prm/prm.parquet"] and reference["irm/irm_rankings.parquet"]

    # 2. The same run, killed again and again (at random moments, and right after stages are marked done) until it
    #    finishes; in fresh folders until at least ten kills have landed. Each ends with the reference's outputs.
    rng = random.Random(k)
    kills = episodes = 0
    while kills < 10:
        episodes += 1
        assert episodes <= 8, f"only {kills} kills landed in {episodes - 1} runs"
        server.reset()
        run_dir = tmp_path / f"killed-{episodes}"
        landed = 0
        while True:
            trigger = rng.choice([None, None, None, "sft", "evolve", "irm"])
            proc = _spawn(cfg, run_dir)
            deadline = time.monotonic() + (rng.uniform(0.3, duration) if trigger is None else duration)
            while time.monotonic() < deadline and proc.poll() is None:
                if trigger is not None and _stage_done(run_dir, trigger):
                    break
                time.sleep(0.01)
            if proc.poll() is not None:  # the run finished before this kill point
                err = proc.stderr.read().decode() if proc.stderr else ""
                assert proc.returncode == 0, err
                if proc.stderr:
                    proc.stderr.close()
                break
            _kill(proc)
            landed += 1
        kills += landed
        got = _outputs(run_dir)
        assert sorted(got) == sorted(reference)
        for name, rows in reference.items():
            assert got[name] == rows, f"{name} differs after {landed} kills + resume"
        # Nothing was sent twice beyond what was in flight at each kill (or answered in the cache's commit window).
        extra = len(server.entries()) - ref_requests
        assert extra <= landed * 2 * CONCURRENCY, f"{extra} requests sent again over {landed} kills"


def test_torn_last_line_is_redone(tmp_path: Path, server: FaultServer) -> None:
    """A record cut short by a kill is not counted as done: its item is requested again."""
    cfg = _config(tmp_path, server.base_url, 2, 3)
    run_dir = tmp_path / "run"
    server.reset()
    assert main(["run", str(cfg), "-o", str(run_dir), "--no-progress"]) == 0
    reference = _outputs(run_dir)
    shard = sorted((run_dir / "sft").glob("solutions.shard-*.jsonl"))[-1]
    data = shard.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    shard.write_bytes(data[: len(data) - len(last) // 2 - 1])  # the last record torn in half
    (run_dir / "manifest.json").unlink()  # as if killed before the stage finished
    server.reset()
    assert main(["run", str(cfg), "-o", str(run_dir), "--resume", "--no-progress"]) == 0
    assert _outputs(run_dir) == reference
    # The torn item was done again (its answer came from the request cache: nothing was sent), nothing else was.
    new = sorted((run_dir / "sft").glob("solutions.shard-*.jsonl"))[-1]
    assert new != shard and new.read_bytes().count(b"\n") == 1
    assert len(server.entries()) == 0
