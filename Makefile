# The two set-up commands are `make run` and `make test`; everything else is a convenience.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install tools down status logs lint fmt bench chaos fuzz screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: tools $(STAMP)

# Java 17 and Maven run the local Kafka broker, kcat reads topics in tests and the runbook,
# Debian's Chromium runs the browser tests (CORS, the console) and the console's screenshots,
# wrk is make bench's load generator;
# installed from Debian's packages when a machine lacks them.
tools:
	@command -v java >/dev/null && command -v mvn >/dev/null && command -v kcat >/dev/null \
	  && command -v chromium >/dev/null && command -v wrk >/dev/null || \
	  { apt-get update -q && apt-get install -y -q openjdk-17-jdk-headless maven kcat chromium wrk; }

run: install
	$(BIN)/mibo-ingest dev up

test: lint
	$(BIN)/pytest

down:
	$(BIN)/mibo-ingest dev down

status:
	$(BIN)/mibo-ingest dev status

logs:
	$(BIN)/mibo-ingest dev logs

# Benchmarks print ratios against a bare baseline measured in the same run (see bench/).
bench: install
	$(BIN)/mibo-ingest dev up --no-services
	$(BIN)/python -m bench.report

# Fault scenarios (kill -9 of each service, PostgreSQL and Kafka restarts), reconciled exactly;
# then four on a three-broker cluster that bench/chaos_cluster.py brings up in .devstack-cluster/.
chaos: install
	$(BIN)/mibo-ingest dev up --no-services
	$(BIN)/python -m bench.chaos

# ruff (lint + format), the type checker, and the import layers (README: Architecture).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# A longer property-based run against /openapi.json than the one in `make test` (about 2 min):
# FUZZ_SECONDS of Schemathesis, more examples per operation, a new seed each run.
fuzz: install
	FUZZ_SECONDS=$${FUZZ_SECONDS:-600} FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-500} FUZZ_SEED=$${FUZZ_SEED:-random} \
	  $(BIN)/pytest tests/integration/test_fuzz_openapi.py -s --timeout=0

# The README's console screenshots (docs/console/*.png), from a real run against the local stack.
screenshots: install
	$(BIN)/mibo-ingest dev up
	set -a && . .devstack/env && $(BIN)/python -m console.screenshots
