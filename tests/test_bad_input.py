"""Bad input through the CLI: exit code 2 and one message naming the file and the line or field, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evolkit.cli import main
from tests.doubles import FAKE_YAML

REPO = Path(__file__).resolve().parents[1]

GOOD = b'{"question": "Ann has 2 apples and buys 3. How many?", "answer": "2 + 3 = 5\\n#### 5"}\n'

# name -> (seed file name, its bytes, substrings the message must contain after the file name)
BAD_SEEDS = {
    "malformed_jsonl": ("seeds.jsonl", GOOD + b'{"question": "broken\n', [":2:", "invalid JSON"]),
    "missing_field": ("seeds.jsonl", GOOD + GOOD + b'{"question": "no answer here"}\n', [":3:", "missing field 'answer'"]),
    "empty_string_field": ("seeds.jsonl", b'{"question": "  ", "answer": "#### 1"}\n', [":1:", "'question'"]),
    "no_gold_marker": ("seeds.jsonl", b'{"question": "q", "answer": "just 4"}\n', [":1:", "####"]),
    "not_an_object": ("seeds.jsonl", GOOD + b"[1, 2, 3]\n", [":2:", "expected a JSON object"]),
    "empty_file": ("seeds.jsonl", b"", ["empty"]),
    "only_blank_lines": ("seeds.jsonl", b"\n  \n\n", ["no records"]),
    "non_utf8": ("seeds.jsonl", GOOD + b'{"question": "caf\xe9 au lait", "answer": "#### 1"}\n', [":2:", "not UTF-8"]),
    "json_not_a_list": ("seeds.json", b'{"question": "q"}', ["expected a JSON list"]),
    "json_invalid": ("seeds.json", b'[{"question": "q",\n "answer": ]', [":2:", "invalid JSON"]),
    "bad_parquet": ("seeds.parquet", b"PAR1 this is not parquet", ["not a readable Parquet file"]),
}


def _config(path: Path, seeds: Path, source: str = "gsm8k") -> Path:
    path.write_text(
        f"name: bad\nbackend: {FAKE_YAML}\nseeds:\n  - {{source: {source}, path: '{seeds}'}}\n"
        f"stages:\n  sft: {{k: 1}}\n"
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["run", *argv, "--no-progress"])
    err = capsys.readouterr().err
    return rc, err


def _assert_clean_error(rc: int, err: str, where: str, needles: list[str]) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    msg = [ln for ln in err.splitlines() if ln.startswith("evolkit: error: ")]
    assert msg, err
    text = "\n".join(msg)
    assert where in text, text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.mark.parametrize("case", sorted(BAD_SEEDS))
def test_bad_seed_files(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, data, needles = BAD_SEEDS[case]
    seeds = tmp_path / name
    seeds.write_bytes(data)
    cfg = _config(tmp_path / "config.yaml", seeds)
    rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, str(seeds), needles)


def test_missing_math_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seeds = tmp_path / "math.jsonl"
    seeds.write_text('{"problem": "What is $1+1$?", "solution": "$\\\\boxed{2}$"}\n{"problem": "x"}\n')
    cfg = _config(tmp_path / "config.yaml", seeds, source="math")
    rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, f"{seeds}:2", ["missing field 'solution'"])


def test_missing_seed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seeds = tmp_path / "nowhere.jsonl"
    cfg = _config(tmp_path / "config.yaml", seeds)
    rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, str(seeds), ["no such file"])


BAD_CONFIGS = {
    "bad_yaml": ("name: x\nbackend: {kind: custom\nseeds: []\n", [":3:", "invalid YAML"]),
    "bad_yaml_indent": ("name: x\nstages:\n  sft:\n    k: 1\n   fewshot: 2\n", [":5:", "invalid YAML"]),
    "unknown_top_level_field": ("name: x\nbogus_field: 1\n", ["bogus_field", "Extra inputs are not permitted"]),
    "unknown_backend_field": ("backend: {kind: transformers, temprature: 0.3}\n", ["backend.temprature"]),
    "unknown_stage_field": ("stages:\n  sft: {k: 1, kk: 2}\n", ["kk", "Extra inputs are not permitted"]),
    "unknown_stage": ("stages:\n  nosuch: {}\n", ["unknown stage 'nosuch'"]),
    "bad_value": ("sampling: {max_tokens: -5}\n", ["sampling.max_tokens", "greater than 0"]),
    "bad_backend_kind": ("backend: {kind: telepathy}\n", ["backend.kind"]),
    "inline_api_key": ("backend: {kind: openai, api_key: sk-do-not-put-me-here}\n", ["api_key_env"]),
    "not_a_mapping": ("- just\n- a list\n", ["mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configs(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, needles = BAD_CONFIGS[case]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, str(cfg), needles)
    assert "sk-do-not-put-me-here" not in err


def test_unknown_stage_field_names_the_full_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("stages:\n  sft: {k: 1, kk: 2}\n")
    rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, str(cfg), ["stages.sft.kk"])


def test_config_not_utf8_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(b"name: caf\xe9\n")
    rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, str(cfg), ["not UTF-8"])
    rc, err = _run(capsys, str(tmp_path / "absent.yaml"), "-o", str(tmp_path / "run"))
    _assert_clean_error(rc, err, str(tmp_path / "absent.yaml"), ["no such config file"])


def test_bad_set_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"name: x\nbackend: {FAKE_YAML}\n")
    for override, needles in [
        ("backend.nope=1", ["--set", "backend.nope"]),
        ("sampling.max_tokens=abc", ["--set", "sampling.max_tokens"]),
        ("no_equals_sign", ["--set", "KEY=VALUE"]),
    ]:
        rc, err = _run(capsys, str(cfg), "-o", str(tmp_path / "run"), "--set", override)
        _assert_clean_error(rc, err, "--set", needles)


def test_subprocess_exit_code_and_clean_stderr(tmp_path: Path) -> None:
    """The real entry point: exit status 2, the message on stderr, no traceback."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(GOOD + b"{oops}\n")
    cfg = _config(tmp_path / "config.yaml", seeds)
    proc = subprocess.run(
        [sys.executable, "-m", "evolkit.cli", "run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"evolkit: error: {seeds}:2: invalid JSON" in proc.stderr
