"""Runs one experiment: assembles its plan, runs it on the chosen runtime, writes its results
folder (see :mod:`byzsgd.results`: a folder that already holds a run is never appended to)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from byzsgd import results, runtime
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import assemble
from byzsgd.metrics import Monitor
from byzsgd.results import (
    CONFIG_FILE,
    RUN_FILES,
    SUMMARY_FILE,
    TRACEBACK_FILE,
    claim_run_dir,
    new_run_dir,
    record_failure,
)
from byzsgd.storage import resolve_output
from byzsgd.training import Workload, check_driver_device

__all__ = [
    "CONFIG_FILE",
    "RUN_FILES",
    "SUMMARY_FILE",
    "TRACEBACK_FILE",
    "RunResult",
    "claim_run_dir",
    "new_run_dir",
    "record_failure",
    "run_experiment",
]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run ``config`` into ``run_dir`` (default: a new timestamped folder); a folder that
    already holds a run is refused unless ``overwrite`` (see :func:`claim_run_dir`)."""
    check_driver_device(config)
    if config.runtime == "ray":
        from byzsgd.runtime.cluster import probe_cluster

        probe_cluster(config)  # an unreachable cluster leaves no results folder behind to block a retry
    run_dir = resolve_output(run_dir) if run_dir is not None else new_run_dir(config)
    claim_run_dir(run_dir, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.write_config(run_dir, config)
    experiment = assemble(config)  # the only place a run is planned: runtimes and actors get the plan
    torch.manual_seed(config.seed)
    # On Ray only actors Ray assigned a GPU touch CUDA; the driver evaluates on the CPU.
    workload = Workload(config, "cpu" if config.runtime == "ray" else None)
    writer = results.metrics_writer(run_dir)
    monitor = Monitor(workload, experiment.correct_servers, config.steps, writer, on_row)
    summary: dict[str, Any] = {
        "name": config.name,
        "protocol": config.protocol,
        "runtime": config.runtime,
        "device": str(workload.device),
        "byzantine": experiment.roster.byzantine,
        "parameters": workload.dimension,
        **experiment.settings,
    }
    started = time.perf_counter()
    try:
        summary.update(runtime.run(experiment, monitor))
        summary["status"] = "finished"
    except BaseException as error:
        summary["status"] = "failed"
        summary["error"] = "".join(traceback.format_exception_only(error)).strip()
        raise
    finally:
        writer.close()
        summary["wall_time_s"] = round(time.perf_counter() - started, 3)
        if monitor.rows:
            final = monitor.rows[-1]
            summary["final"] = {k: v for k, v in final.items() if k != "test_acc_per_server"}
        results.write_summary(run_dir, summary)
    return RunResult(run_dir, summary, monitor.rows)
