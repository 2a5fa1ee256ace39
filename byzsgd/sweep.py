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

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import multiprocessing
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from byzsgd.config import (
    ExperimentConfig,
    apply_override,
    config_from_dict,
    default_config_dict,
    read_yaml_mapping,
    set_dotted,
)
from byzsgd.registry import ConfigError
from byzsgd.storage import resolve_output

SWEEP_SECTION = "sweep"
RESULTS_FILE = "results.csv"
PLAN_FILE = "sweep.yaml"
RUN_INFO_FILE = "sweep_run.json"
TRACEBACK_FILE = "traceback.txt"
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", TRACEBACK_FILE, RUN_INFO_FILE)
# Where a run is written, what it is called and how it reaches Ray do not change its result,
# so a sweep resumed on a cluster finds the runs it made on a laptop.
UNHASHED = ("name", "output_dir", "ray")
NOT_STARTED = "not started"  # what a queued run returns once the sweep is stopping
RESULT_COLUMNS = ["test_acc", "test_loss", "diameter", "steps_per_s", "messages", "rejected"]


@dataclass
class PlannedRun:
    run_id: str  # its folder name: <short name>-<hash>
    digest: str
    label: str | None
    overrides: dict[str, Any]  # the swept dotted keys this run sets (grid point, then variant)
    config: ExperimentConfig


@dataclass
class SweepPlan:
    name: str
    out_dir: Path
    runs: list[PlannedRun]
    swept_keys: list[str]  # grid keys then variant keys, in file order
    duplicates: int = 0  # grid x variant combinations that resolved to an already planned run
    source: dict[str, Any] = field(default_factory=dict)  # the sweep file after --set

    def run_dir(self, run: PlannedRun) -> Path:
        return self.out_dir / run.run_id


# --- planning -----------------------------------------------------------------------------


def load_sweep(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), out_dir: str | Path | None = None
) -> SweepPlan:
    """Read a sweep file, layer its keys over the embedded default (as ``byzsgd run`` does with an
    experiment file), apply ``key=value`` overrides to that base, and expand it."""
    return expand_sweep({**default_config_dict(), **read_yaml_mapping(path, "sweep file")}, overrides, out_dir)


def expand_sweep(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), out_dir: str | Path | None = None
) -> SweepPlan:
    """Every run of a sweep, validated before anything runs: a bad key fails the whole plan."""
    data = copy.deepcopy(data)
    # --set applies to the base, so to every run (the grid and variants override it), or edits
    # the sweep itself: --set sweep.grid.seed=[0] for a quick look.
    for override in overrides:
        apply_override(data, override)
    base = copy.deepcopy(data)
    section = base.pop(SWEEP_SECTION, None) or {}
    grid, variants = parse_section(section)
    # The base need not be a valid experiment by itself (variants may complete it): only the
    # runs are validated.
    name = base.get("name", ExperimentConfig.name)
    output_dir = base.get("output_dir", ExperimentConfig.output_dir)
    for key, value in (("name", name), ("output_dir", output_dir)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    out_dir = resolve_output(out_dir if out_dir is not None else Path(output_dir) / name)

    swept = list(grid) + [k for v in variants for k in v if k != "label"]
    swept_keys = list(dict.fromkeys(swept))
    runs: dict[str, PlannedRun] = {}
    duplicates = 0
    for variant in variants:
        label = variant.get("label")
        for point in itertools.product(*grid.values()):
            settings = dict(zip(grid, point))
            settings.update({k: v for k, v in variant.items() if k != "label"})
            short = short_name(label, dict(zip(grid, point)))
            run_data = copy.deepcopy(base)
            for key, value in settings.items():
                try:
                    set_dotted(run_data, key, copy.deepcopy(value))
                except ConfigError as error:
                    raise ConfigError(f"sweep key {key!r}: {error}") from None
            run_data["name"] = short
            run_data["output_dir"] = str(out_dir)
            config = resolve(run_data, f"sweep run {short!r} ({describe_settings(settings)})")
            digest = config_hash(config)
            if digest in runs:
                duplicates += 1
                continue
            runs[digest] = PlannedRun(f"{short}-{digest}", digest, label, settings, config)
    return SweepPlan(name, Path(out_dir), list(runs.values()), swept_keys, duplicates, data)


def parse_section(section: Any) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    if not isinstance(section, dict):
        raise ConfigError(f"sweep: expected a mapping with grid and/or variants, got {section!r}")
    unknown = [k for k in section if k not in ("grid", "variants")]
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}: unknown key (known: grid, variants)")
    grid = section.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep.grid: expected a mapping of dotted keys to lists, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep.grid: keys must be dotted config keys, got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}: expected a non-empty list of values, got {values!r} (write [value])")
    variants = section.get("variants")
    if variants is None:
        variants = [{}]
    if not isinstance(variants, list) or not variants:
        raise ConfigError(f"sweep.variants: expected a non-empty list of mappings, got {variants!r}")
    labels = []
    for i, variant in enumerate(variants):
        if not isinstance(variant, dict):
            raise ConfigError(f"sweep.variants[{i}]: expected a mapping of dotted keys to values, got {variant!r}")
        label = variant.get("label")
        if label is not None:
            if not isinstance(label, str) or not label:
                raise ConfigError(f"sweep.variants[{i}].label: expected a non-empty string, got {label!r}")
            if label in labels:
                raise ConfigError(f"sweep.variants[{i}].label: {label!r} is used twice")
            labels.append(label)
    return grid, variants


def resolve(data: dict[str, Any], where: str) -> ExperimentConfig:
    try:
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def config_hash(config: ExperimentConfig) -> str:
    """Ten hex digits identifying what a run computes: same resolved config, same id."""
    data = {k: v for k, v in config.to_dict().items() if k not in UNHASHED}
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def short_name(label: str | None, grid_point: dict[str, Any]) -> str:
    """A readable folder prefix: the variant's label, then the grid values (signflip, seed1)."""
    parts = [label] if label else []
    for key, value in grid_point.items():
        if isinstance(value, dict):
            parts.append(str(value.get("name", key.rsplit(".", 1)[-1])))
        elif isinstance(value, str):
            parts.append(value)
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}{value}")
    name = re.sub(r"[^A-Za-z0-9._+=]+", "-", "-".join(parts)).strip("-.")
    return name[:60] or "run"


def describe_value(value: Any) -> str:
    """A mapping with a name reads as name(key=value, ...), one without as key=value key=value."""
    if isinstance(value, dict) and "name" in value:
        extras = {k: v for k, v in value.items() if k not in ("name", "params") and v is not None}
        params = {**(value.get("params") or {}), **extras}
        inner = ", ".join(f"{k}={v}" for k, v in params.items())
        return f"{value['name']}({inner})" if inner else str(value["name"])
    if isinstance(value, dict):
        return " ".join(f"{k}={describe_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def describe_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={describe_value(v)}" for k, v in settings.items()) or "base"


def get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --- state of a sweep on disk -------------------------------------------------------------


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_status(run_dir: Path) -> str:
    """finished, failed, interrupted (started, no summary or stopped by Ctrl-C) or pending."""
    summary = read_summary(run_dir)
    if summary is None:
        return "interrupted" if (run_dir / "metrics.jsonl").exists() else "pending"
    status = summary.get("status", "failed")
    if status == "failed" and str(summary.get("error", "")).startswith("KeyboardInterrupt"):
        return "interrupted"
    return status


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


# --- execution ----------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    plan: SweepPlan
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    results: Path | None = None


def run_info(run: PlannedRun) -> dict[str, Any]:
    """What the sweep knows about a run and the run's folder does not: its label and settings."""
    return {"run_id": run.run_id, "hash": run.digest, "label": run.label, "overrides": run.overrides}


def execute_run(
    config_dict: dict[str, Any],
    run_dir: str,
    info: dict[str, Any],
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, str]:
    """Run one experiment into ``run_dir``; returns (status, error) and never raises an Exception.

    A Ctrl-C still propagates (the runner has recorded the run as interrupted by then)."""
    from byzsgd.runner import run_experiment

    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:  # a rerun starts clean: the metrics file is appended to
        (path / name).unlink(missing_ok=True)
    (path / RUN_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    try:
        run_experiment(config_from_dict(config_dict), path, on_row=on_row)
        return "finished", ""
    except Exception as error:  # noqa: BLE001 - a failed run is a result, not a crash of the sweep
        message = "".join(traceback.format_exception_only(error)).strip()
        path.mkdir(parents=True, exist_ok=True)
        (path / TRACEBACK_FILE).write_text(traceback.format_exc())
        summary = read_summary(path)
        if summary is None or summary.get("status") != "failed":  # failed before the runner wrote one
            summary = {"name": config_dict.get("name"), "status": "failed", "error": message}
            (path / "summary.json").write_text(json.dumps(summary, indent=2))
        return "failed", message


_events: Any = None  # the progress queue of a pool process
_stop: Any = None  # set by the sweep on Ctrl-C: queued runs must not start


def _init_pool_process(events: Any, stop: Any) -> None:
    global _events, _stop
    _events, _stop = events, stop
    import torch

    torch.set_num_threads(1)  # several runs share the cores: one thread each avoids oversubscription


def _execute_in_pool(config_dict: dict[str, Any], run_dir: str, info: dict[str, Any]) -> tuple[str, str]:
    from byzsgd.plugins import load_plugins

    load_plugins(config_dict.get("plugins"))  # the user's registered rules and attacks exist here too
    if _stop.is_set():
        return NOT_STARTED, ""
    run_id = info["run_id"]
    _events.put(("start", run_id, 0, None))
    return execute_run(
        config_dict, run_dir, info, lambda row: _events.put(("row", run_id, row["step"], row.get("test_acc")))
    )


class Progress:
    """A tqdm bar for the sweep and one per run in flight (stderr) on a terminal; off a terminal
    (job logs, CI) plain lines on stdout: each run's start, evaluated steps and end. Quiet: only
    failures."""

    def __init__(self, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.quiet = quiet
        self.plain = not quiet and not sys.stdout.isatty()
        self.total, self.done = total, 0
        self.sweep = tqdm(
            total=total, desc="sweep", unit="run", disable=quiet or self.plain, file=sys.stderr, position=0
        )
        self.bars: dict[str, Any] = {}
        self.positions: dict[str, int] = {}
        self.steps: dict[str, int] = {}

    def start(self, run: PlannedRun) -> None:
        if self.plain:
            if run.run_id not in self.steps:
                self.steps[run.run_id] = run.config.steps
                print(f"[{run.run_id}] started", flush=True)
            return
        if run.run_id in self.bars:
            return
        position = min(set(range(1, len(self.positions) + 2)) - set(self.positions.values()))
        self.positions[run.run_id] = position
        self.bars[run.run_id] = self._tqdm(
            total=run.config.steps,
            desc=run.run_id[:40],
            unit="step",
            leave=False,
            disable=self.quiet,
            file=sys.stderr,
            position=position,
        )

    def row(self, run_id: str, step: int, accuracy: float | None) -> None:
        if self.plain:
            acc = "-" if accuracy is None else f"{accuracy:.4f}"
            print(f"[{run_id}] step {step}/{self.steps.get(run_id, '?')}  acc={acc}", flush=True)
            return
        bar = self.bars.get(run_id)
        if bar is not None:
            if accuracy is not None:
                bar.set_postfix(acc=f"{accuracy:.3f}", refresh=False)
            bar.update(step - bar.n)

    def finish(self, run: PlannedRun, status: str, error: str) -> None:
        bar = self.bars.pop(run.run_id, None)
        self.positions.pop(run.run_id, None)
        if bar is not None:
            bar.close()
        self.sweep.update(1)
        self.done += 1
        if self.plain:
            print(f"[{run.run_id}] {status} ({self.done}/{self.total} runs done)", flush=True)
        if status != "finished":
            self._tqdm.write(f"run {run.run_id} failed: {error.splitlines()[-1] if error else status}", file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.sweep.close()


def run_sweep(plan: SweepPlan, parallel: int = 1, quiet: bool = False) -> SweepOutcome:
    """Run every unfinished run of the plan; finished ones are skipped, failures recorded.

    How runs share the machine: runs on the in-process runtime are independent simulations,
    so with ``parallel > 1`` they go to a pool of processes (spawned, one torch thread each).
    Runs on the Ray runtime create their own actors on one shared Ray connection that this
    driver opens once; ``parallel > 1`` runs that many at a time from driver threads (Ray's
    driver API is thread-safe, and each run only ever touches its own actors). Nesting each
    run's driver inside a Ray task would instead put its results on whichever node ran it.
    """
    if parallel < 1:
        raise ConfigError(f"--parallel={parallel}: must be at least 1")
    write_plan(plan)
    outcome = SweepOutcome(plan)
    todo = []
    for run in plan.runs:
        if run_status(plan.run_dir(run)) == "finished":
            outcome.skipped.append(run.run_id)
        else:
            todo.append(run)
    progress = Progress(len(todo), quiet)

    def record(run: PlannedRun, status: str, error: str) -> None:
        outcome.executed.append(run.run_id)
        if status != "finished":
            outcome.failed[run.run_id] = error
        progress.finish(run, status, error)
        write_results(plan)

    try:
        local_runs = [r for r in todo if r.config.runtime == "local"]
        ray_runs = [r for r in todo if r.config.runtime != "local"]
        if local_runs:
            if parallel == 1:
                run_serially(plan, local_runs, progress, record)
            else:
                run_in_processes(plan, local_runs, parallel, progress, record)
        if ray_runs:
            with ray_connection(ray_runs[0].config):
                if parallel == 1:
                    run_serially(plan, ray_runs, progress, record)
                else:
                    run_in_threads(plan, ray_runs, parallel, progress, record)
    finally:
        progress.close()
        outcome.results = write_results(plan)
    return outcome


Recorder = Callable[[PlannedRun, str, str], None]


def run_serially(plan: SweepPlan, runs: list[PlannedRun], progress: Progress, record: Recorder) -> None:
    for run in runs:
        progress.start(run)
        status, error = execute_run(
            run.config.to_dict(),
            str(plan.run_dir(run)),
            run_info(run),
            lambda row, run_id=run.run_id: progress.row(run_id, row["step"], row.get("test_acc")),
        )
        record(run, status, error)


def run_in_threads(
    plan: SweepPlan, runs: list[PlannedRun], parallel: int, progress: Progress, record: Recorder
) -> None:
    stop = threading.Event()

    def task(run: PlannedRun) -> tuple[str, str]:
        if stop.is_set():
            return NOT_STARTED, ""
        progress.start(run)
        return execute_run(
            run.config.to_dict(),
            str(plan.run_dir(run)),
            run_info(run),
            lambda row: progress.row(run.run_id, row["step"], row.get("test_acc")),
        )

    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        drain({pool.submit(task, run): run for run in runs}, progress, record, events=None)
    except BaseException:
        # Threads cannot be interrupted: queued runs are dropped, and the running ones end when
        # the sweep's Ray connection closes (their runs are then recorded as failed).
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def run_in_processes(
    plan: SweepPlan, runs: list[PlannedRun], parallel: int, progress: Progress, record: Recorder
) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    events, stop = context.Queue(), context.Event()
    remaining = list(runs)
    while remaining:
        started: set[str] = set()
        pool = ProcessPoolExecutor(
            parallel, mp_context=context, initializer=_init_pool_process, initargs=(events, stop)
        )
        try:
            futures = {
                pool.submit(_execute_in_pool, r.config.to_dict(), str(plan.run_dir(r)), run_info(r)): r
                for r in remaining
            }
            lost = drain(futures, progress, record, events, started)
        except BaseException:
            stop_pool(pool, stop)
            raise
        pool.shutdown(wait=True)
        # A pool process that died (out of memory, killed) breaks the pool: the runs it was
        # running are recorded as failed, the ones that had not started go to a fresh pool.
        for run in lost:
            if run.run_id in started:
                record(run, "failed", "the process running it died (out of memory or killed)")
        remaining = [r for r in lost if r.run_id not in started]


def stop_pool(pool: ProcessPoolExecutor, stop: Any, grace_s: float = 5.0) -> None:
    """On Ctrl-C: no queued run starts; running ones (interrupted by the same Ctrl-C) get a
    moment to write their summaries, then any pool process still alive is terminated, so the
    sweep exits now rather than after a run that was already handed to a process."""
    stop.set()
    # ProcessPoolExecutor has no public way to stop its processes before Python 3.14.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()


def drain(
    futures: dict[Future, PlannedRun],
    progress: Progress,
    record: Recorder,
    events: Any,
    started: set[str] | None = None,
) -> list[PlannedRun]:
    """Wait for the runs, forwarding progress events; returns the runs lost to a broken pool."""
    by_id = {run.run_id: run for run in futures.values()}
    pending = set(futures)
    lost = []
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        forward_events(events, by_id, progress, started)
        for future in done:
            run = futures[future]
            try:
                status, error = future.result()
            except BrokenProcessPool:
                lost.append(run)
                continue
            if status != NOT_STARTED:
                record(run, status, error)
    forward_events(events, by_id, progress, started)
    return lost


def forward_events(events: Any, by_id: dict[str, PlannedRun], progress: Progress, started: set[str] | None) -> None:
    if events is None:
        return
    while True:
        try:
            kind, run_id, step, accuracy = events.get_nowait()
        except queue.Empty:
            return
        if kind == "start" and run_id in by_id:
            if started is not None:
                started.add(run_id)
            progress.start(by_id[run_id])
        elif kind == "row":
            progress.row(run_id, step, accuracy)


@contextmanager
def ray_connection(config: ExperimentConfig) -> Iterator[None]:
    """One Ray connection for every Ray run of the sweep (each run reuses an initialized Ray)."""
    from byzsgd.runtime.ray import start_ray

    owns = start_ray(config)
    try:
        yield
    finally:
        if owns:
            import ray

            ray.shutdown()


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
