# The two commands of the README are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := net2net growth_policy workers service deploy

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test test-fast check-ui lint format demo bench clean

install: $(STAMP)

# torch goes first and alone, so that pip takes the CPU wheel on local disk instead of a CUDA build.
$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/lock.txt -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) deploy/with_redis.py -- $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) deploy/with_redis.py -- $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The MLflow UI in headless Chromium (Debian's chromium package; root installs it, not this file).
check-ui: $(STAMP)
	@command -v chromium >/dev/null || { echo "check-ui needs Chromium: sudo apt-get install chromium"; exit 1; }
	LIFELONG_REQUIRE_BROWSER=1 LIFELONG_UI_SCREENSHOTS=docs/img $(PY) deploy/with_redis.py -- \
		$(PY) -m pytest tests/service/test_mlflow_ui.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(VENV)/bin/lifelong demo

bench: $(STAMP)
	$(PY) -m bench

# The GPU check (bench/gpu.py; tests/gpu, then its table in docs/benchmarks.md), on a machine with
# an NVIDIA GPU. GPU_PYTHON is the Python to run it with: this venv where there is one, else
# python3; it installs a CUDA build of torch and what else it lacks into it first.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
.PHONY: bench-gpu
bench-gpu:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m bench.gpu $(BENCH_GPU_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
