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

# Mutation testing (slow, not part of CI): tests/mutation_run.py runs mutmut once per group of
# [tool.byzsgd-mutation.GROUP] in pyproject.toml (the files it mutates, the tests that judge them),
# then prints each module's score and the surviving mutants. GROUPS picks groups (default: all),
# MUTANTS narrows to mutant-name globs, e.g. make mutation GROUPS=aggregators MUTANTS='byzsgd.aggregators.mda*'.
# Results are cached under mutants/GROUP/ (a re-run tries only what changed); FRESH=1 starts over;
# JOBS=N runs N mutants at once (default: one per core).
GROUPS ?=
MUTANTS ?=
FRESH ?=
JOBS ?=
mutation: $(BIN)/byzsgd
	RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 HYPOTHESIS_PROFILE=mutation $(BIN)/python tests/mutation_run.py \
		$(GROUPS) $(if $(MUTANTS),--mutants $(MUTANTS)) $(if $(FRESH),--fresh) $(if $(JOBS),--max-children $(JOBS))
	$(BIN)/python tests/mutation_report.py

lint: $(BIN)/byzsgd
	$(BIN)/ruff check byzsgd tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis mutants
