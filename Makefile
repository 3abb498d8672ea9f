# Behind the Pipeline: every step from a fresh clone.
#   make book   build the website into _build/html (creates the environment and local assets first)
#   make test   lint, unit tests, nbval over every notebook (what CI runs)
#   make lab    open the book in JupyterLab
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(CURDIR)/.cache

# Every cache inside the project: nothing is written under the home directory.
export HF_HOME := $(CACHE)/huggingface
export HF_DATASETS_CACHE := $(CACHE)/huggingface/datasets
export XDG_CACHE_HOME := $(CACHE)/xdg
export MPLCONFIGDIR := $(CACHE)/matplotlib
export TORCH_HOME := $(CACHE)/torch
export PIP_CACHE_DIR := $(CACHE)/pip
export IPYTHONDIR := $(CACHE)/ipython
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export JUPYTER_PLATFORM_DIRS := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

INSTALLED := $(VENV)/.installed
ASSETS := $(CACHE)/assets/.ready
CLASSIFIER := $(CACHE)/models/minilm-rotten-tomatoes/training_summary.json
NBVAL := --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg
# Two workers: much of a notebook's time is single-threaded (kernel start, imports), so two overlap well on
# 2 cores. loadfile keeps every cell of a notebook (and every test of a file) on one worker, in order.
PARALLEL := -n 2 --dist loadfile

.PHONY: install assets prepare test test-unit test-notebooks test-exercises book lab execute runtimes \
        exercises clean-notebooks lint clean small full serve

install: $(INSTALLED)
$(INSTALLED): requirements.txt pyproject.toml
	@start=$$(date +%s); set -e; \
	$(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt; \
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	$(PYTHON) tools/record_time.py install $$start
	touch $@

assets: $(ASSETS)
$(ASSETS): $(INSTALLED) behind_pipeline/assets.py
	@start=$$(date +%s); set -e; \
	$(BIN)/python -m behind_pipeline.assets; \
	$(BIN)/python tools/record_time.py assets $$start
	touch $@

# Trains again only when the code that shapes the weights changed (prepare.py compares a fingerprint).
PREPARE_SOURCES := $(addprefix behind_pipeline/,prepare.py training.py batching.py data.py)
prepare: $(CLASSIFIER)
$(CLASSIFIER): $(PREPARE_SOURCES) | $(ASSETS)
	$(BIN)/python -m behind_pipeline.prepare

test: $(CLASSIFIER)
	@start=$$(date +%s); set -e; \
	$(MAKE) --no-print-directory test-unit test-notebooks test-exercises; \
	$(BIN)/python tools/record_time.py test $$start

test-unit: $(CLASSIFIER)
	$(BIN)/pytest $(PARALLEL) tests

test-notebooks: $(CLASSIFIER)
	$(BIN)/pytest $(PARALLEL) $(NBVAL) --nbval notebooks solutions

test-exercises: $(CLASSIFIER)
	$(BIN)/pytest $(PARALLEL) --nbval-current-env --nbval-lax exercises

book: $(CLASSIFIER)
	$(BIN)/python tools/check_site_inputs.py
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	$(BIN)/python tools/check_site_offline.py _build/html

# The classifier as a web service (chapter 18). BTP_SERVICE_INT8=1 serves the int8 model; see
# behind_pipeline/service/settings.py for every limit.
SERVE_PORT ?= 8000
serve: $(CLASSIFIER)
	@echo "Serving the course classifier on http://127.0.0.1:$(SERVE_PORT) (API docs: http://127.0.0.1:$(SERVE_PORT)/docs)"
	$(BIN)/uvicorn --factory behind_pipeline.service.app:app --host 127.0.0.1 --port $(SERVE_PORT)

lab: $(CLASSIFIER)
	$(BIN)/jupyter lab --allow-root --notebook-dir=.

# Re-execute every notebook in place (after editing one) and store fresh outputs.
NOTEBOOKS ?= $(wildcard notebooks/*.ipynb solutions/*.ipynb)
execute: $(CLASSIFIER)
	$(BIN)/python tools/execute_notebooks.py $(NOTEBOOKS)
	$(MAKE) exercises clean-notebooks

# Run time of every notebook on this machine, written to results/runtimes.json and the README table.
runtimes: $(CLASSIFIER)
	$(BIN)/python tools/execute_notebooks.py --measure $(NOTEBOOKS)
	$(BIN)/python tools/gather_timings.py
	$(BIN)/python tools/chapter_table.py
	$(MAKE) --no-print-directory exercises clean-notebooks

# Experiment notebooks (Part II) through papermill: their results files and the tables rendered from them.
# `make small` uses the stored notebooks' settings (seconds per chapter); `make full` trains on all the data.
small full: $(CLASSIFIER)
	$(BIN)/python tools/run_experiments.py --run $@
	$(BIN)/python tools/results_tables.py

exercises: $(INSTALLED)
	$(BIN)/python tools/make_exercises.py

clean-notebooks: $(INSTALLED)
	$(BIN)/python tools/clean_notebooks.py

lint: $(INSTALLED)
	$(BIN)/ruff check .

clean:
	rm -rf _build
