"""Experiment sweeps: one YAML file, many runs, resumable.

A sweep file is an ordinary experiment config (the base every run starts from) plus a
``sweep:`` section::

    name: attacks
    runtime: local
    steps: 200
    sweep:
      grid:                          # cartesian product over dotted keys
        attack: [{name: signflip, params: {scale: 4.0}}, {name: gaussian}]
        seed: [0, 1]
      variants:                      # explicit settings, each crossed with the grid
        - {label: byzsgd}
        - {label: ps-mean, protocol: ps, aggregator.name: mean}

Each run is its base, then its grid point, then its variant applied on top (so a variant can
pin a key the grid sweeps; runs that end up identical are run once). A value that is a
mapping replaces the whole section (``attack: {name: alie}`` drops the base's attack params).

A run is named by a hash of its resolved config, leaving out what cannot change its result
(see UNHASHED), and lives in ``<sweep dir>/<short name>-<hash>``. Rerunning a sweep skips the
runs whose ``summary.json`` says finished and reruns the failed or interrupted ones. A run
that fails is recorded (its summary, ``traceback.txt`` and the results table) and the sweep
goes on. The code's version is not part of the hash: delete a run's folder to recompute it.
"""

from byzsgd.results import PLAN_FILE, RESULTS_FILE, RUN_FILES, RUN_INFO_FILE, TRACEBACK_FILE, read_summary, run_status
from byzsgd.sweep.execute import execute_run, run_sweep
from byzsgd.sweep.plan import (
    SWEEP_SECTION,
    UNHASHED,
    PlannedRun,
    SweepPlan,
    config_hash,
    describe_settings,
    describe_value,
    expand_sweep,
    get_dotted,
    load_sweep,
    short_name,
)
from byzsgd.sweep.state import SweepOutcome, outcome_text, plan_text, results_rows, write_plan, write_results

__all__ = [
    "PLAN_FILE",
    "RESULTS_FILE",
    "RUN_FILES",
    "RUN_INFO_FILE",
    "SWEEP_SECTION",
    "TRACEBACK_FILE",
    "UNHASHED",
    "PlannedRun",
    "SweepOutcome",
    "SweepPlan",
    "config_hash",
    "describe_settings",
    "describe_value",
    "execute_run",
    "expand_sweep",
    "get_dotted",
    "load_sweep",
    "outcome_text",
    "plan_text",
    "read_summary",
    "results_rows",
    "run_status",
    "run_sweep",
    "short_name",
    "write_plan",
    "write_results",
]
