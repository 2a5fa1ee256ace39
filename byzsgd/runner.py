"""Builds an experiment from a config, runs it on the chosen runtime, writes its results.

A results folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one row per
evaluated step, written as it happens) and ``summary.json`` (written at the end).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from byzsgd.config import ExperimentConfig
from byzsgd.faults import FaultInjector
from byzsgd.metrics import METRICS_FILE, JsonlWriter, Monitor
from byzsgd.protocols import PROTOCOLS
from byzsgd.storage import resolve_output
from byzsgd.training import Workload

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def new_run_dir(config: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return resolve_output(config.output_dir) / f"{config.name}-{stamp}"


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    run_dir = resolve_output(run_dir) if run_dir is not None else new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    torch.manual_seed(config.seed)
    workload = Workload(config)
    protocol = PROTOCOLS[config.protocol]
    injector = FaultInjector(config)
    correct_servers = [s for s in protocol.server_ids(config) if not injector.is_byzantine(s)]
    writer = JsonlWriter(run_dir / METRICS_FILE)
    monitor = Monitor(workload, correct_servers, config.steps, writer, on_row)
    summary: dict[str, Any] = {
        "name": config.name,
        "protocol": config.protocol,
        "runtime": config.runtime,
        "device": str(workload.device),
        "byzantine": injector.byzantine,
        "parameters": workload.dimension,
        **protocol.describe(config),
    }
    started = time.perf_counter()
    try:
        from byzsgd import runtime

        summary.update(runtime.run(config, monitor))
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
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return RunResult(run_dir, summary, monitor.rows)
