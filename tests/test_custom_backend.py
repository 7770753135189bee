"""``backend: {kind: custom, factory: "package.module:callable", model, options}``: a backend by import path."""

from __future__ import annotations

import pytest

from evolkit.backends import CachedBackend, make_backend
from evolkit.config import BackendConfig
from evolkit.errors import ConfigError
from tests.doubles import FACTORY, fake_backend
from tests.doubles.deterministic import DeterministicBackend


def not_a_backend(model: str, **options):
    return {"model": model}


NOT_CALLABLE = 42


def test_factory_gets_model_and_options(tmp_path):
    be = make_backend(BackendConfig(**fake_backend("my-model", accuracy=0.25, delay=0.5)))
    assert isinstance(be, DeterministicBackend)
    assert (be.model, be.accuracy, be.delay) == ("my-model", 0.25, 0.5)
    cached = make_backend(BackendConfig(**fake_backend()), tmp_path / "cache.sqlite")
    assert isinstance(cached, CachedBackend) and cached.model == "deterministic"


def test_custom_without_a_factory_is_refused_when_the_config_loads():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="kind custom needs factory"):
        BackendConfig(kind="custom")


@pytest.mark.parametrize("factory, needle", [
    ("tests.doubles.deterministic", "backend.factory"),  # no ':callable'
    ("tests.no_such_module:make", "cannot import module 'tests.no_such_module'"),
    ("tests.test_custom_backend:absent", "has no 'absent'"),
    ("tests.test_custom_backend:NOT_CALLABLE", "not a callable"),
    ("tests.test_custom_backend:not_a_backend", "returned a dict, not an evolkit Backend"),
])
def test_bad_factories_are_config_errors(factory, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as e:
        make_backend(BackendConfig(kind="custom", factory=factory))
    assert "backend.factory" in str(e.value)


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="backend.options"):
        make_backend(BackendConfig(kind="custom", factory=FACTORY, options={"no_such_option": 1}))
    with pytest.raises(ConfigError, match="backend.options"):
        make_backend(BackendConfig(kind="transformers", options={"engine": "warp"}))


def test_cli_reports_a_bad_factory_without_a_traceback(tmp_path, capsys):
    from evolkit.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: x\nbackend: {kind: custom, factory: 'tests.nope:make'}\n"
                   "seeds:\n  - {source: gsm8k, n: 2}\nstages:\n  sft: {k: 1}\n")
    assert main(["run", str(cfg), "-o", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "backend.factory" in err and "tests.nope" in err and "Traceback" not in err
