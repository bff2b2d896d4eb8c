# make train: install into .venv (once) and run the default study; make test: install and run the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train test lint
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
