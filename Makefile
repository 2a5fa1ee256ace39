# Set-up on a fresh machine: `make demo`, then `make test`.
# The pinned CPU torch is installed before the package, so pip never resolves a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint bench clean mutation

$(BIN)/byzsgd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/byzsgd
	$(BIN)/byzsgd run

test: $(BIN)/byzsgd
	$(BIN)/ruff check byzsgd tests benchmarks
	RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 $(BIN)/pytest -q --durations=10

test-fast: $(BIN)/byzsgd
	$(BIN)/pytest -q -m "not slow"

# Mutation testing (slow, not part of CI): mutates the modules listed under [tool.mutmut] in
# pyproject.toml, runs the fast suite against each mutant, prints the score and the survivors.
# MUTANTS narrows the run to mutant names matching a glob, e.g. MUTANTS='byzsgd.aggregators*'.
MUTANTS ?=
mutation: $(BIN)/byzsgd
	rm -rf mutants
	RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 HYPOTHESIS_PROFILE=ci $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python tests/mutation_report.py

lint: $(BIN)/byzsgd
	$(BIN)/ruff check byzsgd tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis mutants
