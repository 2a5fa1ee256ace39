"""Pictures of finished runs: ``byzsgd plot <sweep folder or run folders> [-o out]``.

Figures (PNG, matplotlib's Agg backend, nothing opens a window):
- ``accuracy.png``: test accuracy vs step, one panel per worker attack, one line per setting
  (seeds averaged, their min-max as a band);
- ``diameter.png``: the correct servers' diameter vs step, one panel per setting, the Gather
  steps (multiples of the run's gather period) marked; only protocols that have a gather period;
- ``final_accuracy.png``: a heatmap of final accuracy, attack x setting.

A "setting" is what tells runs apart besides the attack and the seed: the sweep variant's
label when there is one, else the config keys whose values differ between the runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzsgd import results
from byzsgd.registry import ConfigError
from byzsgd.sweep.plan import describe_value

# Keys that differ between runs without making them a different setting.
IGNORED_PREFIXES = ("name", "output_dir", "ray.", "seed", "attack.")
MAX_DIAMETER_PANELS = 12


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


def average(runs: list[RunRecord], metric: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max of a metric over runs (seeds), per step any of them reported."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for row in run.rows:
            value = row.get(metric)
            if value is not None and math.isfinite(value):
                by_step[row["step"]].append(float(value))
    steps = sorted(by_step)
    means = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    return steps, means, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]


def grouped(runs: list[RunRecord]) -> tuple[list[str], list[str], dict[tuple[str, str], list[RunRecord]]]:
    names = setting_names(runs)
    attacks = list(dict.fromkeys(run.attack for run in runs))
    settings = list(dict.fromkeys(names[run.path] for run in runs))
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[run.attack, names[run.path]].append(run)
    return attacks, settings, groups


def plot_runs(paths: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Write the figures for these runs; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    runs = find_runs(paths)
    if out_dir is None:
        out_dir = Path(paths[0]) / "plots" if len(paths) == 1 else Path("plots")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attacks, settings, groups = grouped(runs)
    written = [plot_accuracy(attacks, settings, groups, out_dir / "accuracy.png")]
    diameter = plot_diameter(attacks, settings, groups, out_dir / "diameter.png")
    if diameter is not None:
        written.append(diameter)
    if len(attacks) * len(settings) >= 2:
        written.append(plot_final_heatmap(attacks, settings, groups, out_dir / "final_accuracy.png"))
    return written


def colors_for(settings: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    return {name: palette(i % palette.N) for i, name in enumerate(settings)}


def panel_grid(count: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def plot_accuracy(
    attacks: list[str], settings: list[str], groups: dict[tuple[str, str], list[RunRecord]], path: Path
) -> Path:
    import matplotlib.pyplot as plt

    colors = colors_for(settings)
    figure, axes = panel_grid(len(attacks))
    for axis, attack in zip(axes, attacks):
        for setting in settings:
            members = groups.get((attack, setting))
            if not members:
                continue
            steps, mean, low, high = average(members, "test_acc")
            failed = any(run.summary.get("status") != "finished" for run in members)
            name = setting + (" (failed)" if failed else "")
            axis.plot(steps, mean, color=colors[setting], label=name, linestyle="--" if failed else "-")
            if len(members) > 1:
                axis.fill_between(steps, low, high, color=colors[setting], alpha=0.2, linewidth=0)
        axis.set_title(attack, fontsize=10)
        axis.set_ylim(0, 1)
        axis.set_xlabel("step")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    handles = {}
    for axis in axes:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    figure.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), frameon=False, fontsize=9
    )
    legend_inches = 0.3 * math.ceil(len(handles) / 4) + 0.1
    figure.tight_layout(rect=(0, legend_inches / figure.get_figheight(), 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def plot_diameter(
    attacks: list[str], settings: list[str], groups: dict[tuple[str, str], list[RunRecord]], path: Path
) -> Path | None:
    import matplotlib.pyplot as plt

    panels = [
        (attack, setting, groups[attack, setting])
        for attack in attacks
        for setting in settings
        if (attack, setting) in groups and groups[attack, setting][0].summary.get("gather_period")
    ][:MAX_DIAMETER_PANELS]
    if not panels:
        return None
    figure, axes = panel_grid(len(panels))
    for axis, (attack, setting, members) in zip(axes, panels):
        period = int(members[0].summary["gather_period"])
        steps, mean, low, high = average(members, "diameter")
        positive = [(s, m, lo, hi) for s, m, lo, hi in zip(steps, mean, low, high) if m > 0]
        if positive:
            xs, ys, lows, highs = map(list, zip(*positive))
            axis.plot(xs, ys, color="tab:blue", marker="." if len(xs) < 60 else None, label="diameter")
            if len(members) > 1:
                axis.fill_between(xs, [max(v, 1e-12) for v in lows], highs, color="tab:blue", alpha=0.2, linewidth=0)
            axis.set_yscale("log")
        # Gather steps: lines when they are few enough to tell apart; the diameters measured
        # right after a Gather are marked either way (with eval_every > 1 most are not measured).
        last = max(steps) if steps else 0
        gathers = range(period, last + 1, period)
        if len(gathers) <= 40:
            for k, step in enumerate(gathers):
                axis.axvline(step, color="tab:red", alpha=0.3, linewidth=0.8, label="Gather" if k == 0 else None)
        after = [(x, y) for x, y in zip(steps, mean) if x % period == 0 and x > 0 and y > 0]
        if after:
            axis.plot(*zip(*after), "o", color="tab:red", markersize=4, label="after a Gather", linestyle="none")
        axis.set_title(f"{attack} | {setting} | T={period}", fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("correct servers' diameter")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


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


def plot_final_heatmap(
    attacks: list[str], settings: list[str], groups: dict[tuple[str, str], list[RunRecord]], path: Path
) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    values = final_accuracy_table(attacks, settings, groups)
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(settings), 1.2 + 0.5 * len(attacks)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=9)
    axis.set_yticks(range(len(attacks)), attacks, fontsize=9)
    for i in range(len(attacks)):
        for j in range(len(settings)):
            value = values[i, j]
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            color = "black" if np.isnan(value) or value > 0.6 else "white"
            axis.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    axis.set_title("final test accuracy (mean over seeds)", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
