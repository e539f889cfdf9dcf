# `make search` and `make test` are the two commands a fresh machine needs:
# each creates .venv and installs samtune (pinned by constraints.txt) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install search test test-fast lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

search: $(STAMP)
	$(BIN)/samtune search
	$(BIN)/samtune report  # the search just run (the latest), into reports/<experiment>

# two processes: the end-to-end tests (marker `slow`) in one, the unit tests in the other
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# every module's unit tests, without the end-to-end ones
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,bench]"
	$(BIN)/python benchmarks/step_overhead.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/sharpness.py
	$(BIN)/python benchmarks/search_overhead.py

clean-venv:
	rm -rf $(VENV)
