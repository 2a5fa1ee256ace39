"""Command line: ``byzsgd run|config|sweep [config.yaml] [--set key=value ...]``, ``byzsgd plot DIR...``
and ``byzsgd list [aggregators|attacks|protocols|datasets|models]``.

parser.py builds the arguments, commands.py runs, sweeps and plots, console.py prints (progress,
summary table, one-line failures), listing.py answers ``byzsgd list``; this module dispatches."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from byzsgd.cli.commands import plot_command, run_command, sweep_command
from byzsgd.cli.console import print_warnings, report_crash
from byzsgd.cli.listing import list_text
from byzsgd.cli.parser import build_parser, cli_overrides
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import ignored_settings, load_config
from byzsgd.registry import ConfigError


def resolve(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, cli_overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return dispatch(build_parser().parse_args(argv))
    except BrokenPipeError:
        # `byzsgd ... | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit like other tools killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        print(list_text(args.kind))
        return 0
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
    print_warnings(ignored_settings(config))
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    return run_command(config, args)
