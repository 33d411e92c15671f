# Two commands for a new user: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

# System packages: "debian-package:path-it-provides".
DEMO_SYSTEM := mosquitto:/usr/sbin/mosquitto dataset-fashion-mnist:/usr/share/datasets/fashion-mnist
TEST_SYSTEM := $(DEMO_SYSTEM) chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver \
	openssl:/usr/bin/openssl systemd:/usr/bin/systemd-analyze postgresql-client:/usr/bin/psql

.PHONY: demo test lint typecheck pytest bench clean system-demo system-test

demo: system-demo $(VENV)/.demo-installed
	$(VENV)/bin/lepton demo $(ARGS)

test: system-test $(VENV)/.test-installed lint typecheck pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.test-installed
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test]'
	touch $@ $(VENV)/.demo-installed

system-demo:
	@deploy/ensure-system-packages $(DEMO_SYSTEM)

system-test:
	@deploy/ensure-system-packages $(TEST_SYSTEM)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
