"""Prompt files and their loader.

Every prompt evolkit sends lives in a file in this folder (``*.txt`` / ``*.jinja`` rendered with Jinja2, few-shot
exemplars in ``*.json``). A config overrides any of them by path, e.g. ``stages.sft.prompts.solve_system: my/solve.txt``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jinja2

from ..errors import ConfigError

PROMPT_DIR = Path(__file__).resolve().parent
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@functools.lru_cache(maxsize=1024)
def prompt_path(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix and p.exists():
        return p
    for ext in ("", ".jinja", ".txt", ".json"):
        cand = PROMPT_DIR / f"{name_or_path}{ext}"
        if cand.is_file():
            return cand
    raise ConfigError(f"prompt {name_or_path!r}: no such file (neither a path nor one of {PROMPT_DIR}/*)")


#: Every prompt file read in this process: resolved path -> sha256 of its bytes (a run records them, and a resumed run
#: refuses prompt files that changed meanwhile).
_LOADED: dict[str, str] = {}


def loaded_files() -> dict[str, str]:
    return dict(_LOADED)


@functools.lru_cache(maxsize=256)
def _read(path: str) -> str:
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    _LOADED[str(Path(path).resolve())] = hashlib.sha256(data).hexdigest()
    return text


def load_text(name_or_path: str) -> str:
    return _read(str(prompt_path(name_or_path))).strip("\n")


@functools.lru_cache(maxsize=256)
def _template(path: str) -> jinja2.Template:
    try:
        return _ENV.from_string(_read(path).strip("\n"))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: template error: {e.message}") from None


def render(name_or_path: str, **variables: Any) -> str:
    path = str(prompt_path(name_or_path))
    try:
        return _template(path).render(**variables)
    except jinja2.UndefinedError as e:
        raise ConfigError(f"{path}: {e.message} (variables given: {', '.join(sorted(variables))})") from None


def load_json(name_or_path: str) -> Any:
    path = prompt_path(name_or_path)
    try:
        return json.loads(_read(str(path)))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def wizardmath_template(style: str = "default") -> str:
    """The WizardMath Alpaca template (``default`` for training data, ``cot`` for evaluation)."""
    return load_text(f"wizardmath_{style}")
