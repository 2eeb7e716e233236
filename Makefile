# The front door: `make run` starts a local stack, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test test-fast test-unit test-real-vllm lint bench services browser prometheus wrk real-vllm real-vllm-stop clean

REAL_VLLM_PORT ?= 18000

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,sim]'
	touch $(STAMP)

services:
	bash scripts/ensure-services.sh

# Debian's chromium for the console's browser tests (tests/browser): installed once, when missing.
browser:
	bash scripts/ensure-chromium.sh

# Debian's prometheus (prometheus, promtool) for the monitoring tests: installed once, when missing.
prometheus:
	bash scripts/ensure-prometheus.sh

# Debian's wrk, the load generator of the benchmarks (bench/overhead.py, bench/compare.py).
wrk:
	bash scripts/ensure-wrk.sh

run: $(STAMP) services
	$(BIN)/llm-dispatcher dev

test: $(STAMP) services browser prometheus
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every tier except real vLLM (tests/real_vllm's engine half installs and starts a real vLLM on CPU: minutes).
test-fast: $(STAMP) services browser prometheus
	$(BIN)/python -m pytest -m 'not real_vllm' $(PYTEST_ARGS)

# The unit tier alone (tests/unit: pure logic, no service needed): seconds.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The real vLLM tier alone (installs vLLM for CPU and a small model once, under ~/.cache/llm-dispatcher).
test-real-vllm: $(STAMP) services
	$(BIN)/python -m pytest -m real_vllm $(PYTEST_ARGS)

real-vllm:
	bash scripts/real-vllm.sh ensure
	bash scripts/real-vllm.sh start $(REAL_VLLM_PORT)

real-vllm-stop:
	bash scripts/real-vllm.sh stop $(REAL_VLLM_PORT)

LINT_PATHS := llm_dispatcher sender consumer vllm_sim devstack tests bench scripts

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

bench: $(STAMP) services wrk
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
