"""Prints the score of the last `mutmut run` (see `make mutation`) and its surviving mutants.

Score = killed / (mutants tried - the ones listed as equivalent in tests/mutation_equivalent.txt),
where "killed" includes timeouts. A line of that file is `mutant-name  # why it is equivalent`.
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
        if name.strip():
            listed[name.strip()] = why.strip()
    return listed


def main() -> int:
    results: dict[str, int | None] = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    tried = {name: code for name, code in results.items() if code not in NOT_RUN}
    if not tried:
        print("no mutation results: run `make mutation` first")
        return 1
    equivalent = equivalent_mutants(Path(__file__).with_name("mutation_equivalent.txt"))
    survivors = sorted(n for n, code in tried.items() if code not in KILLED and n not in equivalent)
    killed = sum(code in KILLED for code in tried.values())
    counted = len(tried) - sum(n in equivalent for n in tried if tried[n] not in KILLED)
    modules = sorted({n.rsplit(".", 1)[0].split(".x_")[0] for n in tried})
    print(f"mutants tried: {len(tried)} (of {len(results)} generated) in {', '.join(modules)}")
    listed = len(tried) - killed - len(survivors)
    print(f"killed: {killed}; listed as equivalent: {listed}; surviving: {len(survivors)}")
    print(f"score: {100.0 * killed / max(counted, 1):.1f}% of non-equivalent mutants killed")
    for name in survivors:
        print(f"  survived ({tried[name]}): {name}   (mutmut show {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
