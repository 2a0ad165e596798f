# Quick start (fresh machine):  make serve   |   make test
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: serve demo test lint install test-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/voicelog serve

# The embedded defaults with a recorded call, a local SAW and a printed tour; Ctrl-C stops it.
demo: $(STAMP)
	$(VENV)/bin/voicelog demo

test-deps: $(STAMP)
	bash ops/dev/install-test-deps.sh

test: test-deps
	$(VENV)/bin/ruff check app tests ops migrations
	$(VENV)/bin/mypy app
	$(VENV)/bin/pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check app tests ops migrations
	$(VENV)/bin/mypy app
