# `make demo` and `make test` work on a fresh machine with Python 3.11 and Java 17.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

# torch goes in first as the CPU build (a local wheel on these machines), or resolving
# sentence-transformers pulls several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/thresher demo

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf thresher-demo .pytest_cache
