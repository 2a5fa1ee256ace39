"""What a sweep shows while it runs: bars on a terminal, plain lines in logs."""

from __future__ import annotations

import sys
from typing import Any

from byzsgd.sweep.plan import PlannedRun


class Progress:
    """A tqdm bar for the sweep and one per run in flight (stderr) on a terminal; off a terminal
    (job logs, CI) plain lines on stdout: each run's start, evaluated steps and end. Quiet: only
    failures. The bars are drawn from a run's first evaluated step (or the first finished run),
    after Ray has started and printed its own warnings, as ``byzsgd run`` does."""

    def __init__(self, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.quiet = quiet
        self.plain = not quiet and not sys.stdout.isatty()
        self.total, self.done = total, 0
        self.sweep: Any = None
        self.bars: dict[str, Any] = {}
        self.positions: dict[str, int] = {}
        self.steps: dict[str, int] = {}

    def _sweep_bar(self) -> Any:
        if self.sweep is None:
            self.sweep = self._tqdm(
                total=self.total,
                desc="sweep",
                unit="run",
                disable=self.quiet or self.plain,
                file=sys.stderr,
                position=0,
            )
        return self.sweep

    def start(self, run: PlannedRun) -> None:
        if run.run_id in self.steps:
            return
        self.steps[run.run_id] = run.config.steps
        if self.plain:
            print(f"[{run.run_id}] started", flush=True)
            return
        self.positions[run.run_id] = min(set(range(1, len(self.positions) + 2)) - set(self.positions.values()))

    def row(self, run_id: str, step: int, accuracy: float | None) -> None:
        if self.plain:
            acc = "-" if accuracy is None else f"{accuracy:.4f}"
            print(f"[{run_id}] step {step}/{self.steps.get(run_id, '?')}  acc={acc}", flush=True)
            return
        bar = self.bars.get(run_id)
        if bar is None and run_id in self.positions:
            self._sweep_bar()
            bar = self.bars[run_id] = self._tqdm(
                total=self.steps[run_id],
                desc=run_id[:40],
                unit="step",
                leave=False,
                disable=self.quiet,
                file=sys.stderr,
                position=self.positions[run_id],
            )
        if bar is not None:
            if accuracy is not None:
                bar.set_postfix(acc=f"{accuracy:.3f}", refresh=False)
            bar.update(step - bar.n)

    def finish(self, run: PlannedRun, status: str, error: str) -> None:
        bar = self.bars.pop(run.run_id, None)
        self.positions.pop(run.run_id, None)
        if bar is not None:
            bar.close()
        self._sweep_bar().update(1)
        self.done += 1
        if self.plain:
            print(f"[{run.run_id}] {status} ({self.done}/{self.total} runs done)", flush=True)
        if status != "finished":
            self._tqdm.write(f"run {run.run_id} failed: {error.splitlines()[-1] if error else status}", file=sys.stderr)

    def clear(self) -> None:
        """Take the bars off the screen (the next update redraws them): Ray is about to print."""
        for bar in [self.sweep, *self.bars.values()]:
            if bar is not None:
                bar.clear()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.sweep is not None:
            self.sweep.close()
