# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch is pinned to the local CPU wheel; an unpinned torch would pull GBs of CUDA packages.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

.PHONY: install test demo bench clean check-java browser-deps help

help:
	@echo "make demo    run the whole comparison offline on the built-in synthetic data"
	@echo "make test    run the test suite"
	@echo "make bench   run the performance benchmarks (writes reports/performance.md)"
	@echo "make install create $(VENV) and install bench with its test extras"

# Idempotent: the stamp depends on pyproject.toml, so a second `make install` is a no-op.
install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory check-java
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "bench: Java (>= 8) is needed for PTB tokenization and METEOR; install it with 'apt-get install -y default-jre-headless' (Debian/Ubuntu) or 'brew install openjdk'."; \
	  exit 1; }

test: install
	@$(MAKE) --no-print-directory browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The HTML explorer's browser tests drive Debian's chromium + chromium-driver. Installed when
# missing and apt-get is usable as root; never fails the test run (the tests then skip, naming them).
browser-deps:
	@if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench: installing chromium and chromium-driver for the browser tests"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
	      || echo "bench: could not install chromium/chromium-driver; the browser tests will skip"; \
	  else \
	    echo "bench: chromium/chromium-driver missing (apt-get install -y chromium chromium-driver); the browser tests will skip"; \
	  fi; \
	fi

demo: install
	$(BIN)/bench demo

bench: install
	@$(MAKE) --no-print-directory browser-deps
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs .cache reports/demo* build *.egg-info
