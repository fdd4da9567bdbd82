# The two commands: `make run` and `make test`. Everything else is a step they use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
UV := $(VENV)/bin/uv
# The uv that bootstraps the venv is the one pyproject.toml pins (and uv.lock keeps in the venv).
UV_VERSION := $(shell sed -n 's/^ *"uv==\([^"]*\)".*/\1/p' pyproject.toml)

# Local settings live in the git-ignored .env, which every process of the project reads (config.env.load_env_file),
# so manage.py, celery and the tests work without `make` too; exported variables win over it.
ENV_FILE ?= .env
export INGEST_ENV_FILE := $(abspath $(ENV_FILE))
# Before .env existed the generated secret lived in .data/secret_key: reused so existing sessions stay valid.
OLD_SECRET_FILE := .data/secret_key
export DJANGO_SETTINGS_MODULE := config.settings
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)


.PHONY: bench-fast-paths bench-receipts test-tools help install lock audit services-up services-down services-status migrate topics setup run run-nodes nodes-down nodes-status test test-fast test-faults lint format proto bench profile clean

help:
	@echo "make run              install, start services, migrate, seed, print demo credentials, serve :8083"
	@echo "make test             lint + the whole test suite against real PostgreSQL, Redis and Kafka (fast paths on, then off)"
	@echo "make services-up|services-down|services-status"
	@echo "make run-nodes        the same, as two nodes (web + worker each) behind haproxy on :8090 (nodes-down, nodes-status)"
	@echo "make lint | audit | lock | format | proto | bench | bench-fast-paths | bench-receipts | profile | test-faults"

# Exactly the set in uv.lock (every transitive dependency, with hashes); --locked fails when pyproject.toml
# changed without `make lock`, and sync removes whatever the lock does not list.
$(STAMP): pyproject.toml uv.lock
	@[ -x $(PY) ] || $(PYTHON_BOOT) -m venv $(VENV)
	@[ -x $(UV) ] || $(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) sync -q --locked --extra dev --python $(PY)
	@touch $@

install: $(STAMP) $(ENV_FILE)

# Written once, never overwritten: edit it to change a local setting (docs/configuration.md).
$(ENV_FILE):
	@umask 077 && { \
	  echo "# Local settings for this checkout, read by every process; exported variables win. Never commit it."; \
	  echo "# Every variable: docs/configuration.md"; \
	  printf 'SECRET_KEY=%s\n' "$$(cat $(OLD_SECRET_FILE) 2>/dev/null || $(PYTHON_BOOT) -c 'import secrets; print(secrets.token_urlsafe(50))')"; \
	} > $@.tmp && mv $@.tmp $@
	@echo "wrote $@ (a generated SECRET_KEY; add local settings there)"

# After changing a pin in pyproject.toml; `make lock LOCK_ARGS="--upgrade-package NAME"` moves a transitive one.
lock:
	@[ -x $(UV) ] || $(MAKE) install
	$(UV) lock $(LOCK_ARGS)

# Known vulnerabilities (pip-audit, PyPI's advisory data) in every locked package, dev tools included; the
# project itself is not on PyPI. Needs the network; AUDIT_REQUIRED=true fails when the service is unreachable.
audit: $(STAMP)
	@mkdir -p .cache
	$(UV) export -q --locked --extra dev --no-emit-project --format requirements-txt -o .cache/audit-requirements.txt
	$(PY) scripts/audit.py .cache/audit-requirements.txt

services-up: $(STAMP)
	@bash scripts/services.sh up

services-down:
	@bash scripts/services.sh down

services-status:
	@bash scripts/services.sh status

migrate: services-up $(ENV_FILE)
	$(PY) manage.py migrate --noinput -v 0

topics: services-up $(ENV_FILE)
	$(PY) manage.py ensure_topics

setup: migrate topics
	$(PY) manage.py collectstatic --noinput -v 0

run: setup
	$(PY) manage.py bootstrap_demo
	$(PY) manage.py reset_metrics
	@echo "Serving http://127.0.0.1:8083 (admin: /admin/, API docs: /api/docs/). Ctrl-C stops web and worker."
	@# honcho would read .env itself and let it override the environment; the processes read it themselves.
	$(VENV)/bin/honcho start -f Procfile --env /dev/null

# Two app nodes behind haproxy (docs/operations.md#two-nodes): :8090, nodes on :8091 and :8092, until Ctrl-C.
run-nodes: setup
	$(PY) manage.py bootstrap_demo
	@bash scripts/nodes.sh run

nodes-down:
	@bash scripts/nodes.sh down

nodes-status:
	@bash scripts/nodes.sh status

lint: $(STAMP) $(ENV_FILE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-tools:
	@bash scripts/ensure_test_tools.sh

# The whole suite twice: with the fast paths (fastpaths/) and with INGEST_FAST_PATHS=none, so every public path
# they replace is tested too (a fast path's own tests skip themselves in the second run). The multinode tests
# (their own Kafka cluster, Sentinel group, second node) run in the first pass only: they test the topology, and
# where a fast path matters to them they are parametrized over it.
test: lint audit test-tools services-up topics
	$(PY) -m pytest $(PYTEST_ARGS)
	INGEST_FAST_PATHS=none $(PY) -m pytest -m "not multinode" $(PYTEST_ARGS)

test-fast: services-up $(ENV_FILE)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-faults: services-up topics $(ENV_FILE)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

proto: $(STAMP)
	bash scripts/gen_proto.sh

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# The batch and single rows with every fast path on, all off, and each one off alone (bench/README.md).
bench-fast-paths: setup
	$(PY) -m bench --fast-paths-matrix --only batch,single $(BENCH_ARGS)

# The batch and single rows with receipts on and off (INGEST_RECEIPTS).
bench-receipts: setup
	$(PY) -m bench --receipts-matrix --only batch,single $(BENCH_ARGS)

profile: setup
	$(PY) -m bench.profile

clean: services-down
	rm -rf .data .cache $(VENV)
