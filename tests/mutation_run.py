"""`make mutation`: runs mutmut over each group of [tool.byzsgd-mutation.GROUP] in pyproject.toml.

mutmut 3 reads one [tool.mutmut] table from the pyproject.toml of its working directory, so one
test selection would serve every module: the stats pass and every surviving mutant would then run
tests that cannot judge it (a protocol test for an aggregator mutant). Each group therefore runs in
its own directory, mutants/GROUP/, holding links to byzsgd/ and tests/ and a pyproject.toml whose
[tool.mutmut] is the shared table plus the group's `only_mutate` and test selection. mutmut writes
its mutants and results under mutants/GROUP/mutants/, where tests/mutation_report.py reads them.

    python tests/mutation_run.py                      # every group
    python tests/mutation_run.py aggregators checks   # some groups
    python tests/mutation_run.py aggregators --mutants 'byzsgd.aggregators.mda*'
    python tests/mutation_run.py aggregators --fresh  # forget the previous results of the group

A second run of a group reuses its earlier results (mutmut's cache): only mutants of changed
functions, and those whose tests changed, are tried again; --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants"


def toml_value(value: object) -> str:
    # the shared table holds strings, numbers, booleans and lists of strings: JSON spells them as TOML does
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def group_pyproject(base_text: str, shared: dict, group: dict) -> str:
    """The repository's pyproject.toml (pytest settings included) up to [tool.mutmut], then the group's table."""
    head = base_text.split("\n[tool.mutmut]", 1)[0]
    table = dict(shared)
    table["only_mutate"] = group["only_mutate"]
    table["pytest_add_cli_args_test_selection"] = group["tests"]
    table.setdefault("use_git_change_detection", False)  # the group's directory is not the repository root
    lines = [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return head.rstrip() + "\n\n[tool.mutmut]\n" + "\n".join(lines) + "\n"


def prepare(name: str, base_text: str, shared: dict, group: dict, fresh: bool) -> Path:
    where = WORK / name
    if fresh and where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True, exist_ok=True)
    for entry in ("byzsgd", "tests", "experiments"):  # experiments/: configs some tests read
        link = where / entry
        if not link.is_symlink():
            link.symlink_to(ROOT / entry, target_is_directory=True)
    (where / "pyproject.toml").write_text(group_pyproject(base_text, shared, group))
    return where


def main(argv: list[str] | None = None) -> int:
    base_text = (ROOT / "pyproject.toml").read_text()
    config = tomllib.loads(base_text)["tool"]
    groups: dict[str, dict] = config["byzsgd-mutation"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"groups to run (default: all): {', '.join(groups)}")
    parser.add_argument("--mutants", nargs="*", default=[], help="mutant-name globs, e.g. 'byzsgd.aggregators.mda*'")
    parser.add_argument("--max-children", type=int, default=None, help="parallel mutants (default: CPU count)")
    parser.add_argument("--fresh", action="store_true", help="discard the group's earlier results first")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups) - set(groups))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; known: {', '.join(groups)}")
    mutmut = Path(sys.executable).with_name("mutmut")
    for name in args.groups or list(groups):
        where = prepare(name, base_text, config["mutmut"], groups[name], args.fresh)
        command = [str(mutmut), "run", *args.mutants]
        if args.max_children:
            command += ["--max-children", str(args.max_children)]
        print(f"== {name}: {' '.join(groups[name]['only_mutate'])} against {' '.join(groups[name]['tests'])}")
        # the mutated copy must be the only byzsgd the tests can import
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("HYPOTHESIS_PROFILE", "mutation")  # fewer derandomized examples (tests/conftest.py)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        status = subprocess.run(command, cwd=where, env=env).returncode
        if status != 0:
            print(f"mutmut failed in group {name} (exit {status})")
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
