# fedwon — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel by default; GPU users: make TORCH="torch==2.13.0 --index-url <your CUDA index>" ...
TORCH  ?= torch==2.13.0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup demo test test-slow test-all lint bench gpu-check report report-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev,track,hf]"  # track, hf: their tests read each tool back
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m fedwon.demo

test: setup
	$(BIN)/python -m pytest -q

# End-to-end runs too long for `make test` (learning curves, the quick study, TLS, deployment
# failure modes); CI runs them after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check fedwon tests benchmarks
	$(BIN)/ruff format --check fedwon tests benchmarks
	$(BIN)/mypy

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -e ".[bench]"
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.run

# Cross-silo on CUDA: one Ray actor per GPU and two per GPU, results against the CPU's, rounds/s
# against one GPU sequential -> runs/gpu-check/gpu-check.md (docs/scaling.md, "GPU check").
# A few minutes on one GPU; without a CUDA GPU it prints one line saying it was skipped.
# Needs a CUDA build of torch: make TORCH="torch==2.13.0 --index-url <your CUDA index>" gpu-check
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check --out runs/gpu-check

# The FedWon paper's comparisons -> docs/results.md, docs/results.json, docs/img/ (hours of CPU;
# `fedwon study --estimate --jobs 2` says how many). Each finished run's record lands in
# docs/study/ (commit it): a run whose record answers is not trained again, so on a fresh clone
# this rebuilds the report without training; checkpoints stay in runs/study/, where halving
# resumes runs from rung to rung. JOBS=N trains N runs at once (each on one thread: the results
# do not depend on N).
JOBS ?= 1
report: setup
	$(BIN)/python -m fedwon.cli study --jobs $(JOBS)

# The same pipeline with a tiny model, data and rounds (a few minutes) -> runs/study-quick/report/
report-quick: setup
	$(BIN)/python -m fedwon.cli study --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
