# The two commands that matter: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Four processes on two cores, one test file each at a time (--dist loadfile keeps a module, and
# so the one process that may own a chdb store, together): the integration tests mostly wait on
# Kafka, so more processes overlap waits (measured: 225 s with two, 168 s with three; with the
# 2,985 tests of 2026-12-06, 724 s with three and 626 s with four; with 3,435 tests, 678 s with
# four and 718 s with five). tests/conftest.py keeps the files of one group of
# tests/support/xdist_groups.py (the broker-fault tests) in one process, one after the other.
PYTEST_PARALLEL := -n 4 --dist loadfile

# `make up CLUSTER=3` (and demo, status, down with the same CLUSTER=3): a three-broker KRaft
# cluster instead of the single broker (ADR 0065, docs/kafka-cluster.md); every command of one
# session must say the same, since the single broker and the cluster never run together.
CLUSTER ?=
ifneq ($(strip $(CLUSTER)),)
export REFLUX_KAFKA_BROKERS := $(CLUSTER)
endif

# web: the console (web/, issue 16).
.PHONY: web test-web console-screenshots image test-image help venv up down status connect lint typecheck test test-unit test-integration demo demo-improve bench bench-quick bench-cluster bench-loop clean codegen

help:
	@echo "make demo    - install, start the local services, run the demo"
	@echo "make demo-improve - the learning loop fixing a degraded dependency (reflux demo improve)"
	@echo "make test    - install, start the services, lint, run every test"
	@echo "make image   - build the container image reflux:local (= reflux/reflux:latest), no registry"
	@echo "make test-image - build the image and test it (CLI, non-root, a worker on the local Kafka)"
	@echo "make up      - start Kafka, PostgreSQL, Redis, S3 (s3proxy), Docker (+ sandbox image), Kafka Connect; check ClickHouse"
	@echo "make up CLUSTER=3 - the same with a three-broker Kafka cluster (also demo, status, down CLUSTER=3)"
	@echo "make connect - start (only) Kafka and the Kafka Connect worker (docs/connect.md)"
	@echo "make down    - stop every service started by make up"
	@echo "make status  - what runs where"
	@echo "make bench   - run the benchmarks (and the peers) into benchmarks/out/results.json; BENCH_ARGS=--skip-peers skips the peers"
	@echo "make bench-cluster - scale-out curve (1/2/4 processes, 3 brokers vs 1) + trace ingestion"
	@echo "make bench-loop - the learning-loop scenarios into benchmarks/out/loop.json"
	@echo "make lint    - ruff, mypy and import-linter"

# The venv is rebuilt when the lock (constraints.txt) or pyproject.toml changes.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

up: venv
	$(PY) -m infra.stack up

# Kafka Connect alone (with the broker it needs): REST API at REFLUX_CONNECT_URL (docs/connect.md).
connect: venv
	$(PY) -m infra.stack up kafka connect

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.stack down; else echo "nothing to stop (no venv)"; fi

status: venv
	@$(PY) -m infra.stack status

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(PY) -m schemas.codegen --check

codegen: venv
	$(PY) -m schemas.codegen

test-unit: venv
	$(VENV)/bin/pytest tests/unit -q

test-integration: up
	$(VENV)/bin/pytest tests/integration -q $(PYTEST_PARALLEL)

# The web console (web/, docs/console.md): installed from the lock file with `npm ci`, built
# (type check, then Vite) into web/dist, which the API serves under /ui. Rebuilt when a source
# or the lock changes.
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json web/package.json
web/node_modules/.installed: web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web/dist/index.html: web/node_modules/.installed $(WEB_SOURCES)
	cd web && npm run --silent build

web: web/dist/index.html

# The console's unit tests (web/test/, Vitest, type-checked first): its pure modules, such as
# the live run model folding every golden run log of tests/fixtures/runs as the engine does.
test-web: web/node_modules/.installed
	cd web && npm test --silent

# The console's browser tests with their screenshots written to docs/console/ (shown in the
# README) instead of var/console-screenshots/.
console-screenshots: up web
	REFLUX_CONSOLE_SCREENSHOTS=docs/console $(VENV)/bin/pytest tests/integration/test_console_*.py -q $(PYTEST_PARALLEL)

# The services start (and Jaeger's Go build begins, ADR 0062) while lint and the console build
# run beside them: on a fresh machine `up` mostly waits on downloads (Maven, debootstrap), lint on
# the CPU and `npm ci` on the registry. Output is kept whole per line.
test:
	$(MAKE) --no-print-directory -j3 -Oline up lint web test-web
	$(VENV)/bin/pytest tests -q $(PYTEST_PARALLEL) --durations=10 --junitxml=var/junit.xml

# The container image (infra/image/, docs/image.md): built on the project's own dockerd.
image: up web
	$(PY) -m infra.image.build

# Slow (a build is 3 to 4.5 minutes here), so outside `make test` (marker `image`).
test-image: up web
	$(VENV)/bin/pytest tests/integration/test_image.py -q -m image

demo: up web
	$(VENV)/bin/reflux demo

demo-improve: up
	$(VENV)/bin/reflux demo improve

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	@touch $@

# BENCH_ARGS: e.g. --cluster (also the scale-out curve), --only traces,scaling (merged into the
# existing results); python -m benchmarks.run --help.
bench: up $(VENV)/.bench-installed
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# The scale-out measurements alone (issue 15): 1, 2, 4 processes of each kind on a private
# three-broker cluster and on the local broker, plus trace ingestion; merged into results.json.
bench-cluster: up $(VENV)/.bench-installed
	$(PY) -m benchmarks.run --only scaling,traces
	$(PY) -m benchmarks.scaling_model

bench-quick: up $(VENV)/.bench-installed
	$(PY) -m benchmarks.run --quick

bench-loop: up $(VENV)/.bench-installed
	$(PY) -m benchmarks.loop_bench

clean: down
	rm -rf var $(VENV)
