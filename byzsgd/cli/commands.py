"""The commands that run something: ``byzsgd run``, ``byzsgd sweep`` and ``byzsgd plot``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from byzsgd.cli.console import (
    StepPrinter,
    Terminated,
    header_line,
    one_line,
    print_warnings,
    raise_terminated,
    report_crash,
    summary_table,
)
from byzsgd.cli.parser import cli_overrides
from byzsgd.config import ExperimentConfig
from byzsgd.registry import ConfigError


def output_target(out: str | None, default: Callable[[], Path]) -> tuple[Path, str | None]:
    """The absolute local folder to write, and the storage URI to copy it to (if any)."""
    from byzsgd.storage import is_uri, resolve_output

    if out is None:
        return default(), None
    if is_uri(out):
        return default(), out
    return resolve_output(out), None


def run_command(config: ExperimentConfig, args: argparse.Namespace) -> int:
    from byzsgd.runner import claim_run_dir, new_run_dir, record_failure, run_experiment
    from byzsgd.storage import location_note, upload
    from byzsgd.training import check_driver_device

    try:
        check_driver_device(config)
        run_dir, uri = output_target(args.out, lambda: new_run_dir(config))
        claim_run_dir(run_dir, overwrite=args.overwrite)
    except ConfigError as error:
        print(f"byzsgd: config error: {error}", file=sys.stderr)
        return 2
    print(header_line(config, run_dir), flush=True)
    note = location_note(run_dir)
    if note:
        print(f"byzsgd: {note}", flush=True)
    printer = StepPrinter(config.name, config.steps, args.quiet, plain=not sys.stdout.isatty())
    on_row: Callable[[dict[str, Any]], None] = printer
    sink = None
    if args.tensorboard:
        from byzsgd.tensorboard import TensorBoardSink

        try:
            sink = TensorBoardSink(run_dir)
        except ConfigError as error:
            print(f"byzsgd: {error}", file=sys.stderr)
            return 2

        def on_row(row: dict[str, Any]) -> None:
            printer(row)
            sink.write(row)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    try:
        result = run_experiment(config, run_dir, on_row=on_row)
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: summary.json says so, the rows are kept
        record_failure(run_dir, config.name, error)
        what = one_line(error) if isinstance(error, Terminated) else "interrupted"
        print(f"\nbyzsgd: {what}; the rows written so far are in {run_dir}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)
    except ConnectionError as error:  # nothing answers at --address / RAY_ADDRESS
        print(f"byzsgd: cannot connect to Ray at {ray_address(config)!r}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed run: one line here, the traceback in its folder
        return report_crash("run failed", error, run_dir, config.name)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        printer.close()
        if sink is not None:
            sink.close()
        if uri is not None and run_dir.exists():
            print(f"copied to: {upload(run_dir, uri)}", file=sys.stderr)
    print(summary_table(result.summary, result.rows))
    print(f"results: {result.run_dir}")
    if note:
        print(f"byzsgd: {note}")
    return 0


def ray_address(config: ExperimentConfig) -> str | None:
    """The cluster a Ray run joins: ray.address, else RAY_ADDRESS (a Ray job's)."""
    return config.ray.address or os.environ.get("RAY_ADDRESS")


def sweep_command(args: argparse.Namespace) -> int:
    from byzsgd.experiment import ignored_settings
    from byzsgd.storage import location_note, upload
    from byzsgd.sweep import load_sweep, outcome_text, plan_text, run_sweep
    from byzsgd.training import check_driver_device

    uri = None
    out = args.out
    if out is not None:
        from byzsgd.storage import is_uri

        if is_uri(out):
            uri, out = out, None
    plan = load_sweep(args.config, cli_overrides(args), out)
    print(plan_text(plan), flush=True)
    print_warnings(note for run in plan.runs for note in ignored_settings(run.config))
    if args.dry_run:
        return 0
    for run in plan.runs:
        check_driver_device(run.config)  # before the sweep folder exists
    note = location_note(plan.out_dir)
    if note:
        print(f"byzsgd: {note}", flush=True)
    started = time.perf_counter()
    try:
        outcome = run_sweep(plan, parallel=args.parallel, quiet=args.quiet)
    except ConnectionError as error:  # the sweep's Ray runs: nothing answers at --address / RAY_ADDRESS
        address = next((ray_address(r.config) for r in plan.runs if r.config.runtime == "ray"), None)
        print(f"byzsgd: cannot connect to Ray at {address!r}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM (SweepTerminated): its processes are stopped
        from byzsgd.sweep.execute import SweepTerminated

        what = "terminated (SIGTERM)" if isinstance(error, SweepTerminated) else "interrupted"
        print(f"\nbyzsgd: sweep {what}; rerun the same command to resume ({plan.out_dir})", file=sys.stderr)
        return 143 if isinstance(error, SweepTerminated) else 130
    finally:
        if uri is not None and plan.out_dir.exists():
            print(f"copied to: {upload(plan.out_dir, uri)}", file=sys.stderr)
    print(outcome_text(outcome))
    print(f"sweep folder: {plan.out_dir} ({time.perf_counter() - started:.0f} s)")
    if note:
        print(f"byzsgd: {note}")
    if args.tensorboard:
        from byzsgd.tensorboard import export_run

        for run_id in outcome.executed:
            export_run(plan.out_dir / run_id)
        print(f"tensorboard: tensorboard --logdir {plan.out_dir}")
    if outcome.failed:
        print(f"byzsgd: {len(outcome.failed)} run(s) failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from byzsgd.plots.figures import plot_runs

    for path in plot_runs(args.paths, args.out, fmt=args.format, dpi=args.dpi):
        print(path.resolve())
    return 0
