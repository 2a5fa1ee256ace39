"""Prints the score of the last `make mutation` per module, and the surviving mutants.

Score = killed / (mutants tried - the ones listed in tests/mutation_equivalent.txt), where "killed"
includes timeouts. A line of that file is `mutant-name  # why it is equivalent`, or
`[cuda] mutant-name  # why` / `[import] mutant-name  # why` for mutants that are not equivalent
but that no CPU run can judge (device placement; code run at import, before mutmut switches a
mutant on); those are left out of the score too, and counted apart.
Run from the repository root, after `mutmut run`; exits 1 when nothing was run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # mutmut's exit codes for killed, timeout, type-checked
NOT_RUN = {None, 34}  # not checked, skipped


def equivalent_mutants(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    listed = {}
    for line in path.read_text().splitlines():
        name, _, why = line.partition("#")
        name = name.strip()
        if name.startswith("["):  # [cuda], [import]: not equivalent, but no CPU test run can judge them
            tag, _, name = name.partition("]")
            why = f"{tag}] {why.strip()}"
        if name.strip():
            listed[name.strip()] = why.strip()
    return listed


def score_line(label: str, codes: dict[str, int], equivalent: dict[str, str]) -> str:
    killed = sum(code in KILLED for code in codes.values())
    listed = sum(name in equivalent for name, code in codes.items() if code not in KILLED)
    counted = len(codes) - listed
    return (
        f"{label}: {killed} killed / {counted} non-equivalent tried = {100.0 * killed / max(counted, 1):.1f}%"
        f"  ({len(codes)} tried, {listed} equivalent, {counted - killed} surviving)"
    )


def main() -> int:
    results: dict[str, int | None] = {}
    # one mutants/ tree per group of tests/mutation_run.py (a plain `mutmut run` leaves one at mutants/)
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    tried = {name: code for name, code in results.items() if code not in NOT_RUN}
    if not tried:
        print("no mutation results: run `make mutation` first")
        return 1
    equivalent = equivalent_mutants(Path(__file__).with_name("mutation_equivalent.txt"))
    by_module: dict[str, dict[str, int]] = {}
    for name, code in tried.items():
        by_module.setdefault(name.rsplit(".", 1)[0], {})[name] = code
    untried = len(results) - len(tried)
    print(f"mutants tried: {len(tried)} of {len(results)} generated ({untried} not run)")
    for module in sorted(by_module):
        print("  " + score_line(module, by_module[module], equivalent))
    print(score_line("total", tried, equivalent))
    unjudged = sorted(n for n in tried if n in equivalent and equivalent[n].startswith("["))
    if unjudged:
        print(f"of the listed, {len(unjudged)} are not equivalent but cannot be judged on CPU ([cuda], [import])")
    stale = sorted(set(equivalent) - set(results))
    if stale:
        print(f"{len(stale)} mutants listed as equivalent were not generated (renamed?): {', '.join(stale[:5])}")
    for name in sorted(n for n, code in tried.items() if code not in KILLED and n not in equivalent):
        print(f"  survived ({tried[name]}): {name}   (mutmut show {name}, in mutants/GROUP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
