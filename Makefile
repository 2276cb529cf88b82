# Efficient Models: `make book` builds the site, `make test` runs everything CI runs,
# `make bench` runs every chapter's claims and targets full-size (`make bench ONLY=quant_cnn` runs one
# chapter). Each target sets itself up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JB := $(VENV)/bin/jupyter-book
STAMP := $(VENV)/.installed-stamp
FAST := EFFDL_FAST=1

.PHONY: setup data book test unit notebooks site bench serve lint clean

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
	$(FAST) $(PY) -m pytest tests --ignore=tests/notebooks

# The one execution of the notebooks in CI: each runs once (fast mode) and is saved, with its outputs,
# to _build/executed, where the tests check its claims, glued values and shown code.
notebooks: setup
	$(FAST) $(PY) -m pytest -p no:cacheprovider tests/notebooks

# The site from the executed notebooks, execution off: a glued value with no matching glue() fails -W.
SITE := _build/site
site: notebooks
	rm -rf $(SITE) && mkdir -p $(SITE)
	cp -r _toc.yml book $(SITE)/ && cp -r _build/executed/notebooks $(SITE)/notebooks
	sed 's/^\(  *execute_notebooks:\).*/\1 "off"/' _config.yml > $(SITE)/_config.yml
	$(JB) build $(SITE) --builder html -W -n --keep-going
	@# math renders offline: MathJax is served from the site itself, no page asks a CDN for it
	test -f $(SITE)/_build/html/_static/mathjax/tex-mml-chtml.js
	! grep -rl --include='*.html' 'cdn.jsdelivr.net/npm/mathjax' $(SITE)/_build/html

bench: data
	$(PY) -m effdl.report --out results/bench.json $(if $(ONLY),--only $(ONLY))

# The book's models behind an OpenAI-compatible API on http://127.0.0.1:8000 (`python -m effdl.serve --help`).
serve: data
	$(PY) -m effdl.serve --host 127.0.0.1

clean:
	rm -rf _build results
