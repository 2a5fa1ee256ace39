"""Sweep planning: a sweep file becomes its runs (grid x variants), each checked and named by
the hash of its resolved config."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzsgd.config import ExperimentConfig, apply_override, default_config_dict, read_yaml_mapping, set_dotted
from byzsgd.experiment import config_from_dict
from byzsgd.protocols import PROTOCOLS
from byzsgd.registry import ConfigError
from byzsgd.storage import resolve_output

SWEEP_SECTION = "sweep"
# Where a run is written, what it is called and how it reaches Ray do not change its result,
# so a sweep resumed on a cluster finds the runs it made on a laptop.
UNHASHED = ("name", "output_dir", "ray")


@dataclass
class PlannedRun:
    run_id: str  # its folder name: <short name>-<hash>
    digest: str
    label: str | None
    overrides: dict[str, Any]  # the swept dotted keys this run sets (grid point, then variant)
    config: ExperimentConfig


@dataclass
class SweepPlan:
    name: str
    out_dir: Path
    runs: list[PlannedRun]
    swept_keys: list[str]  # grid keys then variant keys, in file order
    duplicates: int = 0  # grid x variant combinations that resolved to an already planned run
    source: dict[str, Any] = field(default_factory=dict)  # the sweep file after --set

    def run_dir(self, run: PlannedRun) -> Path:
        return self.out_dir / run.run_id


# --- planning -----------------------------------------------------------------------------


def load_sweep(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), out_dir: str | Path | None = None
) -> SweepPlan:
    """Read a sweep file, layer its keys over the embedded default (as ``byzsgd run`` does with an
    experiment file), apply ``key=value`` overrides to that base, and expand it."""
    return expand_sweep({**default_config_dict(), **read_yaml_mapping(path, "sweep file")}, overrides, out_dir)


def expand_sweep(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), out_dir: str | Path | None = None
) -> SweepPlan:
    """Every run of a sweep, validated before anything runs: a bad key fails the whole plan."""
    data = copy.deepcopy(data)
    # --set applies to the base, so to every run (the grid and variants override it), or edits
    # the sweep itself: --set sweep.grid.seed=[0] for a quick look.
    for override in overrides:
        apply_override(data, override)
    base = copy.deepcopy(data)
    section = base.pop(SWEEP_SECTION, None) or {}
    grid, variants = parse_section(section)
    # The base need not be a valid experiment by itself (variants may complete it): only the
    # runs are validated.
    name = base.get("name", ExperimentConfig.name)
    output_dir = base.get("output_dir", ExperimentConfig.output_dir)
    for key, value in (("name", name), ("output_dir", output_dir)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    out_dir = resolve_output(out_dir if out_dir is not None else Path(output_dir) / name)

    swept = list(grid) + [k for v in variants for k in v if k != "label"]
    swept_keys = list(dict.fromkeys(swept))
    runs: dict[str, PlannedRun] = {}
    duplicates = 0
    for variant in variants:
        label = variant.get("label")
        for point in itertools.product(*grid.values()):
            settings = dict(zip(grid, point))
            settings.update({k: v for k, v in variant.items() if k != "label"})
            short = short_name(label, dict(zip(grid, point)))
            run_data = copy.deepcopy(base)
            for key, value in settings.items():
                try:
                    set_dotted(run_data, key, copy.deepcopy(value))
                except ConfigError as error:
                    raise ConfigError(f"sweep key {key!r}: {error}") from None
            run_data["name"] = short
            run_data["output_dir"] = str(out_dir)
            if "protocol" in swept_keys:
                # A base shared by runs of several protocols holds each one's options section:
                # a run keeps only its own protocol's.
                for other in set(PROTOCOLS.names()) - {run_data.get("protocol")}:
                    run_data.pop(other, None)
            config = resolve(run_data, f"sweep run {short!r} ({describe_settings(settings)})")
            digest = config_hash(config)
            if digest in runs:
                duplicates += 1
                continue
            runs[digest] = PlannedRun(f"{short}-{digest}", digest, label, settings, config)
    return SweepPlan(name, Path(out_dir), list(runs.values()), swept_keys, duplicates, data)


def parse_section(section: Any) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    if not isinstance(section, dict):
        raise ConfigError(f"sweep: expected a mapping with grid and/or variants, got {section!r}")
    unknown = [k for k in section if k not in ("grid", "variants")]
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}: unknown key (known: grid, variants)")
    grid = section.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep.grid: expected a mapping of dotted keys to lists, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep.grid: keys must be dotted config keys, got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}: expected a non-empty list of values, got {values!r} (write [value])")
    variants = section.get("variants")
    if variants is None:
        variants = [{}]
    if not isinstance(variants, list) or not variants:
        raise ConfigError(f"sweep.variants: expected a non-empty list of mappings, got {variants!r}")
    labels = []
    for i, variant in enumerate(variants):
        if not isinstance(variant, dict):
            raise ConfigError(f"sweep.variants[{i}]: expected a mapping of dotted keys to values, got {variant!r}")
        label = variant.get("label")
        if label is not None:
            if not isinstance(label, str) or not label:
                raise ConfigError(f"sweep.variants[{i}].label: expected a non-empty string, got {label!r}")
            if label in labels:
                raise ConfigError(f"sweep.variants[{i}].label: {label!r} is used twice")
            labels.append(label)
    return grid, variants


def resolve(data: dict[str, Any], where: str) -> ExperimentConfig:
    try:
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def config_hash(config: ExperimentConfig) -> str:
    """Ten hex digits identifying what a run computes: same resolved config, same id."""
    data = {k: v for k, v in config.to_dict().items() if k not in UNHASHED}
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def short_name(label: str | None, grid_point: dict[str, Any]) -> str:
    """A readable folder prefix: the variant's label, then the grid values (signflip, seed1)."""
    parts = [label] if label else []
    for key, value in grid_point.items():
        if isinstance(value, dict):
            parts.append(str(value.get("name", key.rsplit(".", 1)[-1])))
        elif isinstance(value, str):
            parts.append(value)
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}{value}")
    name = re.sub(r"[^A-Za-z0-9._+=]+", "-", "-".join(parts)).strip("-.")
    return name[:60] or "run"


def describe_value(value: Any) -> str:
    """A mapping with a name reads as name(key=value, ...), one without as key=value key=value."""
    if isinstance(value, dict) and "name" in value:
        extras = {k: v for k, v in value.items() if k not in ("name", "params") and v is not None}
        params = {**(value.get("params") or {}), **extras}
        inner = ", ".join(f"{k}={v}" for k, v in params.items())
        return f"{value['name']}({inner})" if inner else str(value["name"])
    if isinstance(value, dict):
        return " ".join(f"{k}={describe_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def describe_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={describe_value(v)}" for k, v in settings.items()) or "base"


def get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
