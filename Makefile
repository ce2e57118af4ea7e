# qlara-events — one command to run, one to test. Everything is installed by these targets:
# .venv (Python deps), Kafka's jars (Maven Central, cached in .local/), PostgreSQL (Debian's package if absent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv infra run test test-unit down lint typecheck clean

help:
	@echo "make run     start Kafka + Postgres on loopback and every role on http://127.0.0.1:8080"
	@echo "make test    start the same infrastructure and run the whole test suite"
	@echo "make down    stop the local Kafka and Postgres"
	@echo "make lint    ruff + mypy --strict"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $(STAMP)

venv: $(STAMP)

infra:
	@deploy/local/infra.sh up

run: venv infra
	$(BIN)/qlara-events serve --role all --dev --migrate --dev-key-file .local/dev-api-key

test: venv infra
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

down:
	@deploy/local/infra.sh down

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/mypy

clean: down
	rm -rf .local $(VENV)
