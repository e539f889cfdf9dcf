# `make search` and `make test` are the two commands a fresh machine needs:
# each creates .venv and installs samtune (pinned by constraints.txt) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages search test test-fast lint bench clean-venv docs docs-serve

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Debian's slurm-wlm and munge, for tests/test_slurm.py (a one-node Slurm cluster that runs
# deploy/samtune-search.sbatch).  Installed only where slurmctld or munged is missing, apt-get
# is there and we are root (CI); elsewhere that test skips, saying why.  Idempotent.
system-packages:
	@if { command -v slurmctld || [ -x /usr/sbin/slurmctld ]; } >/dev/null && \
	    { command -v munged || [ -x /usr/sbin/munged ]; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "apt-get install slurm-wlm munge (for tests/test_slurm.py)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        slurm-wlm munge >/dev/null; \
	else echo "system-packages: no slurm-wlm/munge, and not root with apt-get: tests/test_slurm.py will skip"; fi

search: $(STAMP)
	$(BIN)/samtune search
	$(BIN)/samtune report  # the search just run (the latest), into reports/<experiment>

# two processes: the end-to-end tests (marker `slow`) in one, the unit tests in the other
test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# every module's unit tests, without the end-to-end ones
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,bench]"
	$(BIN)/python benchmarks/gpu_acceptance.py  # on the GPU, into benchmarks/RESULTS.md (no GPU: the CPU smoke run)
	$(BIN)/python benchmarks/step_overhead.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/sharpness.py
	$(BIN)/python benchmarks/hessian.py
	$(BIN)/python benchmarks/search_overhead.py

# the documentation site (mkdocs.yml): --strict fails on a broken link or anchor; the reference
# pages are generated from the code at every build (docs/gen_reference.py)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

clean-venv:
	rm -rf $(VENV)
