# Set-up and checks. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install when the environment has none; override for a CUDA build, e.g.
# make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-min lint typecheck docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e ".[dev]"
	touch $@

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e ".[docs]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/povidgen build --demo --out demo_pairs --seed 0 --overwrite
	$(BIN)/povidgen preview demo_pairs --out demo_pairs/preview.png

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The documentation site (mkdocs.yml, pages in docs/) into site/; any warning fails the build.
# NO_MKDOCS_2_WARNING silences Material's notice about MkDocs 2.0, which is not a build warning.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# The docs extra too, so that tests/test_docs_site.py builds the site instead of skipping.
test: lint typecheck $(VENV)/.installed-docs
	$(BIN)/pytest

# The fast tests against the oldest versions pyproject.toml allows: a fresh $(VENV_MIN) with the
# core dependencies, every user extra and the build system pinned at their lower bounds by
# tools/min_constraints.py. povidgen is first built by the minimum setuptools (no build
# isolation, which would fetch the newest), then installed with the pinned dependencies and the
# test runners. TRL (the dev extra's parity reference) is left out: trl>=1.16 needs
# datasets>=4.7, and its tests skip without it. torch is the exception to the pins: only
# torch==2.13.0 can be installed here, so the declared torch lower bound is not tested.
# Not part of `make test` or CI: it downloads old releases and takes a while.
VENV_MIN ?= .venv-min
MIN_EXTRAS := openai,anthropic,train,eval,local,ray
test-min:
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(PYTHON) tools/min_constraints.py --skip torch > $(VENV_MIN)/minimum.txt
	grep -v '^setuptools==' $(VENV_MIN)/minimum.txt > $(VENV_MIN)/runtime.txt
	$(VENV_MIN)/bin/pip install torch==2.13.0
	$(VENV_MIN)/bin/pip install -c $(VENV_MIN)/minimum.txt setuptools
	$(VENV_MIN)/bin/pip install --no-build-isolation --no-deps -e .
	$(VENV_MIN)/bin/pip install -c $(VENV_MIN)/runtime.txt -e ".[$(MIN_EXTRAS)]" pytest hypothesis aiohttp
	$(VENV_MIN)/bin/pip freeze > $(VENV_MIN)/installed.txt
	HF_HUB_OFFLINE=1 $(VENV_MIN)/bin/pytest -m "not slow" -p no:cacheprovider

clean:
	rm -rf $(VENV) $(VENV_MIN) demo_pairs site .mypy_cache .ruff_cache .pytest_cache
