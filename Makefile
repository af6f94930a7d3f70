# One-command set-up: every target below creates .venv (if needed) and installs into it.
# torch goes in first, pinned to the CPU wheel this machine serves; the project's own
# `torch>=2.2` range is then already satisfied, so pip never pulls a multi-GB CUDA build.
# Override for a GPU machine, e.g.: make test TORCH_SPEC="torch==2.5.1"

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bora-ref-installed
EXTRAS := dev,peft,models,notebooks,docs

.PHONY: setup report test test-fast docs serve-docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: rank/parameter report on real layer shapes.
report: $(STAMP)
	$(BIN)/bora-ref report

## The test suite (unit + property tests, notebooks, docs build).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

## Core + oracle only (no real model, docs, notebooks or multi-process tests): about a minute.
FAST_TESTS := tests/test_partition.py tests/test_numpy_ref.py tests/test_torch_ref.py tests/test_layer.py \
	tests/test_sigma.py tests/test_config.py tests/test_layering.py tests/testing
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" $(FAST_TESTS)

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

serve-docs: $(STAMP)
	$(BIN)/mkdocs serve

## Benchmarks against LoRA/PEFT (docs/benchmarks.md); the full grid: make bench BENCH_ARGS=
BENCH_ARGS ?= --quick --threads 1
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) site bora-report .pytest_cache .hypothesis
