"""The Python API: run an experiment from a notebook or a script.

    import byzsgd
    out = byzsgd.run("experiments/custom.yaml", steps=50, runtime="local")
    out.summary["final"]["test_acc"], out.rows[-1], out.frame  # frame: a pandas DataFrame (None without pandas)

The config is a dict (only what differs from the embedded default), a YAML path, or an
ExperimentConfig; ``overrides`` are dotted keys (``{"nodes.n_w": 10}`` or ``["nodes.n_w=10"]``,
as ``--set`` on the command line) and keyword arguments set top-level keys (a dict replaces the
whole section, as in a sweep: ``attack={"name": "alie"}`` drops the old attack's params). The
result folder is written as by ``byzsgd run``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzsgd.config import ExperimentConfig, apply_override, default_config_dict, read_yaml_mapping, set_dotted
from byzsgd.experiment import config_from_dict
from byzsgd.registry import ConfigError


@dataclass
class RunOutput:
    """What :func:`run` returns: one row per evaluated step, the summary, where they were written."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path
    config: ExperimentConfig

    @property
    def frame(self) -> Any:
        """The rows as a pandas DataFrame, or None when pandas is not installed."""
        try:
            import pandas
        except ImportError:
            return None
        return pandas.DataFrame(self.rows)


def make_config(
    config: Mapping[str, Any] | str | Path | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    **settings: Any,
) -> ExperimentConfig:
    """The validated config :func:`run` would run (a ConfigError names the bad field)."""
    if config is None:
        data = default_config_dict()
    elif isinstance(config, ExperimentConfig):
        data = config.to_dict()
    elif isinstance(config, (str, Path)):
        data = read_yaml_mapping(config, "config file")
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        raise ConfigError(f"config: expected a dict, a YAML path or an ExperimentConfig, got {type(config).__name__}")
    if "sweep" in data:
        raise ConfigError(
            "sweep: this file describes a sweep; run it with `byzsgd sweep` (byzsgd.run runs one experiment)"
        )
    for key, value in settings.items():
        data[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_dotted(data, key, copy.deepcopy(value))
    elif isinstance(overrides, str):
        raise ConfigError(f"overrides: expected a mapping or a list of key=value strings, got the string {overrides!r}")
    else:
        for override in overrides:
            apply_override(data, override)
    return config_from_dict(data)


def run(
    config: Mapping[str, Any] | str | Path | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> RunOutput:
    """Run one experiment (``runtime: local`` in this process, or ``ray``) and return its rows and
    summary. ``run_dir`` defaults to ``<output_dir>/<name>-<timestamp>``; ``on_row`` sees each row
    as it is evaluated. A failed run raises, after writing its summary."""
    from byzsgd.runner import run_experiment

    resolved = make_config(config, overrides, **settings)
    result = run_experiment(resolved, run_dir, on_row=on_row)
    return RunOutput(result.rows, result.summary, result.run_dir, resolved)
