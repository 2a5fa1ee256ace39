"""Pictures of finished runs: ``byzsgd plot <sweep folder or run folders> [-o out] [--format pdf]``.

Figures (matplotlib's Agg backend, nothing opens a window), each with a CSV of the numbers it
draws next to it (same name, ``.csv``):
- ``accuracy``: test accuracy vs step, one panel per worker attack, one line per setting: the
  mean over seeds with a band of one standard deviation either side (the seed count is in the
  legend);
- ``diameter``: the correct servers' diameter vs step, one panel per setting, the Gather
  steps (multiples of the run's gather period) marked; only protocols that have a gather period.
  A diameter of exactly 0 (identical models) is drawn on the linear part of a symlog axis. When
  ``eval_every`` does not divide the period the sampled saw-tooth is aliased: the panel says
  so (rerun with ``eval_every: 1`` to record every step);
- ``final_accuracy``: a heatmap of final accuracy (mean over finished seeds), attack x setting.

Every figure's subtitle states what the runs share (dataset, model, servers and workers with
their f, steps). A "setting" is what tells runs apart besides the attack and the seed: the sweep
variant's label when there is one, else the config keys whose values differ between the runs.
"""

from __future__ import annotations

import csv
import json
import math
import sys
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


def seed_statistics(runs: list[RunRecord], metric: str) -> list[dict[str, float]]:
    """Per step any run reported: mean, standard deviation (ddof=1; 0 for one seed), seeds, min, max."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for row in run.rows:
            value = row.get(metric)
            if value is not None and math.isfinite(value):
                by_step[row["step"]].append(float(value))
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


def grouped(runs: list[RunRecord]) -> tuple[list[str], list[str], dict[tuple[str, str], list[RunRecord]]]:
    names = setting_names(runs)
    attacks = list(dict.fromkeys(run.attack for run in runs))
    settings = list(dict.fromkeys(names[run.path] for run in runs))
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[run.attack, names[run.path]].append(run)
    return attacks, settings, groups


@dataclass
class FigureStyle:
    """How figures are written: format (png, pdf, svg), PNG resolution, the shared subtitle."""

    fmt: str = "png"
    dpi: int = 150
    subtitle: str = ""
    notes: list[str] = field(default_factory=list)  # warnings plot_runs reports (e.g. aliasing)


def plot_runs(
    paths: list[str | Path], out_dir: str | Path | None = None, fmt: str = "png", dpi: int = 150
) -> list[Path]:
    """Write the figures for these runs, each with a CSV of its data; returns the figure paths."""
    import matplotlib

    matplotlib.use("Agg")
    if fmt not in ("png", "pdf", "svg"):
        raise ConfigError(f"--format {fmt}: expected png, pdf or svg")
    runs = find_runs(paths)
    if out_dir is None:
        out_dir = Path(paths[0]) / "plots" if len(paths) == 1 else Path("plots")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    style = FigureStyle(fmt, dpi, shared_setting(runs))
    attacks, settings, groups = grouped(runs)
    written = [plot_accuracy(attacks, settings, groups, out_dir / f"accuracy.{fmt}", style)]
    diameter = plot_diameter(attacks, settings, groups, out_dir / f"diameter.{fmt}", style)
    if diameter is not None:
        written.append(diameter)
    if len(attacks) * len(settings) >= 2:
        written.append(plot_final_heatmap(attacks, settings, groups, out_dir / f"final_accuracy.{fmt}", style))
    for note in style.notes:
        print(f"byzsgd plot: {note}", file=sys.stderr)
    return written


def attack_titles(groups: dict[tuple[str, str], list[RunRecord]]) -> dict[str, str]:
    return {attack: attack_title(members[0].config.get("attack")) for (attack, _), members in groups.items()}


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


def finish_figure(
    figure: Any, axes: list[Any], title: str, style: FigureStyle, path: Path, legend: bool = True
) -> None:
    """Title and subtitle on top, one legend for all panels below them (never over data), save."""
    import matplotlib.pyplot as plt

    handles: dict[str, Any] = {}
    if legend:
        for axis in axes:
            for handle, name in zip(*axis.get_legend_handles_labels()):
                handles.setdefault(name, handle)
    columns = min(4, max(len(handles), 1))
    legend_inches = (0.28 * math.ceil(len(handles) / columns) + 0.15) if handles else 0.0
    top_inches = 0.6
    figure.set_figheight(figure.get_figheight() + legend_inches + top_inches)  # the panels keep their size
    height = figure.get_figheight()
    if handles:
        figure.legend(
            list(handles.values()), list(handles), loc="lower center", ncol=columns, frameon=False, fontsize=9
        )
    figure.suptitle(f"{title}\n{style.subtitle}", fontsize=10)
    figure.tight_layout(rect=(0, legend_inches / height, 1, 1))  # tight_layout makes room for the suptitle
    save(figure, path, style)
    plt.close(figure)


def save(figure: Any, path: Path, style: FigureStyle) -> None:
    options: dict[str, Any] = {"dpi": style.dpi} if style.fmt == "png" else {}
    if style.fmt == "pdf":
        options["metadata"] = {"Creator": "byzsgd plot", "CreationDate": None}  # reproducible bytes
    figure.savefig(path, format=style.fmt, **options)


def plot_accuracy(
    attacks: list[str],
    settings: list[str],
    groups: dict[tuple[str, str], list[RunRecord]],
    path: Path,
    style: FigureStyle | None = None,
) -> Path:
    style = style or FigureStyle()
    colors = colors_for(settings)
    titles = attack_titles(groups)
    figure, axes = panel_grid(len(attacks))
    data = []
    for axis, attack in zip(axes, attacks):
        for setting in settings:
            members = groups.get((attack, setting))
            if not members:
                continue
            table = seed_statistics(members, "test_acc")
            data += [{"attack": titles[attack], "setting": setting, **row} for row in table]
            failed = any(run.summary.get("status") != "finished" for run in members)
            seeds = len(members)
            name = f"{setting} ({seeds} seed{'s' if seeds != 1 else ''})" + (" (failed)" if failed else "")
            steps = [row["step"] for row in table]
            mean = [row["mean"] for row in table]
            axis.plot(steps, mean, color=colors[setting], label=name, linestyle="--" if failed else "-")
            if seeds > 1:
                low = [row["mean"] - row["std"] for row in table]
                high = [row["mean"] + row["std"] for row in table]
                axis.fill_between(steps, low, high, color=colors[setting], alpha=0.2, linewidth=0)
        axis.set_title(titles[attack], fontsize=10)
        axis.set_ylim(0, 1)
        axis.set_xlabel("step")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    title = "Test accuracy of the correct servers (mean over seeds, band: ±1 std)"
    finish_figure(figure, axes, title, style, path)
    write_csv(path.with_suffix(".csv"), data)
    return path


def aliasing_note(members: list[RunRecord], period: int) -> str | None:
    """Why a sampled diameter curve may not show the Gather saw-tooth."""
    every = members[0].config.get("eval_every")
    if isinstance(every, int) and every > 1 and period % every != 0:
        return (
            f"eval_every={every} does not divide the gather period T={period}: the diameter is sampled at "
            f"different phases of the saw-tooth (aliased); rerun with eval_every=1 to record every step"
        )
    return None


def plot_diameter(
    attacks: list[str],
    settings: list[str],
    groups: dict[tuple[str, str], list[RunRecord]],
    path: Path,
    style: FigureStyle | None = None,
) -> Path | None:
    style = style or FigureStyle()
    titles = attack_titles(groups)
    panels = [
        (attack, setting, groups[attack, setting])
        for attack in attacks
        for setting in settings
        if (attack, setting) in groups and groups[attack, setting][0].summary.get("gather_period")
    ][:MAX_DIAMETER_PANELS]
    if not panels:
        return None
    figure, axes = panel_grid(len(panels))
    data = []
    for axis, (attack, setting, members) in zip(axes, panels):
        period = int(members[0].summary["gather_period"])
        table = seed_statistics(members, "diameter")
        data += [{"attack": titles[attack], "setting": setting, "gather_period": period, **row} for row in table]
        steps = [row["step"] for row in table]
        mean = [row["mean"] for row in table]
        if steps:
            axis.plot(steps, mean, color="tab:blue", marker="." if len(steps) < 60 else None, label="diameter (mean)")
            if len(members) > 1:
                low = [max(row["mean"] - row["std"], 0.0) for row in table]
                high = [row["mean"] + row["std"] for row in table]
                axis.fill_between(steps, low, high, color="tab:blue", alpha=0.2, linewidth=0, label="±1 std")
            positive = [v for v in mean if v > 0]
            # symlog: logarithmic above the smallest positive diameter, linear below it, so a
            # diameter of exactly 0 (identical models) stays on the axis instead of vanishing.
            axis.set_yscale("symlog", linthresh=min(positive) if positive else 1e-6)
            axis.set_ylim(bottom=0)
        last = max(steps) if steps else 0
        gathers = range(period, last + 1, period)
        if len(gathers) <= 40:
            for k, step in enumerate(gathers):
                axis.axvline(step, color="tab:red", alpha=0.3, linewidth=0.8, label="Gather step" if k == 0 else None)
        after = [(x, y) for x, y in zip(steps, mean) if x % period == 0 and x > 0]
        if after:
            axis.plot(
                *zip(*after), "o", color="tab:red", markersize=4, label="measured after a Gather", linestyle="none"
            )
        note = aliasing_note(members, period)
        if note:
            if note not in style.notes:
                style.notes.append(note)
        aliased = " (aliased: eval_every does not divide T)" if note else ""
        axis.set_title(f"{titles[attack]} | {setting} | T={period}{aliased}", fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("correct servers' diameter")
        axis.grid(alpha=0.3, which="both")
    finish_figure(figure, axes, "Diameter of the correct servers' models (largest pairwise L2 distance)", style, path)
    write_csv(path.with_suffix(".csv"), data)
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
    attacks: list[str],
    settings: list[str],
    groups: dict[tuple[str, str], list[RunRecord]],
    path: Path,
    style: FigureStyle | None = None,
) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    style = style or FigureStyle()
    titles = attack_titles(groups)
    values = final_accuracy_table(attacks, settings, groups)
    figure, axis = plt.subplots(figsize=(3.2 + 1.3 * len(settings), 1.8 + 0.5 * len(attacks)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=9)
    axis.set_yticks(range(len(attacks)), [titles[a] for a in attacks], fontsize=9)
    data = []
    for i, attack in enumerate(attacks):
        for j, setting in enumerate(settings):
            value = values[i, j]
            finished = [run for run in groups.get((attack, setting), []) if math.isfinite(run.final_accuracy)]
            data.append(
                {
                    "attack": titles[attack],
                    "setting": setting,
                    "final_test_acc": "" if np.isnan(value) else float(value),
                    "finished_seeds": len(finished),
                }
            )
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            color = "black" if np.isnan(value) or value > 0.6 else "white"
            axis.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    figure.colorbar(image, ax=axis, fraction=0.04)
    finish_figure(figure, [axis], "Final test accuracy (mean over finished seeds)", style, path, legend=False)
    write_csv(path.with_suffix(".csv"), data)
    return path
