# recis-compat: every setup step a fresh machine needs.
#   make demo   -- venv, install, build csrc, generate data, train DeepFM, print AUC + samples/s
#   make test   -- venv, install, build csrc, compile CUDA kernels (no link), run the test suite
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export MAX_JOBS ?= 2
STAMP := $(VENV)/.installed
BUILD_LOCK := /tmp/recis-compat-build.lock

.PHONY: install build test test-fast demo bench cuda-check clean doctor

$(VENV)/bin/python:
	$(PY_SYS) -m venv $(VENV)

$(STAMP): requirements.txt setup.py | $(VENV)/bin/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps torchrec==1.8.0
	flock $(BUILD_LOCK) $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Incremental rebuild of csrc/ (ninja; only changed translation units recompile).
build: $(STAMP)
	flock $(BUILD_LOCK) $(PY) setup.py -q build_ext --inplace

doctor: build
	$(VENV)/bin/recis-compat doctor

cuda-check: $(STAMP)
	bash tools/cuda_check.sh

test: build cuda-check
	$(PY) -m pytest -q tests

test-fast: build
	$(PY) -m pytest -q -x tests -m "not slow"

demo: build
	bash examples/deepfm/demo.sh

bench: build
	$(VENV)/bin/recis-compat bench all --json bench-all.json --plot bench-all.png

clean:
	rm -rf build recis_compat/_C*.so *.egg-info
