# moelab workspace. `make run` is the main job, `make test` the test suite; both create
# the virtual environment (.venv) on demand through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch's version comes from pyproject.toml (the one list of pins)
TORCH_VERSION := $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
# CPU build by default; a CUDA build with e.g. `make setup TORCH_VARIANT=cu128`
# (any variant the PyTorch wheel index serves for this torch version). The environment
# remembers the variant it was set up with, so a later plain `make run` or `make test` keeps it.
TORCH_VARIANT ?= $(or $(shell cat $(VENV)/.torch-variant 2>/dev/null),cpu)
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/$(TORCH_VARIANT)
KERNEL := moelab
RUN ?=
PROFILE ?=
PARAMS ?=
STAGES ?=
STAMP := $(VENV)/.setup-done-$(TORCH_VARIANT)

.PHONY: setup run test lab bench tensorboard notebook-outputs help

help:
	@echo "make run    the main job: the notebooks into reports/RUN/ (RUN=name, PROFILE=tiny, PARAMS=file.yaml, STAGES=\"01 02\", FORCE=1)"
	@echo "make test   the whole test suite (sets up .venv first)"
	@echo "make lab    JupyterLab on notebooks/ with the '$(KERNEL)' kernel"
	@echo "make bench  the performance benchmark into reports/benchmarks/ (BENCH_ARGS=...)"
	@echo "make setup  only create/update .venv and the kernel (TORCH_VARIANT=$(TORCH_VARIANT))"

setup: $(STAMP)

# Re-runs only when the pins or this file change; pip itself skips what is installed.
$(STAMP): pyproject.toml requirements/statsforecast.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch $(TORCH_VERSION)+$(TORCH_VARIANT) into $(VENV)"
	@# a wheel pip can already find (local wheelhouse or cache) first, else the PyTorch index
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)+$(TORCH_VARIANT)" 2>/dev/null \
	  || $(BIN)/pip install -q --extra-index-url $(TORCH_INDEX_URL) "torch==$(TORCH_VERSION)+$(TORCH_VARIANT)"
	$(BIN)/pip install -q -e ".[test]"
	@# statsforecast pins pandas<3 for a front end moelab does not use: its models install without their dependencies
	$(BIN)/pip install -q --no-deps -r requirements/statsforecast.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (moelab)" >/dev/null
	@rm -f $(VENV)/.setup-done-*
	@echo $(TORCH_VARIANT) > $(VENV)/.torch-variant
	@touch $@
	@echo "environment ready: $(VENV) (kernel '$(KERNEL)')"

# The notebook pipeline, executed into reports/$(RUN)/ (default: the profile's run name, default or tiny),
# then the run's report (lib/moelab/views/pipeline.py). STAGES="01 02 03 04" runs only those. Stages whose inputs are unchanged are skipped; an
# interrupted training resumes from its last checkpoint; FORCE=1 re-runs everything from scratch.
run: setup
	$(BIN)/python -m moelab.views.pipeline $(RUN) $(if $(PROFILE),--profile $(PROFILE)) $(if $(PARAMS),-f $(PARAMS)) $(if $(FORCE),--force) $(if $(STAGES),--stages "$(STAGES)")

test: setup
	$(BIN)/python -m pytest

# Side-by-side timings (see lib/moelab/bench/); e.g. BENCH_ARGS="--configs A --repeats 3".
bench: setup
	$(BIN)/python -m moelab.bench $(BENCH_ARGS)

# Re-run the notebooks in the tiny profile and keep the outputs nbval compares (tools/checked_outputs.py);
# NOTEBOOKS="00_moe_by_hand" rewrites only those.
notebook-outputs: setup
	$(BIN)/python tools/checked_outputs.py $(NOTEBOOKS)

# Every run's curves side by side (the Trainer writes reports/<run>/tensorboard/).
tensorboard: setup
	$(BIN)/tensorboard --logdir $${MOELAB_REPORTS_DIR:-reports} --host 127.0.0.1

lab: setup
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --notebook-dir=notebooks
