"""What the command line prints: the run's header, its progress, the summary table, and one line
(with the traceback in a file) when something fails."""

from __future__ import annotations

import signal
import sys
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from byzsgd.config import ExperimentConfig

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


def print_warnings(notes: Iterable[str]) -> None:
    """Each distinct warning once, one line on stderr (a sweep's runs often share one)."""
    for note in dict.fromkeys(notes):
        print(f"byzsgd: warning: {note}", file=sys.stderr)


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
