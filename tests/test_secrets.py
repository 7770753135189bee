"""Secrets never reach the run folder: API keys and tokens set in the environment appear in no file it holds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from evolkit.cli import main
from evolkit.settings import SECRET_ENV_VARS
from evolkit.store import read_parquet
from tests.faultserver import AUTH_FAULT, FaultServer, default_reply
from tests.doubles import FAKE_YAML


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {name: f"sec-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_ENV_VARS}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _leaks(root: Path, secrets: dict[str, str]) -> list[str]:
    found = []
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"{root} is empty"
    for p in files:
        data = p.read_bytes()
        for name, value in secrets.items():
            if value.encode() in data:
                found.append(f"{p.relative_to(root)} contains {name}")
    return found


def _seeds(tmp_path: Path, secrets: dict[str, str]) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            f'{{"question": "Tom has {i} pens and buys {i + 2} more. How many pens?", "answer": "#### {2 * i + 2}"}}\n'
            for i in range(6)
        )
    )
    return seeds


def test_deterministic_run_writes_no_secrets(tmp_path: Path, secrets: dict[str, str]) -> None:
    cfg = tmp_path / "det.yaml"
    cfg.write_text(
        f"name: secrets\nbackend: {FAKE_YAML}\nseeds:\n  - {{source: gsm8k, path: '{_seeds(tmp_path, secrets)}'}}\n"
        f"  - {{source: math, n: 4}}\nstages:\n  sft: {{k: 2}}\n"
    )
    assert main(["run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"]) == 0
    assert _leaks(tmp_path / "run", secrets) == []


def test_openai_run_writes_no_secrets(tmp_path: Path, secrets: dict[str, str]) -> None:
    key = secrets["OPENAI_API_KEY"]

    def plan(prompt: str, attempt: int) -> str | None:
        return AUTH_FAULT if "buys 3 more" in prompt else None  # this server quotes the key back in its 401 message

    def reply(messages, index, seed):  # a model that repeats a secret it was shown somewhere
        text = default_reply(messages, index, seed)
        return text + f"\n(my key is {key}; the hub token is {secrets['HF_TOKEN']})" if index == 0 else text

    with FaultServer(plan=plan, reply=reply) as srv:
        cfg = tmp_path / "openai.yaml"
        cfg.write_text(
            f"name: secrets\nbackend: {{kind: openai, model: fault-model, base_url: '{srv.base_url}', max_retries: 1}}\n"
            f"sampling: {{max_tokens: 32}}\nseeds:\n  - {{source: gsm8k, path: '{_seeds(tmp_path, secrets)}'}}\n"
            f"stages:\n  sft: {{k: 2, fewshot: 1}}\n"
        )
        assert main(["run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"]) == 0
        auth = {h.get("authorization") for h in srv.headers_seen}
    assert auth == {f"Bearer {key}"}  # the key from the environment was used
    sols = read_parquet(tmp_path / "run" / "sft" / "solutions.parquet")
    failed = [s for s in sols if s["verdict"] == "failed"]
    assert len(failed) == 1 and "401" in failed[0]["reason"] and "***" in failed[0]["reason"]
    assert any("my key is ***" in s["text"] for s in sols)
    assert _leaks(tmp_path / "run", secrets) == []
