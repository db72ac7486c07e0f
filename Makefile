# 4lock-core. Quick start on a fresh Debian 12 machine (as root):
#   make dev    set up everything, then run the daemon in the foreground on its defaults
#   make test   set up everything, then run the whole test suite
SHELL := /bin/bash
# Debian's interpreter: world-readable, so rootless tests can run the same venv.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
# Compile bytecode at install time, as a package install does: every daemon, fork
# server and vapp-oci start would otherwise recompile its imports from source
# (about 0.5 s), and environments that set PYTHONDONTWRITEBYTECODE never cache it.
export UV_COMPILE_BYTECODE := 1
# pytest-xdist workers: most tests wait on real daemons and processes, not CPU.
TEST_WORKERS ?= 4
PYTEST_ARGS ?=

.PHONY: help setup setup-system venv dev test test-fast lint fmt bench image run clean

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup-system: ## install Debian packages, prepare /dev nodes and the rootless test user (root only)
	@if [ "$$(id -u)" = 0 ]; then bash scripts/setup-system.sh; \
	else echo "not root: skipping system setup (run 'sudo bash scripts/setup-system.sh' once)"; fi

venv: ## build the virtualenv from uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --break-system-packages uv
	$(UV) sync --frozen --quiet
	$(VENV)/bin/python -m compileall -q -j 0 app tests bench >/dev/null

setup: setup-system venv ## everything a fresh machine needs

dev: setup ## run the daemon in the foreground on its defaults (SQLite, local state dir)
	$(VENV)/bin/vapp-core daemon

test: setup ## set up and run the whole test suite
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup -p no:cacheprovider $(PYTEST_ARGS) tests

lint: venv ## ruff + mypy
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/mypy

fmt: venv
	$(VENV)/bin/ruff check --fix app tests bench

bench: setup ## side-by-side benchmarks (not tests): prints figures and ratios
	@for b in bench/*_bench.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

IMAGE ?= vapp-core:dev
image: ## build the production image with nerdctl
	nerdctl build -t $(IMAGE) -f docker/Dockerfile .

run: image ## run the production image (nerdctl compose), as the agent's operators do
	nerdctl compose -f compose/compose.yaml up

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .test-work
