# make train: install into .venv (once) and run the default study; make test: install and run the whole suite;
# make test-quick: the suite less its tests marked slow (real runs in processes of their own, signals, sweeps, DDP),
# for the edit loop; make test-kernels: the equivalence tests under ATEN_CPU_CAPABILITY=default (CI runs test and
# test-kernels); make coverage: the suite with line coverage. The tests run in WORKERS processes (pytest-xdist).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# pytest-xdist workers for the suite (each with one torch thread: tests/conftest.py); more on a bigger machine
WORKERS ?= 2

.PHONY: install train test test-quick test-kernels coverage lint
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

train: install
	$(BIN)/python scripts/train.py $(ARGS)

lint: install
	$(BIN)/ruff check src scripts tests

test: lint
	$(BIN)/python -m pytest -n $(WORKERS)

test-quick: lint
	$(BIN)/python -m pytest -n $(WORKERS) -m "not slow" -x -q

# The tests that compare two code paths, again with torch's narrowest CPU kernels: a test that holds only for
# the kernels this CPU picks (avx512, avx2) shows here on any machine.
test-kernels: install
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -n $(WORKERS) tests/test_fast_step.py tests/test_batched.py

# The suite's line coverage (pyproject.toml's [tool.coverage]), the processes its tests start included.
coverage: install
	$(BIN)/python -m pytest -n $(WORKERS) -q --cov --cov-report=term
