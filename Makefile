# CityOS — `make help` lists the targets. Two commands matter to a newcomer:
#   make demo   the main job on the embedded default (no Docker)
#   make test   every test, with the services they need started for them
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
CITYOS := .venv/bin/cityos
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## install everything into caches outside the clone (virtualenv, jars); idempotent
	@bash infra/bin/ensure-system
	@bash infra/bin/ensure-venv
	@bash infra/bin/ensure-jars

.PHONY: demo
demo: setup ## run the Cologne twin through the whole pipeline on the embedded stack
	@$(CITYOS) demo

.PHONY: test
test: setup ## run every test (unit + integration against real Kafka, Spark, PostgreSQL, SUMO)
	@$(CITYOS) nlq train  # the NL-query model the tests load: from the cache, or trained once (~15 min)
	@$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: setup ## only the fast tests that need no service
	@$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

.PHONY: lint
lint: setup ## ruff (lint + format check) and mypy
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m mypy

.PHONY: up
up: setup ## start the embedded stack (Kafka, PostgreSQL) in .state/
	@$(CITYOS) up

.PHONY: down
down: ## stop the embedded stack
	@if [ -x $(CITYOS) ]; then $(CITYOS) down; fi

.PHONY: status
status: ## show what runs where
	@$(CITYOS) status

.PHONY: bench-streaming
bench-streaming: setup ## end-to-end streaming benchmark; writes reports/bench-streaming.json
	@$(CITYOS) bench streaming --report reports/bench-streaming.json

.PHONY: train-nlq
train-nlq: setup ## train the NL-query model (or find this code's version in the cache); prints held-out metrics
	@$(CITYOS) nlq train

.PHONY: eval-nlq
eval-nlq: setup ## score the NL-query service on the evaluation kit's questions; writes reports/nlq-dev.json
	@$(CITYOS) nlq eval --report reports/nlq-dev.json

.PHONY: bench-nlq
bench-nlq: setup ## NL-query latency (understanding on one core, /ask end to end), accuracy by tag, model size; writes reports/bench-nlq.json
	@$(CITYOS) bench nlq --report reports/bench-nlq.json

.PHONY: lock
lock: ## re-resolve requirements.lock from pyproject.toml
	@UV_CACHE_DIR=$${CITYOS_CACHE_DIR:-$$HOME/.cache/cityos}/uv $${CITYOS_CACHE_DIR:-$$HOME/.cache/cityos}/tools/bin/uv \
	  pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock -q

.PHONY: clean
clean: down ## remove local state (data, logs, checkpoints); caches are kept
	rm -rf .state .pytest_cache
