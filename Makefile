# The two commands of the README:
#   make book   set up the environment and build the site into _build/html
#   make test   set up the environment and run every test (unit, notebooks under nbval, the strict book build)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gru-book-installed

# The AG News copy beside the checkout (CI and this workplace); elsewhere the loader downloads into its cache.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/ag_news/test.csv),)
GRU_LIB_DATA ?= $(SHARED_DATA)
endif
ifdef GRU_LIB_DATA
export GRU_LIB_DATA
endif
# MPLBACKEND=Agg silently drops every figure from executed notebooks.
unexport MPLBACKEND
export PYTHONHASHSEED := 0

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup book test unit nbval book-strict notebooks model peers clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP)

## The book, from the executed notebooks (nbval checks in `make test` that a fresh run reproduces them).
book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

## Every test: unit tests, the reader test and every notebook under strict nbval in one pytest run, the strict book
## build, then the browser test of the built site (tests/browser: must run here, so a missing site or Chromium
## fails it). The reader test (tests/test_reader_path.py: chapters run alone in a fresh virtual environment) is
## skipped by a plain `pytest tests`; GRU_BOOK_READER_TEST=1 runs it.
test: setup
	GRU_BOOK_READER_TEST=1 $(BIN)/python -m pytest tests notebooks $(NBVAL) --ignore=tests/browser
	$(MAKE) book
	GRU_BOOK_REQUIRE_SITE=1 $(BIN)/python -m pytest tests/browser

unit: setup
	$(BIN)/python -m pytest tests

nbval: setup
	$(BIN)/python -m pytest notebooks $(NBVAL)

## Re-execute every notebook in place (after changing code or data), so stored outputs match a fresh run.
notebooks: setup
	for nb in notebooks/*.ipynb; do echo "executing $$nb"; $(BIN)/jupyter-execute --inplace --timeout=1200 "$$nb"; done

## The classifier that ships with the library (gru_lib/shipped_model) and the "Try it" page's copy of it
## (book/_static/try_it): trained on the rows the loader finds (GRU_LIB_DATA, else the cache, downloading the full
## split), then exported with its record (training command, data checksums and rows, test accuracy). One thread:
## the model is small, a busy machine's cores slow several threads down, and the result is the same on any machine.
SHIPPED_RUN := _build/shipped_run
model: setup
	rm -rf $(SHIPPED_RUN)
	$(BIN)/python -m gru_lib train --out $(SHIPPED_RUN) --no-progress --threads 1 --embed-dim 48 \
		--no-bidirectional --max-vocab 8000
	$(BIN)/python -c 'from gru_lib.shipped import export_run; \
		print(export_run("$(SHIPPED_RUN)", site_dir="book/_static/try_it"))'

## The other runtimes of `python -m gru_lib bench --peers` (ONNX Runtime, OpenVINO) and what `export` needs: the
## `peers` extra of pyproject.toml, into .venv. Not part of setup or test (OpenVINO is a large download).
peers: setup
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[peers]'

clean:
	rm -rf _build
