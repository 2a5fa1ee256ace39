"""Command line: ``byzsgd run|config|sweep [config.yaml] [--set key=value ...]`` and ``byzsgd plot DIR...``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byzsgd.config import ExperimentConfig, load_config
from byzsgd.registry import ConfigError

SUMMARY_COLUMNS = [
    ("step", "{:d}"),
    ("test_acc", "{:.4f}"),
    ("test_acc_min", "{:.4f}"),
    ("test_loss", "{:.4f}"),
    ("diameter", "{:.4g}"),
    ("steps_per_s", "{:.2f}"),
    ("messages", "{:d}"),
    ("bytes", "{:,d}"),
    ("rejected", "{:d}"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byzsgd", description="Byzantine-resilient distributed SGD on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one experiment")
    run.add_argument("config", nargs="?", help="YAML experiment (default: the embedded digits experiment)")
    add_common(run)
    run.add_argument("--out", help="results folder (default: <output_dir>/<name>-<timestamp>)")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused without this)")
    show = commands.add_parser("config", help="print the resolved config and exit")
    show.add_argument("config", nargs="?")
    add_common(show)
    sweep = commands.add_parser("sweep", help="run every experiment of a sweep file (resumable)")
    sweep.add_argument("config", help="YAML sweep: a base config plus a sweep: section (grid, variants)")
    add_common(sweep)
    sweep.add_argument("--out", help="sweep folder (default: <output_dir>/<name>)")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    sweep.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    plot = commands.add_parser("plot", help="draw PNGs from a sweep folder or run folders")
    plot.add_argument("paths", nargs="+", help="sweep folders or run folders")
    plot.add_argument("-o", "--out", help="where the PNGs go (default: <sweep folder>/plots)")
    return parser


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set nodes.n_w=10 --set attack.name=none",
    )
    parser.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: local Ray")
    parser.add_argument("--runtime", choices=["ray", "local"], help="override the config's runtime")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={json.dumps(args.address)}")  # a quoted string, whatever YAML would make of it
    if args.runtime:
        overrides.append(f"runtime={args.runtime}")
    return overrides


def resolve(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, cli_overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("sweep", "plot"):
        try:
            return sweep_command(args) if args.command == "sweep" else plot_command(args)
        except ConfigError as error:
            print(f"byzsgd: {'config' if args.command == 'sweep' else 'plot'} error: {error}", file=sys.stderr)
            return 2
        except Exception as error:  # noqa: BLE001 - one line and where the traceback is, never a traceback
            return report_crash(f"{args.command} failed", error)
    try:
        config = resolve(args)
    except ConfigError as error:
        print(f"byzsgd: config error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a bug, not bad input: one line and where the traceback is
        return report_crash("cannot load the config", error)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    return run_command(config, args)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a killed run ends like an interrupted one:
    the runner records it as failed in summary.json, with its rows kept."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def report_crash(what: str, error: BaseException, run_dir: Path | None = None, name: str = "byzsgd") -> int:
    """One line on stderr and the traceback in a file (the run folder's, else a temporary one)."""
    path = None
    if run_dir is not None:
        from byzsgd.runner import record_failure

        try:
            path = record_failure(run_dir, name, error)
        except OSError:  # the folder cannot take it (gone, full, read-only): a temporary file then
            pass
    if path is None:
        with tempfile.NamedTemporaryFile("w", prefix="byzsgd-traceback-", suffix=".txt", delete=False) as handle:
            handle.write("".join(traceback.format_exception(error)))
        path = Path(handle.name)
    print(f"byzsgd: {what}: {one_line(error)} (traceback: {path})", file=sys.stderr)
    return 1


def run_command(config: ExperimentConfig, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from byzsgd.runner import claim_run_dir, new_run_dir, record_failure, run_experiment

    run_dir = Path(args.out) if args.out else new_run_dir(config)
    try:
        claim_run_dir(run_dir, overwrite=args.overwrite)
    except ConfigError as error:
        print(f"byzsgd: {error}", file=sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    bar = tqdm(total=config.steps, desc=config.name, unit="step", disable=args.quiet, file=sys.stderr)

    def on_row(row: dict[str, Any]) -> None:
        bar.update(row["step"] - bar.n)
        bar.set_postfix(acc=f"{row['test_acc']:.3f}", diam=f"{row['diameter']:.3g}")

    try:
        result = run_experiment(config, run_dir, on_row=on_row)
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: summary.json says so, the rows are kept
        record_failure(run_dir, config.name, error)
        print(
            f"\nbyzsgd: {one_line(error) if isinstance(error, Terminated) else 'interrupted'}; "
            f"the rows written so far are in {run_dir}",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)
    except ConnectionError as error:  # ray.init could not reach the cluster named by --address
        print(f"byzsgd: cannot connect to Ray at {config.ray.address!r}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed run: one line here, the traceback in its folder
        return report_crash("run failed", error, run_dir, config.name)
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    print(summary_table(result.summary, result.rows))
    print(f"results: {result.run_dir}")
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    from byzsgd.sweep import load_sweep, outcome_text, plan_text, run_sweep

    plan = load_sweep(args.config, cli_overrides(args), args.out)
    print(plan_text(plan), flush=True)
    if args.dry_run:
        return 0
    try:
        outcome = run_sweep(plan, parallel=args.parallel, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\nbyzsgd: sweep interrupted; rerun the same command to resume ({plan.out_dir})", file=sys.stderr)
        return 130
    print(outcome_text(outcome))
    if outcome.failed:
        print(f"byzsgd: {len(outcome.failed)} run(s) failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from byzsgd.plots import plot_runs

    for path in plot_runs(args.paths, args.out):
        print(path)
    return 0


def summary_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The last few evaluated steps as a fixed-width table, plus who was Byzantine."""
    shown = rows if len(rows) <= 6 else [rows[0], *rows[-5:]]
    header = [name for name, _ in SUMMARY_COLUMNS]
    lines = [
        [fmt.format(row[name]) if row.get(name) is not None else "-" for name, fmt in SUMMARY_COLUMNS] for row in shown
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    extras = {
        k: summary[k]
        for k in ("protocol", "runtime", "device", "byzantine", "gather_period", "wall_time_s")
        if k in summary
    }
    out.append("  ".join(f"{k}={v}" for k, v in extras.items()))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
