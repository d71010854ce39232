# crm-notify: `make run` starts the service, `make test` runs the whole suite.
# Both create .venv (with the package and its dev tools) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.installed-bench-stamp

.PHONY: run test check bench lint-rules clean help

help:  ## List targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "crm-notify needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## Migrate the database and start the service (embedded default: SQLite, no Redis)
	$(BIN)/crm-notify db upgrade
	$(BIN)/crm-notify serve

test: $(STAMP)  ## Run the whole test suite (starts a private Redis when none is reachable)
	@scripts/ensure-chromium
	@scripts/ensure-rabbitmq
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)  ## Format check, lint and type check
	scripts/check

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## Run the benchmarks and print their figures (see docs/benchmarks.md)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.timers
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.gates
	$(BIN)/python -m bench.subscriptions
	$(BIN)/python -m bench.soak --rate 200 --duration 300 --generator locust

lint-rules: $(STAMP)  ## Check the rule files and their templates
	$(BIN)/crm-notify rules lint

clean:  ## Remove the virtual environment and local data
	rm -rf $(VENV) var
