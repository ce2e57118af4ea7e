# qlara-events — one command to run, one to test. Everything is installed by these targets:
# .venv (Python deps), Kafka's jars (Maven Central, cached in .local/), PostgreSQL (Debian's package if absent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv infra run test test-unit down lint typecheck clean tooling

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
	$(BIN)/qlara-events serve --role all --processes --dev --migrate --dev-key-file .local/dev-api-key $(if $(SANDBOX),--sandbox,)

# Validators of the packaging files (tests/packaging), kept apart from the project's .venv in .local/tools:
# kubernetes-validate (ships the official Kubernetes schemas, works offline), check-jsonschema (ships the
# compose-spec schema), dockerfile (Docker's own Dockerfile parser), setuptools to build the image's wheel
# offline, and promtool, extracted from Debian's `prometheus` package (no daemon installed or started).
TOOLS := .local/tools
TOOLS_STAMP := $(TOOLS)/.installed-2

$(TOOLS_STAMP):
	rm -rf $(TOOLS)/venv
	$(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install -q --upgrade pip
	$(TOOLS)/venv/bin/pip install -q kubernetes-validate==1.37.0 check-jsonschema==0.39.0 dockerfile==3.4.0 \
	  'setuptools>=77' wheel
	@touch $@

$(TOOLS)/bin/promtool:
	@mkdir -p $(TOOLS)/bin $(TOOLS)/deb
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; else \
	  cd $(TOOLS)/deb && rm -f prometheus_*.deb && \
	  { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; } && \
	  dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool ../bin/promtool && rm -rf root prometheus_*.deb; \
	fi
	@$@ --version | head -1

tooling: $(TOOLS_STAMP) $(TOOLS)/bin/promtool

test: venv infra tooling
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

down:
	@deploy/local/infra.sh down

lint: venv
	$(BIN)/ruff check src tests benchmarks chaos
	$(BIN)/mypy

clean: down
	rm -rf .local $(VENV)

# Benchmarks (benchmarks/README.md): never part of `make test`. bench-tools builds vegeta from the Go module
# proxy into .local/bin and installs py-spy into .venv.
.PHONY: bench bench-quick bench-tools
bench-tools: venv
	@benchmarks/install-tools.sh

bench: venv infra bench-tools
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: venv infra bench-tools
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# Failure tests (docs/reliability.md): a local three-broker KRaft cluster (deploy/local/cluster.sh), the roles as
# separate processes, five faults under load, exact accounting; regenerates the table in docs/reliability.md.
# Restarts the shared PostgreSQL once for a few seconds. The short version runs in `make test`.
.PHONY: chaos
chaos: venv
	@deploy/local/postgres.sh start
	$(BIN)/python -m chaos.run
