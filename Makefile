# advwm: `make demo` and `make test` work on a fresh machine (they install into .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install advwm with its pinned dependencies

demo: $(STAMP)  ## craft a watermark against StarGAN + AttGAN on the bundled demo faces (about 2 min on 2 cores)
	WANDB_MODE=offline $(PY) -m advwm.run experiment=demo

test: $(STAMP)  ## run the whole test suite
	WANDB_MODE=offline $(PY) -m pytest -q

test-fast: $(STAMP)  ## the tests without the end-to-end runs
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check advwm tests experiments

bench: $(STAMP)  ## seconds per image-condition-iteration for each victim at 256 px -> outputs/bench/
	$(PY) experiments/bench.py

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs/*/ multirun lightning_logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
