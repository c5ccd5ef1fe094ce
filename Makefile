# curator-worker: set up, test, demo. Every target is idempotent.
# `make demo` installs only what running a job needs; `make test` adds the dev set
# (pytest, ruff, the optional backends, benchmarks' tools).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORE   := $(VENV)/.installed-core
DEV    := $(VENV)/.installed

.PHONY: setup test lint demo clean

setup: $(DEV)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(CORE): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $(CORE)

$(DEV): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV) $(CORE)

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

demo: $(CORE)
	$(VENV)/bin/curator-submit examples/demo.yaml --wait

clean:
	rm -rf $(VENV) demo-out .pytest_cache
