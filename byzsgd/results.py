"""The results folder: the one place that knows its file names and how a run is read and written.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one row per
evaluated step, flushed as it happens, so a run that dies keeps every row it wrote) and
``summary.json`` (written at the end, also when the run failed); a sweep adds ``sweep_run.json``
(the run's label and swept settings) and, when a run failed, ``traceback.txt``. A sweep folder
holds its runs' folders, ``sweep.yaml`` (the sweep as launched) and ``results.csv``.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from byzsgd.config import ExperimentConfig
from byzsgd.registry import ConfigError
from byzsgd.storage import resolve_output

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TRACEBACK_FILE = "traceback.txt"
RUN_INFO_FILE = "sweep_run.json"
# What makes a folder hold a run; --overwrite removes exactly these, never anything else.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TRACEBACK_FILE)
RESULTS_FILE = "results.csv"  # in a sweep folder
PLAN_FILE = "sweep.yaml"  # in a sweep folder


def new_run_dir(config: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return resolve_output(config.output_dir) / f"{config.name}-{stamp}"


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / METRICS_FILE).is_file()


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier attempt left (the metrics file is appended to), also a folder or
    link found where one of the run's files belongs."""
    for name in (*RUN_FILES, RUN_INFO_FILE):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


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


def write_config(run_dir: Path, config: ExperimentConfig) -> None:
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config; empty when the file is missing or not a YAML mapping."""
    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def metrics_writer(run_dir: Path) -> JsonlWriter:
    return JsonlWriter(run_dir / METRICS_FILE)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows up to the first that is not a JSON object (a row cut short by a crash: everything
    before it is intact); bytes that are not UTF-8 end the rows the same way."""
    rows = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / METRICS_FILE)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing or anything else (not a file, not
    UTF-8, not JSON, a list...)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None when there is none or it is not one a run writes (a corrupt
    file: see :func:`run_status`)."""
    summary = read_json_object(run_dir / SUMMARY_FILE)
    if summary is None:
        return None
    if not isinstance(summary.get("status", "failed"), str) or not isinstance(summary.get("final", {}), dict):
        return None
    return summary


def write_traceback(run_dir: Path) -> None:
    """The traceback of the exception being handled."""
    (run_dir / TRACEBACK_FILE).write_text(traceback.format_exc())


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    (run_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    return read_json_object(run_dir / RUN_INFO_FILE) or {}


def run_status(run_dir: Path) -> str:
    """finished, failed, interrupted (started and no summary, or stopped by Ctrl-C or SIGTERM),
    pending, or corrupt (a finished run with a folder or another non-file where its config.yaml
    or metrics.jsonl belongs). A summary that is not one a run writes (torn, not UTF-8, a list, a
    non-mapping ``final``) reads as absent. A sweep reruns every run but the finished."""
    summary = read_summary(run_dir)
    if summary is None:
        return "interrupted" if (run_dir / METRICS_FILE).exists() else "pending"
    status = summary.get("status", "failed")
    if status == "finished" and any(
        (run_dir / name).exists() and not (run_dir / name).is_file() for name in (CONFIG_FILE, METRICS_FILE)
    ):
        return "corrupt"
    if status == "failed" and interrupted(str(summary.get("error", ""))):
        return "interrupted"
    return status


# Exceptions that mean "stopped from outside" (Ctrl-C, SIGTERM to a run or to a sweep), not a failure.
INTERRUPTIONS = ("KeyboardInterrupt", "Terminated", "SweepTerminated")


def interrupted(error: str) -> bool:
    """Whether a summary's ``error`` (``[module.]Class: message``) is an interruption."""
    return error.split(":", 1)[0].rsplit(".", 1)[-1] in INTERRUPTIONS
