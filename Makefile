# Every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-unit test-integration test-containers images lint format run up clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with pinned dependencies

test: lint ## run lint, type checks and every test tier (unit, integration, e2e, k8s, reliability, containers)
	$(BIN)/pytest -q
	$(MAKE) test-containers

test-unit: $(STAMP) ## unit tests only (no services)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP) ## integration tests against real broker, S3 and MLflow
	$(BIN)/pytest -q tests/integration

images: ## build every image (installs and starts Docker and makes the base image where missing)
	bash docker/images.sh

# Exit 2 from docker/images.sh: Docker cannot run on this machine (not root, no daemon). The tier
# is then skipped with the reason, loudly, instead of failing on something the code did not do.
test-containers: $(STAMP) ## build every image and run the whole pipeline in containers
	@bash docker/images.sh; status=$$?; \
	if [ $$status -eq 2 ]; then echo "SKIPPED the container tier: Docker cannot run here (see above)"; exit 0; fi; \
	[ $$status -eq 0 ] || exit $$status; \
	$(BIN)/pytest -q -m containers tests/containers

lint: $(STAMP) ## ruff lint, format check and mypy (the same checks as the pre-commit hooks)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

run: $(STAMP) ## the main job: the whole pipeline end to end on the embedded stack
	$(BIN)/flts run

up: $(STAMP) ## start Kafka, S3 and MLflow in the foreground
	$(BIN)/flts up

clean: ## remove the venv and local state
	rm -rf $(VENV) .flts reports
