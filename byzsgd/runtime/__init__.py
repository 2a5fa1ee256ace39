"""Runtimes host protocol nodes and move their messages: in one process, or on Ray. Both move
them through :class:`byzsgd.bus.Bus`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from byzsgd.bus import StalledError, counters_row

if TYPE_CHECKING:
    from byzsgd.experiment import Experiment
    from byzsgd.metrics import Monitor

__all__ = ["StalledError", "counters_row", "run"]


def run(experiment: Experiment, monitor: Monitor) -> dict[str, Any]:
    """Run the experiment on the configured runtime; returns runtime facts for the summary."""
    if experiment.config.runtime == "local":
        from byzsgd.runtime.local import run_local

        return run_local(experiment, monitor)
    from byzsgd.runtime.ray import run_ray

    return run_ray(experiment, monitor)
