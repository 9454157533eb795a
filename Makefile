# Tips mesh. `make up` runs the whole mesh; `make test` runs lint and the tests.
# Only Python 3.11+ and make are needed: everything else is installed into .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv gen lint lint-proto lint-breaking lint-drift lint-py typecheck test test-fast up migrate bench clean

help:
	@echo "make up      run the whole mesh (PostgreSQL, NATS, every service, the gateway)"
	@echo "make test    lint, then unit, integration, contract and end-to-end tests"
	@echo "make gen     regenerate gen/python from proto/ with buf"
	@echo "make lint    buf lint, buf format, buf breaking, generated-code drift, ruff"

# The venv is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	@touch $@

venv: $(VENV)/.installed

gen: venv
	$(BIN)/buf generate
	@mkdir -p gen/descriptors
	$(BIN)/buf build -o gen/descriptors/tips.binpb
	$(BIN)/python tools/gen_api_docs.py
	$(BIN)/python tools/gen_openapi.py

lint: lint-proto lint-breaking lint-drift lint-py

lint-proto: venv
	$(BIN)/buf lint
	$(BIN)/buf format proto --diff --exit-code

lint-breaking: venv
	$(BIN)/python tools/buf_breaking.py

lint-drift: venv
	$(BIN)/python tools/check_gen_drift.py

lint-py: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy kernel policy services gateway tipsmesh sim

test: lint typecheck
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "unit"

migrate: venv
	$(BIN)/tips migrate

up: venv
	$(BIN)/tips up

bench: venv
	$(BIN)/tips bench all

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
