# The compendium's commands. `make repro` and `make test` each set up what they need first, and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The raw corpus: data/, tracked by data.dvc. `make data` brings the sample corpus; `make data CORPUS=/path/to/folder`
# (any folder holding manifest.csv + videos/), or CORPUS=... on any other target, imports that folder instead. Without
# CORPUS=, every other target (repro, test, ...) keeps whatever corpus data.dvc tracks.
SAMPLE_CORPUS := ../shared/corpus
ifneq ($(filter command line environment override,$(origin CORPUS)),)
WANTED_CORPUS := $(CORPUS)
endif
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONDONTWRITEBYTECODE := 1
# stage commands (medgen-stage, papermill, dvc) come from the project environment
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup data push pull repro test test-fast lab export readme docs profile clean-scratch bench

setup: $(STAMP) corpus

# The environment: created when missing, reinstalled only when the pins change.
$(STAMP): requirements.txt requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# DVC analytics and update checks are off in the committed .dvc/config (offline by default).

# import_corpus WANTED: import WANTED as data/ (data.dvc) when data.dvc tracks another folder (from any state: a fresh
# clone, after setup, after an earlier import); bring data/ back when it is missing. data/ is DVC's copy: removing it loses nothing.
define import_corpus
	@tracked=$$($(BIN)/python -c "import yaml; print(yaml.safe_load(open('data.dvc'))['deps'][0]['path'])" 2>/dev/null); \
	given="$(1)"; given="$${given:-$${tracked:-$(SAMPLE_CORPUS)}}"; \
	current=$$([ -n "$$tracked" ] && realpath -m "$$tracked"); wanted=$$(realpath -m "$$given"); \
	if [ ! -f "$$wanted/manifest.csv" ]; then echo "make: corpus $$given has no manifest.csv (a corpus folder holds manifest.csv + videos/)" >&2; exit 1; fi; \
	if [ "$$current" != "$$wanted" ]; then \
		echo "make: importing $$given as data/ (data.dvc)"; \
		rm -rf data && $(BIN)/dvc import-url --force "$$given" data || exit 1; \
	elif [ ! -f data/manifest.csv ]; then \
		$(BIN)/dvc update data.dvc || exit 1; \
	fi
	@# the labelled reference set (the sample corpus: segment's frame classifier, the defect set), and the downstream
	@# benchmark (lung POCUS, ../shared/corpus_pocus): each tracked by its own .dvc file
	@for d in data_reference data_pocus; do if [ ! -f $$d/manifest.csv ]; then $(BIN)/dvc update $$d.dvc || exit 1; fi; done
	@echo "make: corpus data/ <- $$($(BIN)/python -c "import yaml; print(yaml.safe_load(open('data.dvc'))['deps'][0]['path'])") (data.dvc)"
endef

# `make data`: the sample corpus, or CORPUS=... . Other targets (through setup) keep data.dvc's corpus unless CORPUS= is given.
data: $(STAMP)
	$(call import_corpus,$(or $(WANTED_CORPUS),$(SAMPLE_CORPUS)))

.PHONY: corpus
corpus: $(STAMP)
	$(call import_corpus,$(WANTED_CORPUS))

# DVC remote: data, models and adapters (`remote` in .dvc/config: a local folder beside the clone by default; any DVC
# remote, e.g. `dvc remote add -d store s3://bucket/medgen`). TARGETS narrows what moves (stages or .dvc files).
TARGETS ?=
push: $(STAMP)
	$(BIN)/dvc push $(TARGETS)
pull: $(STAMP)
	$(BIN)/dvc pull $(TARGETS)

# STAGES narrows the run to some stages and what they need (e.g. `make repro STAGES=ingest`); empty: the whole pipeline.
STAGES ?=
repro: setup
	$(BIN)/dvc repro $(STAGES)

# Debian's Chromium for the browser tests (tests/test_browser.py; Playwright drives /usr/bin/chromium, never its own download).
# Installed only when missing; needs root and apt-get.
.PHONY: browser
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "make browser: installing chromium with apt-get"; \
			log=$$(mktemp); \
			if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$$log" 2>&1; then \
				tail -n 20 "$$log" >&2; rm -f "$$log"; \
				echo "make browser: apt-get could not install chromium (see above)" >&2; exit 1; \
			fi; \
			rm -f "$$log"; \
			test -x /usr/bin/chromium || { echo "make browser: apt-get ran but /usr/bin/chromium is still missing" >&2; exit 1; }; \
		else \
			echo "make browser: /usr/bin/chromium is missing and apt-get cannot run here (it needs root on Debian)." >&2; \
			echo "  Install it yourself: sudo apt-get update && sudo apt-get install -y chromium" >&2; \
			exit 1; \
		fi; \
	fi

# The junit report is what .ci/run counts skips in (a skip is allowed only where its reason holds in CI, e.g. no GPU).
test: setup browser
	$(BIN)/python -m pytest -rs --junitxml=.pytest-report.xml

# Unit tests only (no dvc repro integration run).
# The curation engine measured against the decode floor (a cold repro in a fresh copy, Ray vs local, a projection):
# writes benchmarks/RESULTS.md and benchmarks/results/curation.json; about 10 minutes on 2 cores.
bench: setup
	$(BIN)/python benchmarks/bench_curation.py

test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not browser"

# JupyterLab on loopback with Jupyter's own token (printed with the URL to open): another account on a shared machine
# cannot use it without the token. LAB_PORT picks the port.
LAB_PORT ?= 8888
lab: setup
	$(BIN)/jupyter lab --allow-root --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --ServerApp.port_retries=0 --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/nbs/index.ipynb

export: $(STAMP)
	$(BIN)/nbdev-export

# Switch the parameter profile: `make profile PROFILE=paper`, then `make repro` reruns what it changes.
# It edits the one value common.profile in params.yaml (nothing else in the file changes).
PROFILE ?= embedded
profile: $(STAMP)
	$(BIN)/medgen-profile $(PROFILE)

# The executed stage reports as web pages (reports/html/, not committed).
docs: $(STAMP)
	$(BIN)/medgen-docs

clean-scratch:
	rm -rf scratch

# README.md is rendered from nbs/index.ipynb (nbdev-readme needs quarto, which is not available here).
readme: $(STAMP)
	$(BIN)/jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README --log-level WARN
