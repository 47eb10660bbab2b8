# Herald: every developer and CI entry point. `make run` and `make test` are the two that matter.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck buf-lint buf-breaking gen check-gen pytest bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/herald up

gen: install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/gen.sh gen

check-gen: install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check-gen.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

buf-lint: install
	$(BIN)/buf lint
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/buf-breaking.sh

pytest: install
	$(BIN)/pytest

test: lint typecheck buf-lint check-gen pytest

bench: install
	$(BIN)/python bench/delivery.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
