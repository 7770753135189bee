"""Pytest plugin: one real local Argilla 2.8 server (redis + osmem + SQLite) for the whole test session.

Fixtures:

* ``argilla_server`` (session): the started ``evolkit.review.server.LocalArgilla``: ``.url``, ``.api_key`` (owner),
  ``.reviewers`` ([(username, password), ...], annotators in workspace ``.workspace``), ``.log_paths``.
  Started lazily, on first use, and stopped at the end of the session.
* ``argilla_client`` (session): ``argilla.Argilla(api_url=..., api_key=...)`` for the owner, from the SDK in the
  project venv.

When the server venv (``scripts/install_argilla_server.sh``) or redis-server is missing, tests that use these fixtures
are skipped with the reason, unless the environment variable ``CI`` is set: in CI they fail instead, so a missing
install step cannot pass unnoticed. ``EVOLKIT_ARGILLA_VENV`` points at another server venv.
The server's workdir (database, credentials, logs) is a temporary folder, kept when ``EVOLKIT_KEEP_ARGILLA_WORKDIR``
is set (its path is then printed in the terminal summary).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from evolkit.review.server import ArgillaServerError, LocalArgilla, default_venv, is_installed

_state: dict = {}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def argilla_server():
    venv = default_venv()
    if not is_installed(venv):
        reason = (
            f"local Argilla server not installed (venv {venv}, or redis-server missing): "
            "run `bash scripts/install_argilla_server.sh`"
        )
        if _in_ci():
            pytest.fail(reason + " [CI is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(reason)

    workdir = Path(tempfile.mkdtemp(prefix="evolkit-argilla-test-"))
    srv = LocalArgilla(workdir)
    try:
        srv.start()
    except ArgillaServerError as e:
        pytest.fail(f"local Argilla server did not start: {e}", pytrace=False)
    _state["server"] = srv
    try:
        yield srv
    finally:
        srv.stop()
        if os.environ.get("EVOLKIT_KEEP_ARGILLA_WORKDIR"):
            _state["kept_workdir"] = workdir
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def argilla_client(argilla_server):
    import argilla as rg

    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    yield client


@pytest.fixture(scope="module")
def argilla_env(argilla_server):
    """The server's URL and key in ARGILLA_API_URL / ARGILLA_API_KEY (as a user sets them) for one test module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ARGILLA_API_URL", argilla_server.url)
    mp.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    mp.delenv("ARGILLA_WORKSPACE", raising=False)
    yield argilla_server
    mp.undo()


def pytest_terminal_summary(terminalreporter):
    srv = _state.get("server")
    if srv is not None and srv.startup_seconds is not None:
        terminalreporter.write_line(f"local Argilla server: cold start {srv.startup_seconds:.1f} s")
    if "kept_workdir" in _state:
        terminalreporter.write_line(f"local Argilla workdir kept: {_state['kept_workdir']}")
    if "review_screenshots" in _state:  # set by tests/test_review_browser.py
        terminalreporter.write_line(f"review web UI screenshots: {_state['review_screenshots']}")
