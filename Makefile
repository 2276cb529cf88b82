# Efficient Models: `make book` builds the site, `make test` runs everything CI runs,
# `make bench` prints the headline numbers. Each target sets itself up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JB := $(VENV)/bin/jupyter-book
STAMP := $(VENV)/.installed-stamp
FAST := EFFDL_FAST=1

.PHONY: setup data book test unit notebooks site bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(STAMP)

data: setup
	$(PY) -m effdl.fetch

book: data
	$(JB) build . --builder html

test: data lint unit notebooks site

lint: setup
	$(PY) -m ruff check src tests

unit: setup
	$(FAST) $(PY) -m pytest tests

notebooks: setup
	$(FAST) $(PY) -m pytest --nbval-lax -p no:cacheprovider notebooks

site: setup
	mkdir -p _build
	sed 's/^\(  *execute_notebooks:\).*/\1 "off"/' _config.yml > _build/_config_ci.yml
	$(JB) build . --builder html --config _build/_config_ci.yml -W -n --keep-going

bench: data
	$(PY) -m effdl.headline --out results/bench.json

clean:
	rm -rf _build results
