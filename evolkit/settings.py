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

#: Further variables named by the run's config (every backend role's ``api_key_env``): see :func:`register_secret_envs`.
_EXTRA_SECRET_ENVS: set[str] = set()


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


def register_secret_envs(names: list[str] | tuple[str, ...] | set[str]) -> None:
    """Treat the values of these environment variables as secrets too (a run registers its ``api_key_env`` names)."""
    _EXTRA_SECRET_ENVS.update(n for n in names if n)


def secret_env_names(extra_names: Iterable[str] = ()) -> list[str]:
    return sorted(set(SECRET_ENV_VARS) | _EXTRA_SECRET_ENVS | {n for n in extra_names if n})


def secret_values(extra_names: Iterable[str] = ()) -> list[str]:
    """The current values of secret environment variables (non-trivial ones only), longest first: the known ones
    (:data:`SECRET_ENV_VARS`), those a run registered, and ``extra_names`` (e.g. a config's ``api_key_env``s)."""
    vals = {v for k in secret_env_names(extra_names) if (v := os.environ.get(k)) and len(v) >= 6}
    return sorted(vals, key=lambda v: (-len(v), v))


class SecretFilter:
    """A logging filter that replaces secret values in log messages (and their arguments) by ``***``."""

    def filter(self, record: object) -> bool:
        secrets = secret_values()
        if not secrets:
            return True
        msg = record.getMessage()  # type: ignore[attr-defined]
        if any(s in msg for s in secrets):
            for s in secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, None  # type: ignore[attr-defined]
        return True
