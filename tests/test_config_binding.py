"""A run folder is bound to its config: `--resume` with settings that change what the data means (seeds, sizes, k,
sampling, prompts, models) stops with the differences listed and changes nothing; settings that do not change the data
(concurrency, timeouts, retries, endpoints) may change; `--force` is the way to change the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from evolkit.cli import main
from evolkit.store import read_parquet
from tests.faultserver import FaultServer
from tests.stub_replies import smart_reply


@pytest.fixture(scope="module")
def server():
    with FaultServer(reply=smart_reply) as srv:
        yield srv


def _config(tmp_path: Path, url: str, solve_prompt: Path | None = None) -> Path:
    prompts = f", prompts: {{solve_user: '{solve_prompt}'}}" if solve_prompt else ""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
name: binding
backend: {{kind: openai, model: fault-model, base_url: "{url}", max_concurrency: 4}}
sampling: {{max_tokens: 64, temperature: 0.7}}
seeds:
  - {{source: gsm8k, n: 3}}
  - {{source: math, n: 3}}
stages:
  sft: {{k: 2, fewshot: 1{prompts}}}
""")
    return cfg


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and not p.name.startswith("cache.sqlite")}


@pytest.mark.parametrize("change,expect", [
    ("stages.sft.k=3", "stages.sft.k: 2 -> 3"),
    ("sampling.temperature=0.1", "sampling.temperature: 0.7 -> 0.1"),
    ("seeds.0.n=5", "seeds.0.n: 3 -> 5"),
    ("backend.model=other-model", "backend.model: 'fault-model' -> 'other-model'"),
])
def test_resume_with_data_changing_settings_is_refused(tmp_path: Path, server: FaultServer, change: str, expect: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    cfg = _config(tmp_path, server.base_url)
    assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 0
    before = _snapshot(run)
    assert main(["run", str(cfg), "-o", str(run), "--resume", "--set", change, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and expect in err and "--force" in err
    assert _snapshot(run) == before  # config.yaml, manifest and outputs untouched


def test_resume_with_runtime_settings_changed_is_allowed(tmp_path: Path, server: FaultServer) -> None:
    run = tmp_path / "run"
    cfg = _config(tmp_path, server.base_url)
    assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 0
    config_yaml = (run / "config.yaml").read_bytes()
    for change in ("backend.max_concurrency=16", "backend.max_retries=1", "backend.request_timeout=30"):
        assert main(["run", str(cfg), "-o", str(run), "--resume", "--set", change, "--no-progress"]) == 0
    assert (run / "config.yaml").read_bytes() == config_yaml  # the run keeps the config it was made with
    assert main(["run", "-o", str(run), "--resume", "--no-progress"]) == 0  # no config: the run's own


def test_a_changed_prompt_file_is_refused_on_resume(tmp_path: Path, server: FaultServer,
                                                    capsys: pytest.CaptureFixture) -> None:
    prompt = tmp_path / "solve.jinja"
    prompt.write_text("Solve step by step:\n{{ question }}")
    run = tmp_path / "run"
    cfg = _config(tmp_path, server.base_url, prompt)
    assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 0
    prompt.write_text("Solve it quickly:\n{{ question }}")
    assert main(["run", str(cfg), "-o", str(run), "--resume", "--no-progress"]) == 2
    assert f"prompt file {prompt.resolve()}: changed" in capsys.readouterr().err


def test_force_redoes_the_run_with_the_new_settings(tmp_path: Path, server: FaultServer) -> None:
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    cfg = _config(tmp_path, server.base_url)
    assert main(["run", str(cfg), "-o", str(run), "--no-progress"]) == 0
    assert main(["run", str(cfg), "-o", str(run), "--force", "--set", "stages.sft.k=3", "--no-progress"]) == 0
    assert main(["run", str(cfg), "-o", str(fresh), "--set", "stages.sft.k=3", "--no-progress"]) == 0
    for name in ("solutions", "sft", "dropped"):
        assert read_parquet(run / "sft" / f"{name}.parquet") == read_parquet(fresh / "sft" / f"{name}.parquet")
    assert "k: 3" in (run / "config.yaml").read_text()
