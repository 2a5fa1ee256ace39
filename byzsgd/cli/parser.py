"""The command line's arguments: ``byzsgd run|config|sweep [config.yaml] [--set key=value ...]``,
``byzsgd plot DIR...`` and ``byzsgd list [KIND]``."""

from __future__ import annotations

import argparse
import json

from byzsgd import __version__
from byzsgd.cli.listing import LIST_KINDS

PLOT_FORMATS = ("png", "pdf", "svg")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byzsgd", description="Byzantine-resilient distributed SGD on Ray.")
    parser.add_argument("--version", action="version", version=f"byzsgd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one experiment", description="Run one experiment.")
    run.add_argument(
        "config", nargs="?", help="YAML experiment, layered over the embedded default (default: the default itself)"
    )
    add_overrides(run)
    add_output_flags(
        run,
        out="results folder (default: <output_dir>/<name>-<timestamp>); relative paths resolve against the "
        "current directory, or $BYZSGD_JOB_ROOT (default ~) inside a Ray job; s3://, gs://, file:// URIs are "
        "written locally, then copied there",
        tensorboard="also write TensorBoard scalars to <results>/tensorboard",
    )
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused without this)")

    show = commands.add_parser(
        "config", help="print the resolved config and exit", description="Print the resolved config and exit."
    )
    show.add_argument("config", nargs="?", help="YAML experiment, layered over the embedded default")
    add_overrides(show)

    sweep = commands.add_parser(
        "sweep", help="run every experiment of a sweep file (resumable)", description="Run a sweep (resumable)."
    )
    sweep.add_argument("config", help="YAML sweep: a base config plus a sweep: section (grid, variants)")
    add_overrides(sweep)
    add_output_flags(
        sweep,
        out="sweep folder (default: <output_dir>/<name>; paths resolve as for `byzsgd run --out`)",
        tensorboard="write each run's TensorBoard scalars when the sweep ends",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    sweep.add_argument(
        "--parallel", type=positive_int, default=1, metavar="N", help="runs at a time, at least 1 (default 1)"
    )

    plot = commands.add_parser(
        "plot", help="draw figures from a sweep folder or run folders", description="Draw figures and their data."
    )
    plot.add_argument("paths", nargs="+", help="sweep folders or run folders")
    plot.add_argument("-o", "--out", help="where the figures go (default: <sweep folder>/plots)")
    plot.add_argument("--format", choices=PLOT_FORMATS, default="png", help="figure format (default png)")
    plot.add_argument("--dpi", type=positive_int, default=150, help="resolution of PNG figures (default 150)")

    listing = commands.add_parser(
        "list",
        help="list the aggregators, attacks, protocols, datasets or models",
        description="List what a config can name, with parameters and bounds.",
    )
    listing.add_argument("kind", nargs="?", choices=LIST_KINDS, help="what to list (default: everything)")
    return parser


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set nodes.n_w=10 --set attack.name=none (repeatable)",
    )
    parser.add_argument(
        "--address", help="Ray cluster to join (auto, ray://host:10001); sets ray.address; default: a local Ray"
    )
    parser.add_argument("--runtime", choices=["ray", "local"], help="override the config's runtime")


def add_output_flags(parser: argparse.ArgumentParser, out: str, tensorboard: str) -> None:
    """Where a run or a sweep writes (``--out``, ``--tensorboard``) and how much it prints (``--quiet``)."""
    parser.add_argument("--out", metavar="DIR|URI", help=out)
    parser.add_argument("--quiet", action="store_true", help="no progress: print only the start, the end and errors")
    parser.add_argument("--tensorboard", action="store_true", help=tensorboard)


def cli_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={json.dumps(args.address)}")  # a quoted string, whatever YAML would make of it
    if args.runtime:
        overrides.append(f"runtime={args.runtime}")
    return overrides
