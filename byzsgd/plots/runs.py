"""The numbers behind the figures: which run folders to read, which runs make one setting, and
their statistics over seeds (what ``byzsgd plot`` writes next to each figure as CSV).

A "setting" is what tells runs apart besides the attack and the seed: the sweep variant's label
when there is one, else the config keys whose values differ between the runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from byzsgd import results
from byzsgd.registry import ConfigError
from byzsgd.sweep.plan import describe_value

# Keys that differ between runs without making them a different setting.
IGNORED_PREFIXES = ("name", "output_dir", "ray.", "seed", "attack.")


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    label: str | None = None
    flat: dict[str, str] = field(default_factory=dict)

    @property
    def attack(self) -> str:
        attack = self.config.get("attack") or {}
        if attack.get("name", "none") == "none":
            return "no attack"
        return describe_value({k: v for k, v in attack.items() if k in ("name", "params", "count")})

    @property
    def final_accuracy(self) -> float:
        """NaN unless the run finished: a failed run's last accuracy is from an earlier step."""
        if self.summary.get("status") != "finished":
            return float("nan")
        value = (self.summary.get("final") or {}).get("test_acc")
        return float("nan") if value is None else float(value)


def find_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Every run folder given, or inside a given folder (one level down: a sweep folder)."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{path}: no such folder")
        if (path / results.CONFIG_FILE).is_file():
            candidates = [path]
        elif (path / results.RESULTS_FILE).is_file():  # a sweep: its current runs, not those of older versions of it
            with (path / results.RESULTS_FILE).open(newline="") as handle:
                candidates = [path / row["run_id"] for row in csv.DictReader(handle)]
        else:
            candidates = sorted(p for p in path.iterdir() if p.is_dir())
        for run_dir in candidates:
            record = load_run(run_dir)
            if record is not None:
                runs.append(record)
    if not runs:
        files = f"{results.CONFIG_FILE} and {results.METRICS_FILE}"
        raise ConfigError(f"no run folders ({files}) in {', '.join(map(str, paths))}")
    return runs


def load_run(run_dir: Path) -> RunRecord | None:
    if not results.is_run_dir(run_dir):
        return None
    config = results.read_config(run_dir)
    label = results.read_run_info(run_dir).get("label")
    rows, summary = results.read_metrics(run_dir), results.read_summary(run_dir) or {}
    return RunRecord(run_dir, config, rows, summary, label, flatten(config))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def short_key(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def setting_names(runs: list[RunRecord]) -> dict[Path, str]:
    """Each run's setting: its label plus the keys that still differ among runs sharing it."""
    groups: dict[str | None, list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    names = {}
    for label, members in groups.items():
        keys = sorted({k for run in members for k in run.flat})
        varying = [
            k for k in keys if not k.startswith(IGNORED_PREFIXES) and len({run.flat.get(k) for run in members}) > 1
        ]
        for run in members:
            parts = [label] if label else []
            parts += [f"{short_key(k)}={json.loads(run.flat[k]) if k in run.flat else '-'}" for k in varying]
            names[run.path] = ", ".join(parts) or run.config.get("protocol", "run")
    return names


def values_by_step(runs: list[RunRecord], metric: str) -> dict[int, list[float]]:
    """The finite values of a metric, per step, over runs (seeds)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for row in run.rows:
            value = row.get(metric)
            if value is not None and math.isfinite(value):
                by_step[row["step"]].append(float(value))
    return by_step


def average(runs: list[RunRecord], metric: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max of a metric over runs (seeds), per step any of them reported."""
    table = seed_statistics(runs, metric)
    return [r["step"] for r in table], [r["mean"] for r in table], [r["min"] for r in table], [r["max"] for r in table]


def seed_statistics(runs: list[RunRecord], metric: str) -> list[dict[str, float]]:
    """Per step any run reported: mean, standard deviation (ddof=1; 0 for one seed), seeds, min, max."""
    by_step = values_by_step(runs, metric)
    table = []
    for step in sorted(by_step):
        values = by_step[step]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        table.append(
            {"step": step, "mean": mean, "std": std, "seeds": len(values), "min": min(values), "max": max(values)}
        )
    return table


ATTACK_NAMES = {
    "signflip": "sign flip",
    "gaussian": "Gaussian noise",
    "zero": "zero vector",
    "nan": "non-finite values",
    "alie": "ALIE",
    "ipm": "IPM",
    "mimic": "mimic",
    "optimal-alie": "optimal ALIE",
    "optimal-ipm": "optimal IPM",
    "labelflip": "label flip",
    "stale": "stale models",
    "equivocation": "equivocation",
    "silent": "silent",
    "crash": "crash",
    "drop": "dropped messages",
    "slow": "stragglers",
}


def attack_title(attack: dict[str, Any] | None) -> str:
    """A worker attack as a reader says it: ``sign flip (scale 4)``, ``ALIE``, ``no attack``."""
    attack = attack or {}
    name = attack.get("name", "none")
    if name == "none":
        return "no attack"
    params = dict(attack.get("params") or {})
    if attack.get("count") is not None:
        params["count"] = attack["count"]
    inner = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
    title = ATTACK_NAMES.get(name, name)
    return f"{title} ({inner})" if inner else title


def shared_setting(runs: list[RunRecord]) -> str:
    """What every run has in common, for a figure's subtitle; a field that differs is left out."""

    def common(*keys: str) -> Any:
        values = set()
        for run in runs:
            node: Any = run.config
            for key in keys:
                node = node.get(key) if isinstance(node, dict) else None
            values.add(json.dumps(node, default=str))
        return json.loads(values.pop()) if len(values) == 1 else None

    parts = []
    dataset, model = common("data", "dataset"), common("model", "name")
    if dataset:
        parts.append(f"{dataset}, {model}" if model else str(dataset))
    n_ps, f_ps, n_w, f_w = (common("nodes", k) for k in ("n_ps", "f_ps", "n_w", "f_w"))
    if n_ps is not None and f_ps is not None:
        parts.append(f"{n_ps} server{'s' if n_ps != 1 else ''} (f={f_ps})")
    if n_w is not None and f_w is not None:
        parts.append(f"{n_w} workers (f={f_w})")
    if common("steps") is not None:
        parts.append(f"{common('steps')} steps")
    seeds = len({run.config.get("seed") for run in runs})
    parts.append(f"{seeds} seed{'s' if seeds != 1 else ''}")
    return ", ".join(parts)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


class Grouping(NamedTuple):
    """Runs by (attack, setting), with the attacks and settings in the order they first appear."""

    attacks: list[str]
    settings: list[str]
    groups: dict[tuple[str, str], list[RunRecord]]


def grouped(runs: list[RunRecord]) -> Grouping:
    names = setting_names(runs)
    attacks = list(dict.fromkeys(run.attack for run in runs))
    settings = list(dict.fromkeys(names[run.path] for run in runs))
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[run.attack, names[run.path]].append(run)
    return Grouping(attacks, settings, groups)


def attack_titles(groups: dict[tuple[str, str], list[RunRecord]]) -> dict[str, str]:
    return {attack: attack_title(members[0].config.get("attack")) for (attack, _), members in groups.items()}


def aliasing_note(members: list[RunRecord], period: int) -> str | None:
    """Why a sampled diameter curve may not show the Gather saw-tooth."""
    every = members[0].config.get("eval_every")
    if isinstance(every, int) and every > 1 and period % every != 0:
        return (
            f"eval_every={every} does not divide the gather period T={period}: the diameter is sampled at "
            f"different phases of the saw-tooth (aliased); rerun with eval_every=1 to record every step"
        )
    return None


def final_accuracy_table(
    attacks: list[str], settings: list[str], groups: dict[tuple[str, str], list[RunRecord]]
) -> Any:
    """(attacks, settings) array of final accuracy averaged over seeds; NaN where no run finished."""
    import numpy as np

    values = np.full((len(attacks), len(settings)), np.nan)
    for i, attack in enumerate(attacks):
        for j, setting in enumerate(settings):
            finals = [run.final_accuracy for run in groups.get((attack, setting), [])]
            finals = [v for v in finals if math.isfinite(v)]
            if finals:
                values[i, j] = sum(finals) / len(finals)
    return values
