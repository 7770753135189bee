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


#: The prompt files read since :func:`start_record`: resolved path -> sha256 of their bytes (a run records them, and a
#: resumed run refuses prompt files that changed meanwhile).
_RECORD: dict[str, str] = {}
#: path -> (mtime_ns, size, text, sha256): a file is read again when it changes.
_FILES: dict[str, tuple[int, int, str, str]] = {}


def start_record() -> None:
    """Start recording the prompt files read (a run does, when it opens)."""
    _RECORD.clear()


def loaded_files() -> dict[str, str]:
    """The prompt files read since :func:`start_record`, with the sha256 of the content that was read."""
    return dict(_RECORD)


def _read(path: str) -> str:
    try:
        st = Path(path).stat()
        hit = _FILES.get(path)
        if hit is None or hit[:2] != (st.st_mtime_ns, st.st_size):
            data = Path(path).read_bytes()
            hit = _FILES[path] = (st.st_mtime_ns, st.st_size, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    _RECORD[_resolved(path)] = hit[3]
    return hit[2]


@functools.lru_cache(maxsize=1024)
def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def load_text(name_or_path: str) -> str:
    return _read(str(prompt_path(name_or_path))).strip("\n")


def _template(path: str) -> jinja2.Template:
    return _compile(path, _read(path))


@functools.lru_cache(maxsize=256)
def _compile(path: str, text: str) -> jinja2.Template:
    try:
        return _ENV.from_string(text.strip("\n"))
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
