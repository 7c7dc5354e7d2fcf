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

# Python 3.12 (torch's CUDA build from PyPI, run on the CPU): `make test-py312` runs the unit and
# gloo tests, where the interpreter's own behaviour shows (multiprocessing, signals, pickling); .ci/run
# runs it where python3.12 is installed. The whole suite passes there too (make test-py312
# PY312_TESTS=tests).
PYTHON312 ?= python3.12
PY312_VENV := .venv-py312
PY312 := $(PY312_VENV)/bin/python
PY312_STAMP := $(PY312_VENV)/.installed
PY312_TESTS ?= tests/unit tests/distributed

# $(call make-venv,VENV,PYTHON,REQUIREMENTS): the venv (created once), its pins, partialfc
# editable, and the stamp that the rules above depend on.
define make-venv
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade-strategy only-if-needed -r $(3)
	$(1)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(1)/.installed
endef

.PHONY: setup setup-mxnet setup-py312 test test-mxnet test-py312 demo lint bench gpu-check clean

setup: $(STAMP)

$(STAMP): requirements/ci.txt requirements/common.txt pyproject.toml
	$(call make-venv,$(VENV),$(PYTHON),requirements/ci.txt)

setup-mxnet: $(MX_STAMP)

$(MX_STAMP): requirements/mxnet.txt pyproject.toml
	$(call make-venv,$(MX_VENV),$(PYTHON),requirements/mxnet.txt)

setup-py312: $(PY312_STAMP)

$(PY312_STAMP): requirements/py312.txt requirements/common.txt pyproject.toml
	$(call make-venv,$(PY312_VENV),$(PYTHON312),requirements/py312.txt)

test: $(STAMP) $(MX_STAMP)
	$(PY) -m ruff check partialfc tests benchmarks
	$(PY) -m pytest -q tests
	$(MX_PY) -m pytest -q -p no:cacheprovider $(MXNET_TESTS)

test-mxnet: $(MX_STAMP)
	$(MX_PY) -m pytest -q -p no:cacheprovider $(MXNET_TESTS)

test-py312: $(PY312_STAMP)
	$(PY312) -m pytest -q -p no:cacheprovider $(PY312_TESTS)

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
	rm -rf $(VENV) $(MX_VENV) $(PY312_VENV) .pytest_cache .ruff_cache
