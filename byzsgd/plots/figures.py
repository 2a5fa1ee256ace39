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
their f, steps). The numbers come from :mod:`byzsgd.plots.runs`; this module only draws.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzsgd.plots.runs import (
    Grouping,
    aliasing_note,
    attack_titles,
    final_accuracy_table,
    find_runs,
    grouped,
    seed_statistics,
    shared_setting,
    write_csv,
)
from byzsgd.registry import ConfigError

MAX_DIAMETER_PANELS = 12


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
    grouping = grouped(runs)
    written = [plot_accuracy(grouping, out_dir / f"accuracy.{fmt}", style)]
    diameter = plot_diameter(grouping, out_dir / f"diameter.{fmt}", style)
    if diameter is not None:
        written.append(diameter)
    if len(grouping.attacks) * len(grouping.settings) >= 2:
        written.append(plot_final_heatmap(grouping, out_dir / f"final_accuracy.{fmt}", style))
    for note in style.notes:
        print(f"byzsgd plot: {note}", file=sys.stderr)
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


def plot_accuracy(grouping: Grouping, path: Path, style: FigureStyle) -> Path:
    attacks, settings, groups = grouping
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


def plot_diameter(grouping: Grouping, path: Path, style: FigureStyle) -> Path | None:
    attacks, settings, groups = grouping
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


def plot_final_heatmap(grouping: Grouping, path: Path, style: FigureStyle) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    attacks, settings, groups = grouping
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
