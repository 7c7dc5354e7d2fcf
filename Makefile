# Every target sets up .venv first (idempotent: redone only when the pins change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MXNet 1.9 needs numpy < 1.24; the main venv has numpy 2. Its interop tests run in a venv of
# their own (requirements/mxnet.txt), where they compare against the real MXNet; in the main venv
# they skip.
MX_VENV := .venv-mxnet
MX_PY := $(MX_VENV)/bin/python
MX_STAMP := $(MX_VENV)/.installed
MXNET_TESTS := tests/integration/test_mxnet_interop.py tests/unit/legacy/test_convert.py \
	tests/unit/legacy/test_names.py tests/unit/legacy/test_symbol_parity.py \
	tests/unit/legacy/test_train.py tests/distributed/test_legacy_centres.py

.PHONY: setup setup-mxnet test test-mxnet demo lint bench gpu-check clean

setup: $(STAMP)

$(STAMP): requirements/ci.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -r requirements/ci.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup-mxnet: $(MX_STAMP)

$(MX_STAMP): requirements/mxnet.txt pyproject.toml
	test -x $(MX_PY) || $(PYTHON) -m venv $(MX_VENV)
	$(MX_PY) -m pip install --quiet --upgrade-strategy only-if-needed -r requirements/mxnet.txt
	$(MX_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(MX_STAMP)

test: $(STAMP) $(MX_STAMP)
	$(PY) -m ruff check partialfc tests benchmarks
	$(PY) -m pytest -q tests
	$(MX_PY) -m pytest -q -p no:cacheprovider $(MXNET_TESTS)

test-mxnet: $(MX_STAMP)
	$(MX_PY) -m pytest -q -p no:cacheprovider $(MXNET_TESTS)

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
	rm -rf $(VENV) $(MX_VENV) .pytest_cache .ruff_cache
