# Set-up and checks. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install when the environment has none; override for a CUDA build, e.g.
# make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck docs clean

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

clean:
	rm -rf $(VENV) demo_pairs site .mypy_cache .ruff_cache .pytest_cache
