"""A failed run says so: a stage whose requests all failed (or failed beyond `max_failed_share`, or hit an
authentication error) exits non-zero with a summary and is not marked done; `--resume` sends the failed items of
finished stages again (`--no-retry-failed` leaves them); reasons name what happened (`request_failed`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolkit.cli import main
from evolkit.store import read_parquet
from tests.faultserver import FaultServer, always, refused_url
from tests.stub_replies import h, smart_reply


def _config(tmp_path: Path, url: str, extra: str = "", stages: str = "  sft: {k: 2, fewshot: 1}\n") -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
name: failures
backend: {{kind: openai, model: fault-model, base_url: "{url}", max_retries: 0, request_timeout: 5}}
sampling: {{max_tokens: 64}}
seeds:
  - {{source: gsm8k, n: 4}}
  - {{source: math, n: 4}}
{extra}
stages:
{stages}""")
    return cfg


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_unreachable_server_fails_the_run_then_resume_completes_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, refused_url())), "-o", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "sft: 8 of 8 requests failed" in err and "--resume" in err
    assert _manifest(run)["stages"]["sft"]["status"] == "failed"
    assert not (run / "sft" / "solutions.parquet").exists()
    # The endpoint is a runtime setting: a resumed run may point elsewhere, and sends every failed item again.
    with FaultServer(reply=smart_reply) as srv:
        cfg = _config(tmp_path, srv.base_url)
        assert main(["run", str(cfg), "-o", str(run), "--resume", "--no-progress"]) == 0
        assert len(srv.entries()) == 8
    assert _manifest(run)["stages"]["sft"]["status"] == "done"
    assert len(read_parquet(run / "sft" / "solutions.parquet")) == 16


def test_a_server_rejecting_everything_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with FaultServer(plan=always("500")) as srv:
        run = tmp_path / "run"
        assert main(["run", str(_config(tmp_path, srv.base_url)), "-o", str(run), "--no-progress"]) == 1
    assert "8 of 8 requests failed" in capsys.readouterr().err
    assert _manifest(run)["stages"]["sft"]["status"] == "failed"


def test_some_failures_finish_the_stage_and_resume_retries_only_them(tmp_path: Path) -> None:
    fail = {"on": True}

    def plan(key: str, attempt: int) -> str | None:  # a fixed third of the problems fail while `on`
        return "500" if fail["on"] and h("fail", key) % 3 == 0 else None

    with FaultServer(plan=plan, reply=smart_reply) as srv:
        run = tmp_path / "run"
        cfg = _config(tmp_path, srv.base_url, "max_failed_share: 1.0")
        assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 0
        info = _manifest(run)["stages"]["sft"]
        failed = info["failed_items"]
        sols = read_parquet(run / "sft" / "solutions.parquet")
        reasons = [s["reason"] for s in sols if s["verdict"] == "failed"]
        assert failed > 0 and len(reasons) == failed and all(r.startswith("request_failed") for r in reasons)
        # --no-retry-failed: the finished stage stays as it is.
        n0 = len(srv.entries())
        assert main(["run", "-o", str(run), "--resume", "--no-retry-failed", "--no-progress"]) == 0
        assert len(srv.entries()) == n0
        # --resume: exactly the failed items are sent again.
        fail["on"] = False
        assert main(["run", "-o", str(run), "--resume", "--no-progress"]) == 0
        assert len(srv.entries()) == n0 + failed
    assert _manifest(run)["stages"]["sft"]["failed_items"] == 0
    assert all(s["verdict"] != "failed" for s in read_parquet(run / "sft" / "solutions.parquet"))


def test_a_share_of_failures_above_the_limit_fails_the_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def plan(key: str, attempt: int) -> str | None:
        return "500" if h("fail", key) % 2 == 0 else None

    with FaultServer(plan=plan, reply=smart_reply) as srv:
        run = tmp_path / "run"
        cfg = _config(tmp_path, srv.base_url, "max_failed_share: 0.01")
        assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 1
    assert "requests failed" in capsys.readouterr().err
    assert _manifest(run)["stages"]["sft"]["status"] == "failed"


def test_evolved_problem_whose_answer_request_failed_is_eliminated_as_request_failed(tmp_path: Path) -> None:
    def plan(key: str, attempt: int) -> str | None:  # answers to evolved problems fail; everything else works
        return "500" if "takes away" in key else None

    stages = """  sft: {k: 2, fewshot: 1}
  evolve: {rounds: [{pool: seeds, children_per_parent: 1.0}], k: 2, plots: false, decontamination: {enabled: false}}
"""
    with FaultServer(plan=plan, reply=smart_reply) as srv:
        run = tmp_path / "run"
        cfg = _config(tmp_path, srv.base_url, stages=stages)
        main(["run", str(cfg), "-o", str(run), "--no-progress"])
    elim = read_parquet(run / "evolve" / "eliminated.parquet")
    assert elim and {e["reason"] for e in elim} == {"request_failed"}
    assert all("no final answer" not in (e["detail"] or "") for e in elim)
