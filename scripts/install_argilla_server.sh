#!/usr/bin/env bash
# Install the local Argilla 2.8 server stack used by `python -m evolkit.review.server` and the test fixture
# `argilla_server` (tests/plugins/argilla_server.py).
#
#   * argilla-server==2.8.0 + osmem-server (in-memory OpenSearch-compatible engine) in their OWN venv, because
#     argilla-server pins old fastapi/pydantic/typer (and typer<0.10 needs click<8.2) that clash with the project venv.
#     Default location: <repo>/.cache/argilla-venv (git-ignored); override with EVOLKIT_ARGILLA_VENV.
#   * redis-server from Debian (apt) when it is not already on PATH.
#
# Idempotent: a second run only checks and exits. pip's wheel cache is reused (no --no-cache-dir).
# Usage: bash scripts/install_argilla_server.sh [--force]   (--force rebuilds the venv)
set -euo pipefail

ARGILLA_SERVER_VERSION="2.8.0"
OSMEM_SERVER_VERSION="0.1.6"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EVOLKIT_ARGILLA_VENV:-$REPO_DIR/.cache/argilla-venv}"
PYTHON="${PYTHON:-python3}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { echo "[install_argilla_server] $*" >&2; }

# --- redis-server ---------------------------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    log "redis-server not on PATH: installing Debian's redis-server"
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else log "need root (or sudo) for apt-get"; exit 1; fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # The Debian package may start a system-wide redis on 6379; the launcher never uses it (it starts its own
    # redis on a free port), so it is left alone.
else
    log "redis-server found: $(command -v redis-server)"
fi

# --- server venv ----------------------------------------------------------------------------------------------------
venv_ok() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$ARGILLA_SERVER_VERSION" "$OSMEM_SERVER_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("argilla-server") == sys.argv[1], version("argilla-server")
assert version("osmem-server") == sys.argv[2], version("osmem-server")
import click
assert tuple(int(x) for x in click.__version__.split(".")[:2]) < (8, 2), click.__version__
import argilla_server.cli, osmem_server  # noqa: F401
osmem_server.resolve_binary()
EOF
}

if [[ $FORCE == 0 ]] && venv_ok; then
    log "argilla-server $ARGILLA_SERVER_VERSION already installed in $VENV (nothing to do)"
    exit 0
fi

if [[ $FORCE == 1 && -d "$VENV" ]]; then
    log "--force: removing $VENV"
    rm -rf "$VENV"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV with $($PYTHON --version 2>&1)"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi

log "installing argilla-server==$ARGILLA_SERVER_VERSION, osmem-server==$OSMEM_SERVER_VERSION into $VENV"
"$VENV/bin/python" -m pip install -q \
    "argilla-server==$ARGILLA_SERVER_VERSION" \
    "osmem-server==$OSMEM_SERVER_VERSION" \
    "click<8.2"

if ! venv_ok; then
    log "installation finished but the check failed; rerun with --force"
    exit 1
fi
log "done: $VENV"
