"""Process-wide settings read from the environment, in one place.

``EVOLKIT_DATA`` points at the shared data folder (GSM8k, MATH, PRM800K, prompts...). When unset, evolkit looks for
``../shared/data`` beside the repository checkout, then beside the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent

#: Names of environment variables whose values must never be written anywhere (logs, run folders, cards, datasets).
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "ARGILLA_API_KEY")


def data_dir() -> Path:
    """The shared data folder (may not exist on a user's clone: callers check ``.exists()``)."""
    env = os.environ.get("EVOLKIT_DATA")
    if env:
        return Path(env).expanduser().resolve()
    for base in (REPO_DIR, Path.cwd()):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.exists():
            return cand
    return (REPO_DIR / ".." / "shared" / "data").resolve()


def secret_values(extra_names: Iterable[str] = ()) -> list[str]:
    """The current values of secret environment variables (non-trivial ones only): the known ones
    (:data:`SECRET_ENV_VARS`) and ``extra_names`` (e.g. every ``api_key_env`` a run config names)."""
    names = dict.fromkeys([*SECRET_ENV_VARS, *extra_names])
    return list(dict.fromkeys(v for k in names if k and (v := os.environ.get(k)) and len(v) >= 6))
