# One entry point for a newcomer and for CI. `make demo` sets everything up and runs the main job on the
# embedded default; `make test` sets everything up and runs the whole test suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STATE := .state
CATALOG_PORT ?= 8080
CATALOG_URL := http://127.0.0.1:$(CATALOG_PORT)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:/'

setup: $(STATE)/system.stamp $(STATE)/python.stamp $(STATE)/npm.stamp  ## install everything (apt, pip, npm)

$(STATE)/system.stamp: system-packages.txt
	@mkdir -p $(STATE)
	@missing=$$(grep -v '^#' system-packages.txt | while read -r pkg cmd; do \
	    [ -n "$$pkg" ] || continue; \
	    if [ -n "$$cmd" ] && command -v "$$cmd" >/dev/null; then continue; fi; \
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'ok installed' || echo "$$pkg"; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STATE)/python.stamp: pyproject.toml constraints.txt
	@mkdir -p $(STATE)
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: this project needs Python 3.11"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

$(STATE)/npm.stamp: package.json package-lock.json
	@mkdir -p $(STATE)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: setup  ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint  ## run the whole test suite
	$(BIN)/pytest

demo: setup  ## run the main job on the embedded default: catalog service + image definitions
	@$(MAKE) --no-print-directory catalog-up
	$(BIN)/thinkube-pipelines images check
	THINKUBE_CATALOG_URL=$(CATALOG_URL) THINKUBE_CATALOG_TOKEN=$$(cat $(STATE)/catalog-token) \
	    $(BIN)/thinkube-pipelines images register
	@echo; echo "catalog: $(CATALOG_URL)/api/v1/images  (stop it with: make catalog-down)"
	@curl -fsS $(CATALOG_URL)/api/v1/images | $(BIN)/python -m json.tool | head -40

catalog-up: setup  ## start the catalog service in the background (SQLite under .state/)
	@mkdir -p $(STATE)
	@[ -s $(STATE)/catalog-token ] || (umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > $(STATE)/catalog-token)
	@if [ -f $(STATE)/catalog.pid ] && kill -0 $$(cat $(STATE)/catalog.pid) 2>/dev/null; then \
	    echo "catalog already running (pid $$(cat $(STATE)/catalog.pid))"; \
	else \
	    THINKUBE_CATALOG_TOKEN=$$(cat $(STATE)/catalog-token) \
	    nohup $(BIN)/thinkube-catalog serve --port $(CATALOG_PORT) > $(STATE)/catalog.log 2>&1 < /dev/null & \
	    echo $$! > $(STATE)/catalog.pid; \
	    for i in $$(seq 60); do curl -fsS $(CATALOG_URL)/healthz >/dev/null 2>&1 && break; \
	        kill -0 $$(cat $(STATE)/catalog.pid) 2>/dev/null || { cat $(STATE)/catalog.log; exit 1; }; sleep 0.5; done; \
	    curl -fsS $(CATALOG_URL)/healthz >/dev/null || { echo "catalog did not become ready:"; tail -20 $(STATE)/catalog.log; exit 1; }; \
	    echo "catalog started (pid $$(cat $(STATE)/catalog.pid)) on $(CATALOG_URL)"; \
	fi

catalog-down:  ## stop the background catalog service
	@if [ -f $(STATE)/catalog.pid ]; then kill $$(cat $(STATE)/catalog.pid) 2>/dev/null || true; rm -f $(STATE)/catalog.pid; fi

clean:  ## remove the virtualenv, node_modules and local state
	@$(MAKE) --no-print-directory catalog-down
	rm -rf $(VENV) node_modules $(STATE)

.PHONY: help setup lint test demo catalog-up catalog-down clean
