# karkhana: `make demo` runs the platform on a simulated factory; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the test suite starts as real servers (and poppler-utils, whose
# pdftoppm/pdftotext check the PDF reports; chromium, which loads the andon page).
TEST_APT_PACKAGES ?= mosquitto influxdb victoria-metrics poppler-utils chromium
DEMO_ARGS ?=

.PHONY: demo test lint bench venv dev-venv system-packages clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "karkhana needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed
dev-venv: $(VENV)/.installed-dev

demo: venv
	$(BIN)/karkhana demo $(DEMO_ARGS)

# Installs the servers the tests need from Debian when running as root and they are missing;
# a missing binary is then reported by the tests themselves as a failure, never skipped.
system-packages:
	@missing=""; for pkg in $(TEST_APT_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "warning: missing Debian packages:$$missing (run as root or install them)"; \
	  fi; \
	fi

test: dev-venv system-packages
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Quick runs of every benchmark (the KPI one compares against pandas, a dev dependency).
bench: dev-venv
	$(BIN)/python benchmarks/kpi_engine.py
	$(BIN)/python benchmarks/kpi.py --quick
	$(BIN)/python benchmarks/edge_opcua.py --quick
	$(BIN)/python benchmarks/ingest.py --quick

clean:
	rm -rf $(VENV) karkhana-data .pytest_cache .mypy_cache .ruff_cache
