"""Secrets never reach anything evolkit writes: the configured key variable (any name), HF_TOKEN, ARGILLA_API_KEY and the
known key variables appear in no file of the run folder or the published folder (Parquet decoded too), in no log line
and in no error message, even when the model repeats the key and the server quotes it back in a 401."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from evolkit.cli import main
from evolkit.settings import SECRET_ENV_VARS
from evolkit.store import read_parquet
from tests.faultserver import AUTH_FAULT, FaultServer
from tests.stub_replies import smart_reply

KEY_ENV = "STUB_KEY"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {name: f"sec-{name.lower()}-{uuid.uuid4().hex}" for name in (*SECRET_ENV_VARS, KEY_ENV)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _leaks(root: Path, secrets: dict[str, str]) -> list[str]:
    """Every file under ``root`` as bytes, and every Parquet file decoded row by row."""
    found = []
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"{root} is empty"
    for p in files:
        blobs = [p.read_bytes()]
        if p.suffix == ".parquet":
            blobs.append(json.dumps(read_parquet(p), default=str).encode())
        for name, value in secrets.items():
            if any(value.encode() in b for b in blobs):
                found.append(f"{p.relative_to(root)} contains {name}")
    return found


def _config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "secrets.yaml"
    cfg.write_text(f"""
name: secrets
backend: {{kind: openai, model: fault-model, base_url: "{url}", api_key_env: {KEY_ENV}, max_retries: 0}}
sampling: {{max_tokens: 64}}
seeds:
  - {{source: gsm8k, n: 4}}
  - {{source: math, n: 4}}
stages:
  sft: {{k: 2, fewshot: 1}}
  evolve: {{rounds: [{{pool: seeds, children_per_parent: 1.0}}], k: 3, plots: false,
            decontamination: {{enabled: false}}}}
  irm: {{n_instructions: 4, allow_single_evolver: true}}
  prm: {{sources: [sft, evolve], max_solutions: 8}}
""")
    return cfg


def test_echoed_keys_reach_no_file_of_the_run_or_the_published_dataset(
        tmp_path: Path, secrets: dict[str, str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    def reply(messages, index, seed):  # a model that repeats every secret it could have seen, in every kind of answer
        leak = " ".join(secrets.values())
        text = smart_reply(messages, index, seed)
        if text.startswith("{"):  # a judge's JSON: keep it parseable, put the keys in a note field
            obj = json.loads(text)
            obj["note"] = leak
            return json.dumps(obj)
        return f"{text}\n(keys: {leak})"

    caplog.set_level(logging.DEBUG)
    with FaultServer(reply=reply) as srv:
        cfg = _config(tmp_path, srv.base_url)
        assert main(["run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"]) == 0
        auth = {h.get("authorization") for h in srv.headers_seen}
    assert auth == {f"Bearer {secrets[KEY_ENV]}"}  # the key named by api_key_env was used
    sols = read_parquet(tmp_path / "run" / "sft" / "solutions.parquet")
    assert sols and all("keys: ***" in s["text"] for s in sols)
    assert main(["publish", str(tmp_path / "run"), "--local", str(tmp_path / "published")]) == 0
    assert _leaks(tmp_path / "run", secrets) == []
    assert _leaks(tmp_path / "published", secrets) == []
    out = capsys.readouterr()
    logs = caplog.text + out.out + out.err
    assert not [n for n, v in secrets.items() if v in logs]
    card = (tmp_path / "published" / "README.md").read_text()
    assert str(tmp_path) not in card and "/root/" not in card and "/home/" not in card  # no local absolute paths


def test_a_401_quoting_the_key_stops_the_run_and_leaves_no_key(tmp_path: Path, secrets: dict[str, str],
                                                               capsys: pytest.CaptureFixture) -> None:
    with FaultServer(plan=lambda key, attempt: AUTH_FAULT, reply=smart_reply) as srv:
        cfg = _config(tmp_path, srv.base_url)
        assert main(["run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"]) == 1
        sent = len(srv.entries())
    err = capsys.readouterr().err
    assert "refused the request" in err and KEY_ENV in err and "***" in err
    assert secrets[KEY_ENV] not in err
    assert sent <= 8  # stopped at the first authentication error (plus what was already in flight)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "failed"
    assert _leaks(tmp_path / "run", secrets) == []
