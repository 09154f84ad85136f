# fedwon — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel by default; GPU users: make TORCH="torch==2.13.0 --index-url <your CUDA index>" ...
TORCH  ?= torch==2.13.0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup demo test test-all lint bench report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m fedwon.demo

test: setup
	$(BIN)/python -m pytest -q

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

report: setup
	$(BIN)/python -m fedwon.cli report-docs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
