"""Kill and resume: `evolkit run` SIGKILLed in the middle of the SFT stage, then run again with --resume.

The resumed run's outputs equal an uninterrupted run's row for row, and the request cache means no request that was
answered before the kill is sent again (the server counts requests per prompt).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolkit.cli import main
from evolkit.store import read_parquet
from tests.faultserver import FaultServer

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = [("seeds", "problems"), ("sft", "solutions"), ("sft", "sft"), ("sft", "dropped")]
N_PROBLEMS, K, ANSWERED_BEFORE_KILL = 24, 2, 9


@pytest.fixture(scope="module")
def server():
    # A small per-request delay so the run is mid-stage for a while; replies are a function of the prompt.
    with FaultServer(latency=0.02) as srv:
        yield srv


def _config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "resume.yaml"
    cfg.write_text(
        f"""
name: resume
backend: {{kind: openai, model: fault-model, base_url: "{url}", max_concurrency: 4}}
sampling: {{max_tokens: 32, temperature: 0.7}}
seeds:
  - {{source: gsm8k, n: 12}}
  - {{source: math, n: 12}}
stages:
  sft: {{k: {K}, fewshot: 1}}
"""
    )
    return cfg


def _wait_for(cond, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_mid_stage_then_resume_equals_uninterrupted_run(tmp_path: Path, server: FaultServer) -> None:
    cfg = _config(tmp_path, server.base_url)

    # 1. The reference: one uninterrupted run.
    server.reset()
    assert main(["run", str(cfg), "-o", str(tmp_path / "ref"), "--no-progress"]) == 0
    assert sum(server.answered().values()) == N_PROBLEMS

    # 2. The same run in a subprocess, SIGKILLed once some problems are solved and written. The server answers a few
    #    requests, then holds the rest, so the kill lands while requests are in flight but none is half-answered.
    server.reset()
    server.hold_after(ANSWERED_BEFORE_KILL)
    run_dir = tmp_path / "killed"
    shard = run_dir / "sft" / "solutions.shard-00000.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evolkit.cli", "run", str(cfg), "-o", str(run_dir), "--no-progress"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        _wait_for(lambda: _lines(shard) >= ANSWERED_BEFORE_KILL * K and server.held() > 0, 180, proc,
                  "the first answers were written")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        try:  # the run's helper processes (answer-checker workers) go with it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    manifest = (run_dir / "manifest.json").read_text()
    assert '"sft"' not in manifest  # killed mid-stage: SFT is not marked done
    assert _lines(shard) == ANSWERED_BEFORE_KILL * K
    server.release()
    answered_before = server.answered()
    n_log_before = len(server.entries())
    assert sum(answered_before.values()) == ANSWERED_BEFORE_KILL

    # 3. Resume in the same folder.
    assert main(["run", str(cfg), "-o", str(run_dir), "--resume", "--no-progress"]) == 0

    # Outputs equal the uninterrupted run's, row for row.
    for stage, name in OUTPUTS:
        ref = read_parquet(tmp_path / "ref" / stage / f"{name}.parquet")
        got = read_parquet(run_dir / stage / f"{name}.parquet")
        assert got == ref, f"{stage}/{name} differs after kill + resume"
    assert len(read_parquet(run_dir / "sft" / "solutions.parquet")) == N_PROBLEMS * K

    # No request was answered twice, and none answered before the kill was sent again after it.
    answered = server.answered()
    assert len(answered) == N_PROBLEMS and set(answered.values()) == {1}
    resent = {e.key for e in server.entries()[n_log_before:]} & set(answered_before)
    assert not resent, f"{len(resent)} requests answered before the kill were sent again"
