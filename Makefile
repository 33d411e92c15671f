# Two commands for a new user: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
# The distribution's Python by default (Debian 12: 3.11.2, the oldest we support), not
# whichever newer one is first on PATH; `make test PYTHON=python3.13` picks another.
PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

# System packages: "debian-package:path-it-provides".
DEMO_SYSTEM := mosquitto:/usr/sbin/mosquitto dataset-fashion-mnist:/usr/share/datasets/fashion-mnist
TEST_SYSTEM := $(DEMO_SYSTEM) chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver \
	openssl:/usr/bin/openssl systemd:/usr/bin/systemd-analyze postgresql-client:/usr/bin/psql \
	postgresql:/usr/lib/postgresql/*/bin/initdb prometheus:/usr/bin/promtool nginx-light:/usr/sbin/nginx

.PHONY: demo test lint typecheck pytest bench clean system-demo system-test python-info

demo: system-demo $(VENV)/.demo-installed python-info
	$(VENV)/bin/lepton demo $(ARGS)

test: system-test $(VENV)/.test-installed python-info lint typecheck pytest

python-info: | $(VENV)/bin/python
	@echo "python: $$($(PY) -c 'import sys; print(sys.version.split()[0], sys.base_prefix)') in $(VENV) (PYTHON=$(PYTHON))"
	@[ "$$($(PY) -c 'import platform; print(platform.python_version())')" = \
	   "$$($(PYTHON) -c 'import platform; print(platform.python_version())')" ] || \
	   echo "note: $(VENV) was built with another Python than PYTHON=$(PYTHON); 'make clean' rebuilds it"

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.test-installed
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/bin/python:
	@echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
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
