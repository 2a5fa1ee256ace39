"""Builds an experiment from a config, runs it on the chosen runtime, writes its results.

A results folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one row per
evaluated step, written as it happens) and ``summary.json`` (written at the end, also when the
run fails: ``status`` and ``error`` say how it ended); a failed run also keeps ``traceback.txt``.
A folder that already holds a run is never appended to: see :func:`claim_run_dir`.
"""

from __future__ import annotations

import json
import os
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
from byzsgd.registry import ConfigError
from byzsgd.storage import resolve_output
from byzsgd.training import Workload

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
TRACEBACK_FILE = "traceback.txt"
# What makes a folder hold a run; --overwrite removes exactly these, never anything else.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TRACEBACK_FILE)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def new_run_dir(config: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return resolve_output(config.output_dir) / f"{config.name}-{stamp}"


def claim_run_dir(run_dir: str | Path, overwrite: bool = False) -> None:
    """Make sure ``run_dir`` can take a new run without mixing it with an old one: a folder
    that already holds a run's files is refused (a ConfigError, nothing touched), or with
    ``overwrite`` those files (and only those) are removed first."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"results folder {str(run_dir)!r}: exists and is not a folder")
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"results folder {str(run_dir)!r}: cannot be created or written in {str(existing)!r}")
    held = [name for name in RUN_FILES if (run_dir / name).exists()] if run_dir.is_dir() else []
    if held and not overwrite:
        raise ConfigError(
            f"results folder {str(run_dir)!r} already holds a run ({', '.join(held)}); "
            "pass --overwrite to replace it, or choose another folder"
        )
    folders = [name for name in held if (run_dir / name).is_dir()]
    if folders:  # checked before anything is removed
        raise ConfigError(f"results folder {str(run_dir)!r}: {folders[0]} is a folder, not a file; remove it by hand")
    for name in held:
        (run_dir / name).unlink()


def record_failure(run_dir: str | Path, name: str, error: BaseException) -> Path:
    """Keep the traceback of a run that raised ``error`` in its folder, and a summary saying it
    failed if the run ended before the runner wrote one. Returns the traceback's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / TRACEBACK_FILE
    path.write_text("".join(traceback.format_exception(error)))
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or summary.get("status") != "failed":
        message = "".join(traceback.format_exception_only(error)).strip()
        (run_dir / SUMMARY_FILE).write_text(json.dumps({"name": name, "status": "failed", "error": message}, indent=2))
    return path


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run ``config`` into ``run_dir`` (default: a new timestamped folder); a folder that
    already holds a run is refused unless ``overwrite`` (see :func:`claim_run_dir`)."""
    run_dir = resolve_output(run_dir) if run_dir is not None else new_run_dir(config)
    claim_run_dir(run_dir, overwrite)
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
