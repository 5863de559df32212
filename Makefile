# The two commands: `make dev` (the local cloud) and `make test` (lint, types, every test tier).
# Both set themselves up on a fresh machine: the virtualenv and its packages are (re)installed
# whenever the requirements change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: dev test lint typecheck unit integration e2e bench down check clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

dev: $(STAMP)
	$(PY) -m emulators up

test: lint typecheck
	$(PY) -m pytest -q tests/unit tests/integration tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy shared infra functions emulators bench

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

bench: $(STAMP)
	$(PY) -m bench.cold_start --runs 10 --markdown
	$(PY) -m bench.stack_start --runs 5
	$(PY) -m bench.identity
	$(PY) -m bench.ratelimit
	$(PY) -m bench.chat_turn
	$(PY) -m bench.uploads
	$(PY) -m bench.rewards_claims
	$(PY) -m bench.telemetry_ingest
	$(PY) -m bench.telemetry_query --spans 1000000
	$(PY) -m bench.rollup
	$(PY) -m bench.error_fanout

check: $(STAMP)
	$(PY) -m emulators check

down: $(STAMP)
	$(PY) -m emulators down

clean:
	rm -rf $(VENV) .local .mypy_cache .ruff_cache
