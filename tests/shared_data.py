"""The shared data folder (GSM8k, MATH, PRM800K, ...) for the tests that read real problems.

In CI a missing file fails the test (the data is part of the environment); on a developer machine without it the test
is skipped with the path it looked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evolkit.settings import data_dir


def shared_path(*parts: str) -> Path:
    path = data_dir().joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data file missing in CI: {path}")
        pytest.skip(f"shared data not available at {path} (set EVOLKIT_DATA); CI is unset so this is skipped")
    return path


def shared_jsonl(*parts: str) -> list[dict]:
    with open(shared_path(*parts), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
