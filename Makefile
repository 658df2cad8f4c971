# moelab workspace. `make run` is the main job, `make test` the test suite; both create
# the virtual environment (.venv) on demand through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch's version comes from pyproject.toml (the one list of pins)
TORCH_VERSION := $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
# CPU build by default; a CUDA build with e.g. `make setup TORCH_VARIANT=cu128`
# (any variant the PyTorch wheel index serves for this torch version).
TORCH_VARIANT ?= cpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/$(TORCH_VARIANT)
KERNEL := moelab
RUN ?= default
PARAMS ?=
# papermill with the moelab kernel, paths relative to notebooks/, an optional YAML parameter file
PAPERMILL = $(BIN)/papermill --cwd notebooks -k $(KERNEL) $(if $(PARAMS),-f $(PARAMS))
STAMP := $(VENV)/.setup-done-$(TORCH_VARIANT)

.PHONY: setup run test lab bench help

help:
	@echo "make run    the main job: the notebooks into reports/RUN/ (RUN=name, PARAMS=file.yaml)"
	@echo "make test   the whole test suite (sets up .venv first)"
	@echo "make lab    JupyterLab on notebooks/ with the '$(KERNEL)' kernel"
	@echo "make bench  the performance benchmark into reports/benchmarks/ (BENCH_ARGS=...)"
	@echo "make setup  only create/update .venv and the kernel (TORCH_VARIANT=$(TORCH_VARIANT))"

setup: $(STAMP)

# Re-runs only when the pins or this file change; pip itself skips what is installed.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch $(TORCH_VERSION)+$(TORCH_VARIANT) into $(VENV)"
	@# a wheel pip can already find (local wheelhouse or cache) first, else the PyTorch index
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)+$(TORCH_VARIANT)" 2>/dev/null \
	  || $(BIN)/pip install -q --extra-index-url $(TORCH_INDEX_URL) "torch==$(TORCH_VERSION)+$(TORCH_VARIANT)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (moelab)" >/dev/null
	@rm -f $(VENV)/.setup-done-*
	@touch $@
	@echo "environment ready: $(VENV) (kernel '$(KERNEL)')"

# The notebook pipeline, executed into reports/$(RUN)/.
# 01 rewrites nothing when its inputs are unchanged; 02 trains run $(RUN) afresh.
run: setup
	@mkdir -p reports/$(RUN)
	$(PAPERMILL) notebooks/01_data_prep.ipynb reports/$(RUN)/01_data_prep.ipynb
	@echo "02_train: training run '$(RUN)' from scratch (an earlier run of that name is replaced)"
	$(PAPERMILL) notebooks/02_train.ipynb reports/$(RUN)/02_train.ipynb -p run_name $(RUN) -p if_exists overwrite
	$(PAPERMILL) notebooks/03_expert_utilization.ipynb reports/$(RUN)/03_expert_utilization.ipynb -p run_name $(RUN)
	$(PAPERMILL) notebooks/04_sampling.ipynb reports/$(RUN)/04_sampling.ipynb -p run_name $(RUN)
	$(BIN)/python -m moelab.report reports/$(RUN)

test: setup
	$(BIN)/python -m pytest

# Side-by-side timings (see lib/moelab/bench.py); e.g. BENCH_ARGS="--configs A --repeats 3".
bench: setup
	$(BIN)/python -m moelab.bench $(BENCH_ARGS)

lab: setup
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --notebook-dir=notebooks
