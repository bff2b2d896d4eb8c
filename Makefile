# make train: install into .venv (once) and run the default study; make test: install and run the whole suite;
# make test-quick: the suite less its tests marked slow (real runs in processes of their own, signals, sweeps, DDP),
# for the edit loop; make test-kernels: the equivalence tests under ATEN_CPU_CAPABILITY=default (CI runs test and
# test-kernels).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train test test-quick test-kernels lint
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
	$(BIN)/python -m pytest

test-quick: lint
	$(BIN)/python -m pytest -m "not slow" -x -q

# The tests that compare two code paths, again with torch's narrowest CPU kernels: a test that holds only for
# the kernels this CPU picks (avx512, avx2) shows here on any machine.
test-kernels: install
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest tests/test_fast_step.py tests/test_batched.py
