# Herald: every developer and CI entry point. `make run` and `make test` are the two that matter.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# web/: the browser client and the demo inbox page (Node 20.19+ and npm).
WEB_STAMP := web/node_modules/.installed

.PHONY: install run test lint typecheck buf-lint buf-breaking gen check-gen pytest bench clean \
	web-install browser web-test web-dev

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# npm ci: exactly web/package-lock.json; after it the web build and tests run offline.
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

web-install: $(WEB_STAMP)

# Debian's chromium for tests/test_browser.py (apt-get as root; see the script).
browser:
	scripts/install-browser.sh

run: install
	$(BIN)/herald up

gen: install web-install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/gen.sh gen
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/gen-web.sh

check-gen: install web-install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check-gen.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

buf-lint: install
	$(BIN)/buf lint
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/buf-breaking.sh

# Two workers (pytest-xdist): the suite waits on sockets, servers and subprocesses more than it
# computes, so two halve its time on two cores. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

pytest: install web-install browser
	$(BIN)/pytest -n $(PYTEST_WORKERS)

# The web client's type check and unit tests (vitest).
web-test: web-install
	cd web && npm run --silent typecheck && npm test --silent

# The demo inbox page against `herald up` behind Envoy, in one command (scripts/web-dev.sh).
web-dev: install web-install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/web-dev.sh

test: lint typecheck buf-lint check-gen web-test pytest

bench: install
	$(BIN)/python bench/delivery.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
