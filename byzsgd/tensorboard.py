"""An optional TensorBoard sink for metrics rows (``byzsgd run --tensorboard``), off by default.

``metrics.jsonl`` stays the source of truth; this writes the same numbers as TensorBoard
scalars so runs can be compared side by side (``tensorboard --logdir results``). It needs the
``tensorboard`` package: ``pip install 'byzsgd[tensorboard]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from byzsgd.registry import ConfigError
from byzsgd.results import METRICS_FILE, read_jsonl

TENSORBOARD_DIR = "tensorboard"
SKIPPED = ("step", "test_acc_per_server")


class TensorBoardSink:
    """Writes each row's numeric metrics as scalars at its step, under ``<run dir>/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'byzsgd[tensorboard]'"
            ) from None
        self.path = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.path))

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key in SKIPPED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def export_run(run_dir: Path) -> Path:
    """Write a finished run's metrics.jsonl as TensorBoard scalars (used after a sweep)."""
    sink = TensorBoardSink(run_dir)
    try:
        for row in read_jsonl(Path(run_dir) / METRICS_FILE):
            sink.write(row)
    finally:
        sink.close()
    return sink.path
