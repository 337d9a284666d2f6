# The README's two commands: `make run` (install, then run the nightly job on the built-in
# default) and `make test` (install, then run the test suite). Both start from a bare Python.
# The nightly job's environment gets the runtime dependencies only; the test extra (moto, Flask,
# pytest) is added by `make test`, never by `make run`.
PYTHON ?= python3
VENV ?= .venv
# A CPU build by default; e.g. TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
TORCH_SPEC ?= torch==2.13.0
JOB ?= deployments/jobs/penguins-vae.yaml
OUTPUT ?= ./output
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install run test lint clean

install: $(STAMP)

# torch first and on its own, so no other package can pull a (multi-GB) CUDA build of it
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(TEST_STAMP)

run: $(STAMP)
	$(BIN)/genai-pipeline run $(JOB) --output $(OUTPUT)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt ruff
	$(BIN)/ruff check genai_pipeline flows tests benchmarks

clean:
	rm -rf $(VENV) output workspace .pytest_cache
