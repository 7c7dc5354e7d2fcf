# Every target sets up .venv first (idempotent: redone only when the pins change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench gpu-check clean

setup: $(STAMP)

$(STAMP): requirements/ci.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -r requirements/ci.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check partialfc tests benchmarks
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m partialfc demo

lint: $(STAMP)
	$(PY) -m ruff check partialfc tests benchmarks
	$(PY) -m ruff format --check partialfc tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/head.py

# On a GPU host, with the torch (and Triton, DALI) installed there: not .venv, whose torch is the
# CPU build. Writes benchmarks/results/gpu-<date>.{json,md}; without CUDA it says so and exits 0.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
