# Two entry points for a fresh machine that has only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A run dir per demo: a harness run never writes into a dir that already holds one.
OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

# The suite in two phases. Everything but the end-to-end tests runs in parallel (`--dist loadgroup`
# selects the scheduler of tests/conftest.py: files with an expensive fixture stay on one worker). The
# end-to-end tests (`-m e2e`: real SuperLinks, SuperNodes, Ray) then run one at a time on a machine
# of their own: beside CPU-bound workers on 2 cores, their heartbeats and SecAgg+ stage timeouts
# expire (seen twice on a quiet machine: a SuperLink answering 500, nodes missing a stage).
WORKERS ?= 4
PARALLEL := -n $(WORKERS) --dist loadgroup --no-loadscope-reorder

# The CPU build of torch, installed first so that pip never picks a multi-GB CUDA one.
TORCH := torch==2.13.0
# The device install (`pip install fedrec`, no harness): the deployment test runs its devices from it.
DEVICE_VENV ?= .venv-device

PACKAGES := common client server simulations
LINTED := $(PACKAGES) bench tests

.PHONY: setup device demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[harness,dev]"
	touch $@

device: $(DEVICE_VENV)/.installed

$(DEVICE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/pip install --quiet --upgrade pip
	$(DEVICE_VENV)/bin/pip install --quiet "$(TORCH)"
	$(DEVICE_VENV)/bin/pip install --quiet -e .
	touch $@

demo: setup
	$(BIN)/fedrec data fetch ml-100k
	$(BIN)/fedrec simulate --out $(OUT)

test: export FEDREC_DEVICE_PYTHON = $(abspath $(DEVICE_VENV))/bin/python
test: setup device lint
	$(BIN)/fedrec data fetch ml-100k
	$(BIN)/python -m pytest -m "not e2e" $(PARALLEL) --durations=15
	$(BIN)/python -m pytest -m e2e --durations=15

# ruff (lint + format) everywhere; mypy on every package (settings in pyproject.toml), reached through a
# symlinked fedrec/ namespace because the folders install under names they do not have on disk.
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	mkdir -p .lint/fedrec && for p in $(PACKAGES); do ln -sfn ../../$$p .lint/fedrec/$$p; done
	MYPYPATH=.lint $(BIN)/mypy $(foreach p,$(PACKAGES),-p fedrec.$(p))

# Speed and memory targets live here, not in tests; each prints its ratios measured side by side.
bench: setup
	$(BIN)/fedrec data fetch ml-100k
	$(BIN)/python -m bench.bench_centralized
	$(BIN)/python -m bench.bench_store
	$(BIN)/python -m bench.bench_retention
	$(BIN)/python -m bench.bench_round
	$(BIN)/python -m bench.bench_demo

clean:
	rm -rf $(VENV) $(DEVICE_VENV) runs .pytest_cache .lint .mypy_cache
