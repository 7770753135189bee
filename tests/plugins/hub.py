"""Pytest plugin: a local Hugging Face Hub test server for the whole session.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET``, ``HF_HOME``... when
they are imported, so this plugin picks a free port and sets those variables as soon as it is imported
(``tests/conftest.py`` lists it in ``pytest_plugins``, before any test module is imported). The server
itself starts lazily, once, in the session fixture ``hub_server``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hubserver import HubServer

WRITE_TOKEN, WRITE_USER = "tok-write", "alice"
OTHER_TOKEN, OTHER_USER = "tok-other", "bob"
ORG = "evolkit-org"  # alice is a member, bob is not

_ENV: dict[str, str] = {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_environment() -> dict[str, str]:
    """Point the HF clients at the (future) local server. Idempotent; returns the values set."""
    if _ENV:
        return _ENV
    base = Path(tempfile.mkdtemp(prefix="evolkit-hub-"))
    port = _free_port()
    _ENV.update(
        EVOLKIT_TEST_HUB_DIR=str(base),
        EVOLKIT_TEST_HUB_PORT=str(port),
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(base / "hf_home"),
        HF_HUB_CACHE=str(base / "hf_home" / "hub"),
        HF_DATASETS_CACHE=str(base / "datasets_cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    for name in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HF_XET_CACHE",
        "HUGGINGFACE_CO_STAGING",
    ):
        os.environ.pop(name, None)
    os.environ.update(_ENV)
    return _ENV


_prepare_environment()


def pytest_configure(config: pytest.Config) -> None:
    _prepare_environment()
    stale = [m for m in ("huggingface_hub", "datasets") if m in sys.modules]
    if stale:
        from huggingface_hub import constants

        if constants.ENDPOINT != _ENV["HF_ENDPOINT"]:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"{stale} imported before tests.plugins.hub set HF_ENDPOINT: the hub_server fixture will fail."
                ),
                stacklevel=2,
            )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ENV:
        shutil.rmtree(_ENV["EVOLKIT_TEST_HUB_DIR"], ignore_errors=True)


@dataclass
class HubFixture:
    """What ``hub_server`` yields."""

    server: HubServer
    url: str
    token: str = WRITE_TOKEN
    user: str = WRITE_USER
    other_token: str = OTHER_TOKEN
    other_user: str = OTHER_USER
    org: str = ORG
    cache_dir: Path = field(default_factory=lambda: Path(_ENV["HF_HOME"]))

    def api(self, token: str | bool | None = None):
        """An ``HfApi`` on the test hub, with the write token unless another one (or False) is given."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=self.token if token is None else token)

    def new_repo_id(self, prefix: str = "repo", namespace: str | None = None) -> str:
        """A fresh, not yet created repo id (default namespace: the write user)."""
        return f"{namespace or self.user}/{prefix}-{uuid.uuid4().hex[:8]}"

    def create_dataset_repo(self, prefix: str = "ds", private: bool = False) -> str:
        repo_id = self.new_repo_id(prefix)
        self.api().create_repo(repo_id, repo_type="dataset", private=private)
        return repo_id

    def fail_next(self, status: int, **kwargs) -> None:
        """See ``HubServer.fail_next`` (count, path_contains, method, message, error_code)."""
        self.server.fail_next(status, **kwargs)

    def head(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> str:
        return self.server.head(repo_id, repo_type, branch)


@pytest.fixture(scope="session")
def hub_server():
    env = _prepare_environment()
    from huggingface_hub import constants

    if constants.ENDPOINT != env["HF_ENDPOINT"] or not constants.HF_HUB_DISABLE_XET:
        pytest.fail(
            "huggingface_hub was imported before tests.plugins.hub set HF_ENDPOINT/HF_HUB_DISABLE_XET "
            f"(ENDPOINT={constants.ENDPOINT!r}); import it inside tests, not at conftest/plugin import time."
        )
    server = HubServer(
        Path(env["EVOLKIT_TEST_HUB_DIR"]) / "server",
        tokens={WRITE_TOKEN: WRITE_USER, OTHER_TOKEN: OTHER_USER},
        orgs={ORG: [WRITE_USER]},
        port=int(env["EVOLKIT_TEST_HUB_PORT"]),
    ).start()
    try:
        yield HubFixture(server=server, url=server.url)
    finally:
        server.stop()
