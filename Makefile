# `make demo` and `make test` work on a fresh machine with Python 3.11 and Java 17.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test test-fast bench clean chromium

setup: $(VENV)/.installed

# `thresher warm` compiles the numba kernels for this CPU once (about 30 s), instead of every
# process of a first run compiling them.
# torch goes in first as the CPU build (a local wheel on these machines), or resolving
# sentence-transformers pulls several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/thresher warm
	touch $@

demo: setup
	$(BIN)/thresher demo

# Two pytest workers: the suite waits on JVM starts, servers and subprocesses about half its
# time, so on 2 cores two workers keep both busy (README, Layout).
test: setup chromium
	$(BIN)/python -m pytest -q -n 2 --dist worksteal tests

# Unit tests only (no Spark session, no server): under a minute.
test-fast: setup
	$(BIN)/python -m pytest -q -m unit tests

# The report test renders HTML in headless Chromium. On Debian as root (CI) it is installed
# here; elsewhere the test skips when /usr/bin/chromium is absent.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (apt-get) for the report test"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
			|| echo "chromium could not be installed; the report screenshot test will skip"; \
	fi

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf thresher-demo .pytest_cache
