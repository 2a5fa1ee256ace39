"""Per-step metrics: evaluated from the correct servers' models, written as JSONL at once.

Each row is flushed as soon as it is complete, so a run that dies keeps every row it wrote.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzsgd.results import METRICS_FILE, JsonlWriter, read_jsonl
from byzsgd.training import Workload

__all__ = ["METRICS_FILE", "JsonlWriter", "Monitor", "diameter", "read_jsonl"]  # the file parts: byzsgd.results


def diameter(vectors: np.ndarray) -> float:
    """Largest pairwise L2 distance among the rows: what DMC contracts."""
    if len(vectors) < 2:
        return 0.0
    points = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    return float(torch.cdist(points, points).max())


class Monitor:
    """Collects the servers' model snapshots; when every correct server has reported a step,
    evaluates them and writes one row. Runtimes call :meth:`report` and set ``counters``."""

    def __init__(
        self,
        workload: Workload,
        servers: list[str],
        steps: int,
        writer: JsonlWriter | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.workload = workload
        self.servers = servers
        self.steps = steps
        self.writer = writer
        self.on_row = on_row
        self.pending: dict[int, dict[str, np.ndarray]] = {}
        self.rows: list[dict[str, Any]] = []
        self.counters: Callable[[], dict[str, int]] = dict
        self.started = time.perf_counter()
        self.dropped_servers: set[str] = set()

    @property
    def done(self) -> bool:
        return bool(self.rows) and self.rows[-1]["step"] >= self.steps

    @property
    def live_servers(self) -> list[str]:
        return [s for s in self.servers if s not in self.dropped_servers]

    def report(self, server: str, step: int, vector: np.ndarray) -> None:
        if server not in self.servers:
            return  # a Byzantine server's model is not the experiment's result
        self.pending.setdefault(step, {})[server] = vector
        self._flush()

    def drop_server(self, server: str) -> None:
        """Stop waiting for a server that crashed; its last reports stay in earlier rows."""
        self.dropped_servers.add(server)
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            step = min(self.pending)
            models = self.pending[step]
            if not self.live_servers or any(s not in models for s in self.live_servers):
                return
            del self.pending[step]
            self._write(step, models)

    def _write(self, step: int, models: dict[str, np.ndarray]) -> None:
        elapsed = time.perf_counter() - self.started
        evaluations = {
            s: self.workload.evaluate(torch.tensor(v, device=self.workload.device)) for s, v in models.items()
        }
        accuracies = [e["test_acc"] for e in evaluations.values()]
        row: dict[str, Any] = {
            "step": step,
            "time_s": round(elapsed, 4),
            "steps_per_s": round(step / elapsed, 3) if elapsed > 0 and step else 0.0,
            "test_acc": float(np.mean(accuracies)),
            "test_acc_min": float(np.min(accuracies)),
            "test_acc_max": float(np.max(accuracies)),
            "test_loss": float(np.mean([e["test_loss"] for e in evaluations.values()])),
            "train_loss": float(np.mean([e["train_loss"] for e in evaluations.values()])),
            "diameter": diameter(np.stack(list(models.values()))),
            "test_acc_per_server": {s: round(e["test_acc"], 4) for s, e in evaluations.items()},
            **self.counters(),
        }
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.rows.append(row)
        if self.writer:
            self.writer.write(row)
        if self.on_row:
            self.on_row(row)
