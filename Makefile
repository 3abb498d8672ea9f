# Behind the Pipeline: every step from a fresh clone.
#   make book   build the website into _build/html (creates the environment first); then make test-site, make browser
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
# hypothesis (the service's property tests) keeps its examples here, not in .hypothesis/ at the root.
export HYPOTHESIS_STORAGE_DIRECTORY := $(CACHE)/hypothesis
# Ray (chapter 20): its session folders and sockets inside the project, and no usage statistics sent.
export RAY_TMPDIR := $(CACHE)/ray
export RAY_USAGE_STATS_ENABLED := 0

INSTALLED := $(VENV)/.installed
ASSETS := $(CACHE)/assets/.ready
CLASSIFIER := $(CACHE)/models/minilm-rotten-tomatoes/training_summary.json
# Chapter 8's tiny GPT-2, trained on Hamlet once and shipped (behind_pipeline/weights): copied, not trained.
GENERATOR := $(CACHE)/models/tiny-gpt-hamlet/training_summary.json
# Chapter 19's ticket router, fine-tuned from the course classifier on the 3-class corpus (about a minute), its
# triage settings (triage.json).
ROUTER := $(CACHE)/models/minilm-ticket-router/training_summary.json
# Its class-weighted twin (chapter 19 compares the two), trained by the same command right after it.
ROUTER_WEIGHTED := $(CACHE)/models/minilm-ticket-router-class-weighted/training_summary.json
MODELS := $(CLASSIFIER) $(GENERATOR) $(ROUTER) $(ROUTER_WEIGHTED)
NBVAL := --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg
# One process, on purpose: every kernel and test uses 2 torch threads (the stored outputs depend on it), and two
# pytest-xdist workers on 2 cores then fight for them. Measured on 2 cores: nbval over 4 chapters took 148 s with
# `-n 2 --dist loadfile` and 101 s in one process; the unit tests of chapters 3-7, 129 s and 58 s.
PARALLEL := -p no:xdist
# Every test run ends with its 30 slowest steps, so a fresh clone's log (CI's) is also its profile.
DURATIONS := --durations=30

.PHONY: install assets prepare test test-unit test-notebooks test-exercises book lab execute runtimes \
        exercises clean-notebooks lint clean small full serve grade test-site browser canary bench check render

install: $(INSTALLED)
$(INSTALLED): requirements.txt pyproject.toml
	@start=$$(date +%s); set -e; \
	$(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt; \
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	$(BIN)/python tools/timings.py record install $$start
	touch $@

assets: $(ASSETS)
$(ASSETS): $(INSTALLED) behind_pipeline/assets.py
	@start=$$(date +%s); set -e; \
	$(BIN)/python -m behind_pipeline.assets; \
	$(BIN)/python tools/timings.py record assets $$start
	touch $@

# make asks again when one of these files changed; prepare.py trains only when the fingerprint of what shapes
# the weights changed (settings, training split, library versions, RECIPE: behind_pipeline/trained_once.py), so
# editing code that does not change them costs a few seconds, not a retrain.
PREPARE_SOURCES := $(addprefix behind_pipeline/,prepare.py training.py batching.py data.py)
# Timed (results/setup.json via `make runtimes`) only when it starts from no trained model: a fresh clone's figure,
# not that of a partial retrain.
prepare: | $(ASSETS)
	@start=$$(date +%s); set -e; fresh=1; \
	for summary in $(MODELS); do if [ -e $$summary ]; then fresh=0; fi; done; \
	$(MAKE) --no-print-directory $(MODELS); \
	if [ $$fresh = 1 ]; then $(BIN)/python tools/timings.py record prepare $$start; fi
$(CLASSIFIER): $(PREPARE_SOURCES) | $(ASSETS)
	$(BIN)/python -m behind_pipeline.prepare

# The generator ships trained (another kind of CPU would train other weights, and chapter 8 would print another
# text): tiny_gpt.py copies it when its fingerprint (RECIPE, settings, the play's text) is current, else trains.
$(GENERATOR): behind_pipeline/tiny_gpt.py $(wildcard behind_pipeline/weights/tiny-gpt-hamlet/*) | $(ASSETS)
	$(BIN)/python -m behind_pipeline.tiny_gpt

# The router: capstone/router.py compares a fingerprint (its recipe, its training items, the course classifier's
# fingerprint, versions) and trains again only when it changed.
$(ROUTER) $(ROUTER_WEIGHTED) &: $(CLASSIFIER) $(wildcard behind_pipeline/capstone/*.py) $(PREPARE_SOURCES)
	$(BIN)/python -m behind_pipeline.capstone

# Each run computes the logits that chapters share (predict.cached_predict_logits) once, afresh.
test: $(MODELS)
	@start=$$(date +%s); set -e; rm -rf $(CACHE)/logits; \
	$(MAKE) --no-print-directory test-unit test-notebooks test-exercises; \
	$(BIN)/python tools/timings.py record test $$start

test-unit: $(MODELS)
	$(BIN)/pytest $(PARALLEL) $(DURATIONS) tests

test-notebooks: $(MODELS)
	$(BIN)/pytest $(PARALLEL) $(DURATIONS) $(NBVAL) --nbval notebooks solutions book

# The blank exercise notebooks, run to the end in one kernel (tests/run_blank_exercises.py says why).
test-exercises: $(MODELS)
	$(BIN)/pytest $(PARALLEL) $(DURATIONS) tests/run_blank_exercises.py

# One chapter's loop for authors (a minute to several): `make check CH=15` runs chapter 15's notebook and solutions
# under nbval, its blank exercise notebook, its unit and checker tests, and ruff over what it touches.
CH_FILES = $(wildcard notebooks/$(CH)_*.ipynb solutions/$(CH)_*.ipynb)
check: $(MODELS)
	@test -n "$(CH)" || { echo "usage: make check CH=NN (two digits, e.g. CH=07)"; exit 2; }
	@test -n "$(CH_FILES)" || { echo "no notebook notebooks/$(CH)_*.ipynb: CH takes two digits, e.g. CH=07"; exit 2; }
	$(BIN)/ruff check $(CH_FILES) $(wildcard tests/test_ch$(CH)_*.py behind_pipeline/checks/ch$(CH)_*.py)
	$(BIN)/pytest $(PARALLEL) -q $(wildcard tests/test_ch$(CH)_*.py) \
	  $(NBVAL) --nbval $(CH_FILES)
	@if ls exercises/$(CH)_*.ipynb >/dev/null 2>&1; then \
	  $(BIN)/pytest $(PARALLEL) -q tests/run_blank_exercises.py -k "$(CH)_"; \
	else echo "chapter $(CH) has no exercise notebook"; fi

# The site is built from the outputs stored in the notebooks: it needs the environment, not the models.
book: $(INSTALLED)
	$(BIN)/python tools/check_site.py --inputs
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	$(BIN)/python tools/check_site.py --offline _build/html

# Tests of the built site (run `make book` first): no external resource, every internal link and anchor
# resolves, every notebook rendered with its outputs, alt text on every image, math by the local MathJax.
test-site: $(INSTALLED)
	$(BIN)/python tools/check_site.py _build/html

# The site in a real browser: headless Chromium (Debian's `chromium`, installed with apt-get when missing; the
# test is skipped with a SKIPPED line where it cannot be installed) opens every page at 1280 px, fails on any
# code cell or output that scrolls sideways, on console errors, on figures not loaded or math not rendered, and
# saves screenshots of the landing page and one chapter per part in _build/screenshots/.
CHROMIUM ?= /usr/bin/chromium
browser: $(INSTALLED)
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  echo "installing Debian's chromium with apt-get (once)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
	    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; } \
	    || true; \
	fi; \
	if [ ! -x "$(CHROMIUM)" ]; then \
	  echo "SKIPPED: the browser test needs Chromium at $(CHROMIUM), and apt-get could not install it here"; \
	  echo "         (it needs root and Debian's package lists): install it, or set CHROMIUM=<path>"; \
	  exit 0; \
	fi; \
	$(BIN)/python tools/browser_check.py _build/html --chromium "$(CHROMIUM)"

# The classifier as a web service (chapter 18). BTP_SERVICE_INT8=1 serves the int8 model; see
# behind_pipeline/service/settings.py for every limit of the app (BTP_SERVICE_*). uvicorn's own limits:
# SERVE_LIMIT_CONCURRENCY (connections and tasks at once; past it uvicorn answers 503), SERVE_KEEP_ALIVE (seconds an
# idle kept-alive connection stays open), SERVE_GRACEFUL (seconds in-flight requests get to finish on SIGTERM).
SERVE_PORT ?= 8000
# `--http h11 --loop asyncio`: what chapter 18 was measured with (ray[serve], chapter 20, installs httptools and
# uvloop, which uvicorn's "auto" would pick otherwise).
SERVE_LIMIT_CONCURRENCY ?= 256
SERVE_KEEP_ALIVE ?= 5
SERVE_GRACEFUL ?= 30
serve: $(CLASSIFIER)
	@echo "Serving the course classifier on http://127.0.0.1:$(SERVE_PORT) (API docs: http://127.0.0.1:$(SERVE_PORT)/docs)"
	$(BIN)/uvicorn --factory behind_pipeline.service.app:app --host 127.0.0.1 --port $(SERVE_PORT) \
	  --limit-concurrency $(SERVE_LIMIT_CONCURRENCY) --timeout-keep-alive $(SERVE_KEEP_ALIVE) \
	  --timeout-graceful-shutdown $(SERVE_GRACEFUL) --http h11 --loop asyncio

# The same classifier on Ray Serve (chapter 20): Ray on this machine (2 CPUs, no dashboard, files in .cache/ray),
# the application of behind_pipeline/service/ray_serve.yaml on SERVE_PORT; Ctrl-C stops Serve and Ray.
# SERVE_RAY_REPLICAS=2 fixes the number of replicas (default: the file's autoscaling, 1 to 2 replicas).
.PHONY: serve-ray
serve-ray: $(CLASSIFIER)
	@echo "Starting Ray Serve; the course classifier will answer on http://127.0.0.1:$(SERVE_PORT)/predict" \
	  "(API docs: http://127.0.0.1:$(SERVE_PORT)/docs) once the line READY appears"
	$(BIN)/python -m behind_pipeline.service.ray_app --port $(SERVE_PORT) \
	  $(if $(SERVE_RAY_REPLICAS),--replicas $(SERVE_RAY_REPLICAS))

# Opens as soon as the environment and the assets exist. The course classifier (chapters 0-7 need only it) trains
# in the background meanwhile (log: .cache/prepare-lab.log); a chapter that needs it first waits for that training
# and shows its progress (models.classifier_id). Chapter 8 copies its shipped generator and chapter 19 trains its
# router the first time they need them (the router in about a minute, with a progress line).
# Not online (the book then uses a Hub classifier), and not while another training of it runs (a second `make lab`).
# The training goes on after Ctrl-C stops JupyterLab: a background job of make's shell ignores SIGINT.
lab: $(ASSETS)
	@if ! $(MAKE) --no-print-directory -q $(CLASSIFIER) && $(BIN)/python -c "import sys; \
	  from behind_pipeline import paths, trained_once; \
	  sys.exit(paths.is_online() or trained_once.is_training(paths.CLASSIFIER_DIR))"; then \
	  echo "Training the course classifier in the background (a few minutes; log: .cache/prepare-lab.log)."; \
	  nohup $(MAKE) --no-print-directory $(CLASSIFIER) > $(CACHE)/prepare-lab.log 2>&1 & \
	fi
	$(BIN)/jupyter lab --allow-root --notebook-dir=.

# Re-execute every notebook in place (after editing one) and store fresh outputs.
NOTEBOOKS ?= $(wildcard notebooks/*.ipynb solutions/*.ipynb book/*.ipynb)
execute: $(MODELS)
	$(BIN)/python tools/execute_notebooks.py $(NOTEBOOKS)
	$(MAKE) exercises clean-notebooks

# Every generated block from the results files, in one step: the chapter tables, "Runs in about" lines and versions
# page, the classroom pages, Part II's results tables, the benchmark tables, the capstone's model card and the
# chapter map (each script rewrites its marked blocks through tools/blocks.py; tests fail on a stale one).
render: $(INSTALLED)
	$(BIN)/python tools/chapter_table.py
	$(BIN)/python tools/instructor_tables.py
	$(BIN)/python tools/results_tables.py
	$(BIN)/python tools/bench_tables.py
	$(BIN)/python -m behind_pipeline.capstone --card
	$(BIN)/python tools/chapter_map.py

# Run time of every notebook on this machine, written to results/runtimes.json and the README table.
runtimes: $(MODELS)
	$(BIN)/python tools/execute_notebooks.py --measure $(NOTEBOOKS)
	$(BIN)/python tools/timings.py gather
	$(MAKE) --no-print-directory render exercises clean-notebooks

# Experiment notebooks (Part II) through papermill: their results files and the tables rendered from them.
# `make small` uses the stored notebooks' settings (seconds per chapter); `make full` trains on all the data.
small full: $(MODELS)
	$(BIN)/python tools/run_experiments.py --run $@
	$(MAKE) --no-print-directory render

# Every variant of the classifier (fp32, dynamic int8, bitsandbytes 8/4-bit, ONNX Runtime fp32/int8) measured in
# one run on this machine, each in a fresh process (a few minutes on 2 cores), then the service's figures
# (chapter 18); results/bench.json, rendered into book/benchmark.md and the README by tools/bench_tables.py.
bench: $(CLASSIFIER)
	$(BIN)/python -m behind_pipeline.bench
	$(MAKE) --no-print-directory bench-service

	$(MAKE) --no-print-directory bench-ray

# Chapter 20's comparison alone: chapter 18's service against Ray Serve with 1 and 2 replicas (start-up, memory,
# latency at batch 8, throughput under 16 clients; 3 repeats each), into the "ray" section of results/bench.json,
# then the tables re-rendered. BENCH_RAY_ARGS=--tiny checks the file in about a minute.
.PHONY: bench-ray
bench-ray: $(CLASSIFIER)
	$(BIN)/python -m behind_pipeline.service.ray_bench $(BENCH_RAY_ARGS)
	$(MAKE) --no-print-directory render
# The service's figures alone (chapter 18): Debian's wrk (installed with apt-get when missing, as `make browser`
# installs Chromium; its runs are skipped with a message where it cannot be) and the httpx clients, 3 repeats each,
# into results/bench.json, then the tables re-rendered. BENCH_SERVICE_ARGS=--tiny checks the file in seconds.
WRK ?= /usr/bin/wrk
.PHONY: bench-service
bench-service: $(CLASSIFIER)
	@if [ ! -x "$(WRK)" ]; then \
	  echo "installing Debian's wrk with apt-get (once)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 \
	    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends wrk >/dev/null 2>&1; } \
	    || echo "SKIPPED: wrk could not be installed here (it needs root and Debian's package lists)"; \
	fi
	$(BIN)/python -m behind_pipeline.service.bench --wrk "$(WRK)" $(BENCH_SERVICE_ARGS)
	$(MAKE) --no-print-directory render

# Grade a folder of submissions, one subfolder per learner holding NN_topic_exercises.ipynb notebooks: each runs
# in its own kernel, stopped after GRADE_TIMEOUT seconds, GRADE_JOBS of them at once; the table of checks goes to
# OUT (default DIR/grades.csv).
GRADE_TIMEOUT ?= 300
GRADE_JOBS ?= 1
grade: $(MODELS)
	@test -n "$(DIR)" || { echo "usage: make grade DIR=<submissions> [OUT=grades.csv] [GRADE_TIMEOUT=300] [GRADE_JOBS=1]"; exit 2; }
	$(BIN)/python tools/grade.py "$(DIR)" --timeout $(GRADE_TIMEOUT) --jobs $(GRADE_JOBS) $(if $(OUT),--out "$(OUT)")

# Drift canary: the newest releases of transformers, tokenizers, datasets, peft, accelerate, huggingface_hub and
# nbval (network: PyPI) in a separate venv, .cache/canary-venv, every other package as pinned; runs test-unit and
# test-notebooks there, runs what broke again with the pins to tell drift apart, and reports in
# .cache/canary/report.md (exit status 1 when it found drift or a conflict). .venv, the pinned environment CI
# uses, is only read, never changed. Parts of it: python tools/canary.py --help.
canary: $(MODELS)
	$(BIN)/python tools/canary.py --python $(PYTHON)

exercises: $(INSTALLED)
	$(BIN)/python tools/make_exercises.py

clean-notebooks: $(INSTALLED)
	$(BIN)/python tools/clean_notebooks.py

lint: $(INSTALLED)
	$(BIN)/ruff check .

clean:
	rm -rf _build
