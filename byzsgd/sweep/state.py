"""A sweep's state on disk: which runs are done, the plan as launched, the results table."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from byzsgd.results import PLAN_FILE, RESULTS_FILE, read_summary, run_status
from byzsgd.sweep.plan import SWEEP_SECTION, SweepPlan, describe_settings, describe_value, get_dotted

RESULT_COLUMNS = ["test_acc", "test_loss", "diameter", "steps_per_s", "messages", "rejected"]


@dataclass
class SweepOutcome:
    plan: SweepPlan
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    results: Path | None = None


def plan_text(plan: SweepPlan, limit: int = 40) -> str:
    statuses = [run_status(plan.run_dir(r)) for r in plan.runs]
    done = statuses.count("finished")
    lines = [
        f"sweep {plan.name}: {len(plan.runs)} runs, {done} already finished, {len(plan.runs) - done} to run"
        f" -> {plan.out_dir}" + (f" ({plan.duplicates} duplicate combinations merged)" if plan.duplicates else "")
    ]
    section = plan.source.get(SWEEP_SECTION) or {}
    grid = section.get("grid") or {} if isinstance(section, dict) else {}
    for key in plan.swept_keys:
        if key not in grid:
            continue  # a variant's own key: listed with its variant below
        values = list(dict.fromkeys(describe_value(r.overrides[key]) for r in plan.runs if key in r.overrides))
        lines.append(f"  {key}: {', '.join(values)}")
    variants = section.get("variants") or [] if isinstance(section, dict) else []
    for number, variant in enumerate(v for v in variants if isinstance(v, dict)):
        own = {k: v for k, v in variant.items() if k != "label"}
        lines.append(f"  variant {variant.get('label') or number}: {describe_settings(own)}")
    for run, status in list(zip(plan.runs, statuses))[:limit]:
        lines.append(f"  {'x' if status == 'finished' else ' '} {run.run_id:<48} {status:<11} {run.config.runtime}")
    if len(plan.runs) > limit:
        lines.append(f"  ... and {len(plan.runs) - limit} more")
    return "\n".join(lines)


def write_plan(plan: SweepPlan) -> None:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    text = "# The sweep as last launched (after --set); rerun it with: byzsgd sweep <this file>\n"
    (plan.out_dir / PLAN_FILE).write_text(text + yaml.safe_dump(plan.source, sort_keys=False))


def results_rows(plan: SweepPlan) -> list[dict[str, Any]]:
    rows = []
    for run in plan.runs:
        run_dir = plan.run_dir(run)
        summary = read_summary(run_dir) or {}
        final = summary.get("final") or {}
        resolved = run.config.to_dict()
        row: dict[str, Any] = {"run_id": run.run_id, "label": run.label or ""}
        for key in plan.swept_keys:
            value = get_dotted(resolved, key)
            row[key] = describe_value(value) if value is not None else ""
        row["status"] = run_status(run_dir)
        row["step"] = final.get("step", "")
        for column in RESULT_COLUMNS:
            value = final.get(column)
            row[column] = "" if value is None else value
        row["wall_time_s"] = summary.get("wall_time_s", "")
        row["error"] = summary.get("error", "") if row["status"] != "finished" else ""
        rows.append(row)
    return rows


def write_results(plan: SweepPlan) -> Path:
    """One row per run: its id, swept keys, status and final metrics. Rewritten after every run."""
    rows = results_rows(plan)
    path = plan.out_dir / RESULTS_FILE
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as handle:
        fields = list(rows[0]) if rows else ["run_id", "status"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)  # a reader never sees half a table
    return path


def outcome_text(outcome: SweepOutcome) -> str:
    rows = results_rows(outcome.plan)
    header = ["run_id", "status", "test_acc", "diameter", "steps_per_s", "wall_time_s"]
    lines = [[str(row["run_id"])] + [fmt(row.get(h)) for h in header[1:]] for row in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for line in lines:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    for row in rows:
        if row["error"]:
            out.append(f"{row['run_id']}: {row['error'].splitlines()[-1]}")
    out.append(
        f"{len(outcome.executed)} run, {len(outcome.skipped)} skipped (finished before), "
        f"{len(outcome.failed)} failed; table: {outcome.results}; figures: byzsgd plot {outcome.plan.out_dir}"
    )
    return "\n".join(out)


def fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
