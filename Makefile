# Content Processor — the two commands are `make dev` and `make test`; both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.8
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Test files run on this many workers (each with its own Postgres cluster and S3 server): most of
# the suite's time is spent waiting on real services and machine processes, not computing.
PYTEST_WORKERS ?= 4

.PHONY: help install system-deps dev test lint typecheck pytest soak soak-fly migrate bench token lock clean

help:
	@echo "make dev        start Postgres, S3, the API and the dispatcher on embedded defaults"
	@echo "make test       lint, typecheck and run the whole test suite"
	@echo "make soak DURATION=600   run the adversarial test (tests/test_adversary.py) for that many seconds"
	@echo "make lint | typecheck | migrate | bench | token | lock | clean"
	@echo "make soak-fly DURATION=600   the chaos soak through LAUNCHER=fly, jobs coming for DURATION seconds"

# System packages, installed with apt-get only when missing: PostgreSQL server binaries (the
# embedded dev/test database), WeasyPrint's Pango/HarfBuzz (harfbuzz-subset keeps PDF font
# subsetting fast) and fonts, poppler-utils (PDF previews in tests) and Chromium (the Swagger UI
# rendering test and the dashboard browser tests, driven by playwright; its own browsers are never downloaded).
system-deps:
	@missing=""; \
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then missing="$$missing postgresql"; fi; \
	ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0 || missing="$$missing libpango-1.0-0 libpangoft2-1.0-0"; \
	ldconfig -p 2>/dev/null | grep -q libharfbuzz-subset || missing="$$missing libharfbuzz-subset0"; \
	fc-list 2>/dev/null | grep -qi dejavu || missing="$$missing fonts-dejavu-core fontconfig"; \
	fc-list : family 2>/dev/null | grep -q '^Inter' || missing="$$missing fonts-inter"; \
	command -v pdftoppm >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "please install:$$missing (no apt-get here)"; exit 1; fi; \
	fi

$(STAMP): pyproject.toml requirements.lock
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --require-hashes -r requirements.lock
	@VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

dev: install
	$(BIN)/python -m infra.local.dev

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy functions shared infra tests bench

pytest: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# The adversarial stateful test (a bounded run is part of `make test`) run with random seeds for
# DURATION seconds; a failure prints every broken promise, the steps and the seed to replay them.
# Then the claim stress (10 claimers, every rule set) for DURATION / 20 seconds per rule set.
DURATION ?= 600
soak: install
	ADVERSARY_DURATION=$(DURATION) $(BIN)/pytest tests/test_adversary.py -q -s -p no:cacheprovider $(PYTEST_ARGS)
	CLAIM_STRESS_SECONDS=$$(( $(DURATION) / 20 )) $(BIN)/pytest tests/shared/db/test_claims_concurrent.py tests/shared/db/test_claims_under_cancels.py -q -p no:cacheprovider

migrate: install
	$(BIN)/python -m shared.db.migrate

# The chaos soak through LAUNCHER=fly against the emulator (a bounded one runs in `make test`).
DURATION ?= 300
RATE ?= 20
soak-fly: install
	FLY_SOAK_SECONDS=$(DURATION) FLY_SOAK_RATE=$(RATE) $(BIN)/pytest tests/functions/test_fly_soak.py -s -p no:cacheprovider

bench: install
	$(BIN)/python -m bench

token: install
	@$(BIN)/python -m shared.tokens --tenant $${TENANT:-dev} --scope "$${SCOPE:-jobs:write jobs:read}"

# Regenerate the lock files after changing dependencies in pyproject.toml. Both list the sha256
# of every file of every pinned version, and installs check them: `make install` passes
# --require-hashes (a file that differs, or a package missing from the lock, fails the install;
# the project itself is installed apart, --no-deps, since an editable install has no hash).
# requirements.runtime.lock is the runtime part (no dev/bench extras) at the same versions, for
# Linux, which the image (infra/Dockerfile) installs with pip --require-hashes.
lock: install
	$(BIN)/uv pip compile -q --generate-hashes pyproject.toml --extra dev --extra bench -o requirements.lock --python-version 3.11
	$(BIN)/uv pip compile -q --generate-hashes pyproject.toml -c requirements.lock -o requirements.runtime.lock \
	  --python-version 3.11 --python-platform linux

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
