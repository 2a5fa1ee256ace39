"""Typed experiment configuration: YAML in, validated dataclasses out, clear errors.

A config file is layered over the embedded default (``byzsgd/configs/default.yaml``): each
top-level key it sets replaces the default's value for that key, a section (``attack:``,
``nodes:``, ...) as a whole, the way a sweep's grid replaces its base's keys. An empty file is
``byzsgd run``; fields neither file sets take the dataclass defaults below.

Protocol-specific options live in a top-level section named after the protocol (e.g.
``byzsgd: {period: 10}``); each protocol registers the dataclass that parses it.

This module is data and parsing (types, finiteness, known keys). It never imports the
protocols; :mod:`byzsgd.experiment` hands it their option types (``config_from_dict``,
``load_config``) and runs the checks: :mod:`byzsgd.checks` (shared), then the protocol's own.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from byzsgd.registry import ConfigError

DEFAULT_CONFIG = "default.yaml"


@dataclass
class NodesConfig:
    """How many servers and workers there are and how many of each may be Byzantine."""

    n_ps: int = 5
    f_ps: int = 1
    n_w: int = 7
    f_w: int = 2


@dataclass
class DataConfig:
    # digits, mnist5k, synthetic, mnist, cifar10, or "pkg.module:function" (see byzsgd.data)
    dataset: str = "digits"
    root: str | None = None  # folder of the local files of mnist and cifar10
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the dataset
    augment: bool = False  # random crop (padding 4) and horizontal flip of each training batch
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5  # Dirichlet concentration: smaller is more heterogeneous
    batch_size: int = 32
    # What batch_size counts: the samples of each mini-batch a worker draws ("per_worker"), or the
    # samples a whole step draws, split over its distinct mini-batches ("per_step": systems with
    # different redundancy then train on the same global batch). See byzsgd.data.batch_size_of.
    batch_accounting: Literal["per_worker", "per_step"] = "per_worker"
    test_fraction: float = 0.2
    eval_samples: int = 512  # training samples used to report the training loss


@dataclass
class ModelConfig:
    # logreg, mlp, cnn, cifarnet, resnet18, or "pkg.module:factory" (see byzsgd.models)
    name: str = "mlp"
    hidden: int = 64  # mlp's hidden units
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model factory


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleConfig:
    """A named aggregation rule and its parameters (see byzsgd.aggregators)."""

    name: str = "mda"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    """What the Byzantine nodes of one role send, and which nodes they are."""

    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    count: int | None = None  # how many are Byzantine; default: the tolerated f
    ids: list[int] | None = None  # fixed node indices; default: seeded random choice
    rotate_every: int | None = None  # workers only: redraw the seeded random choice every this many rounds


@dataclass
class NetworkConfig:
    """The message bus. The in-process runtime simulates delays in time units; the Ray runtime
    has a real network and injects only the extra delays below, at ``time_unit_s`` per unit
    (``delay`` and ``jitter`` only order each Ray actor's queue: see byzsgd.bus.Mailbox)."""

    delay: float = 1.0  # mean message delay, in simulated time units
    jitter: float = 0.5  # delays are uniform in delay * [1 - jitter, 1 + jitter]
    reorder: float = 0.0  # probability that a message is held back, so later ones overtake it
    reorder_delay: float = 3.0  # how long a held-back message waits, in time units
    observe_timeout: float = 2.0  # how long an omniscient adversary waits for the round's correct vectors
    time_unit_s: float = 0.02  # Ray runtime: seconds per time unit of injected delay


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto" or ray://...: join a cluster
    num_cpus_per_actor: float = 0.05
    num_cpus: int | None = None  # local Ray only; default: all cores
    object_store_memory: int = 512 * 1024 * 1024  # local Ray only
    torch_threads: int = 1
    snapshot_timeout_s: float = 120.0  # how long to wait for a server to report a step
    # How long joining a cluster (ray.init) and then scheduling and building the actors may each
    # take (a cluster without room for them never schedules them), and how long the driver tries
    # to reach a cluster's address at all before ray.init.
    start_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    # Where the node actors go on a multi-machine cluster: "spread" over as many machines as
    # possible (real network between nodes), or "pack"ed onto as few as possible (one placement group).
    placement: Literal["spread", "pack"] = "spread"
    # How many actors host the protocol nodes. None: one per node (every node its own process).
    # k: servers share some of k actors and workers the others, and actors batch what they send
    # each other; on a laptop, cores + 1 actors (servers in one, workers over the rest) avoid a
    # Ray call per message.
    actors: int | None = None
    # GPUs each actor hosting a role of gpu_roles requests from Ray (a fraction: several actors
    # share one GPU). 0: no actor requests one, and every actor computes on the CPU.
    num_gpus_per_actor: float = 0.0
    gpu_roles: list[Literal["workers", "servers"]] = field(default_factory=lambda: ["workers"])


@dataclass
class ExperimentConfig:
    name: str = "byzsgd"
    seed: int = 0
    protocol: str = "byzsgd"
    runtime: Literal["ray", "local"] = "ray"
    steps: int = 200
    eval_every: int = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "results"
    # Modules imported before anything is built, in the driver and in every actor and sweep
    # process: where your own aggregators, attacks and protocols register (see byzsgd.plugins).
    plugins: list[str] = field(default_factory=list)
    nodes: NodesConfig = field(default_factory=NodesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    aggregator: RuleConfig = field(default_factory=RuleConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    server_attack: AttackConfig = field(default_factory=AttackConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Options of the selected protocol, parsed by the dataclass that protocol registered.
    options: Any = None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in data.items()}
        if self.options is not None:
            data[self.protocol] = dataclasses.asdict(self.options)
        return copy.deepcopy(data)


# --- loading -----------------------------------------------------------------------------


def default_config_dict() -> dict[str, Any]:
    text = resources.files("byzsgd.configs").joinpath(DEFAULT_CONFIG).read_text()
    return yaml.safe_load(text) or {}


def read_config_dict(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The embedded default, the YAML file's keys over it, then ``key=value`` overrides (unchecked:
    :func:`byzsgd.experiment.load_config` checks them)."""
    data = default_config_dict()
    if path is not None:
        data.update(read_config_file(path))
    for override in overrides:
        apply_override(data, override)
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """An experiment file; a sweep file is refused with the command that runs it."""
    data = read_yaml_mapping(path, "config file")
    if "sweep" in data:
        raise ConfigError(f"{path} is a sweep file (it has a sweep: section); run it with: byzsgd sweep {path}")
    return data


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or a ConfigError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not valid UTF-8)") from None
    except OSError as error:
        raise ConfigError(f"{what} {str(path)!r}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set a dotted key from ``key=value``; the value is parsed as YAML (``lr=0.1`` is a float)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. nodes.n_w=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML: {yaml_problem(error)}") from None
    set_dotted(data, key.strip(), value)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several lines)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_config(data: dict[str, Any], options: Mapping[str, type]) -> ExperimentConfig:
    """Parse a config mapping (types, finiteness, known keys). ``options`` maps each protocol's
    name to the dataclass of its option section; :func:`byzsgd.experiment.config_from_dict`
    then runs the shared checks (:func:`byzsgd.checks.validate`) and the protocol's own rules."""
    data = dict(data)
    protocol = data.get("protocol", ExperimentConfig.protocol)
    if not isinstance(protocol, str):
        raise ConfigError(f"protocol: expected a name, got {protocol!r}")
    if protocol not in options:
        raise ConfigError(f"protocol: unknown protocol {protocol!r}; known: {', '.join(sorted(options))}")
    sections = {name: data.pop(name) for name in options if name in data}
    for name, section in sections.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{name}: expected a mapping of protocol options")
        # Another protocol's options would be silently ignored; the embedded default's own
        # section is not the user's doing, so it may stay when only the protocol changes.
        if name != protocol and section and section != default_config_dict().get(name):
            raise ConfigError(
                f"{name}: these options apply to protocol {name!r}, not to the chosen {protocol!r} "
                f"(move them to a '{protocol}:' section or remove them)"
            )
    config = parse_dataclass(ExperimentConfig, data, "", extra_keys=sorted(options))
    config.options = parse_dataclass(options[protocol], sections.get(protocol) or {}, protocol)
    return config


def parse_dataclass(cls: type, data: Any, path: str, extra_keys: list[str] = ()) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "options"}
    values = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted([*fields, *extra_keys]))
            raise ConfigError(f"{join(path, key)}: unknown key (known: {known})")
        values[key] = parse_value(hints[key], value, join(path, key))
    return cls(**values)


def parse_value(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return parse_value(inner, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return parse_dataclass(hint, value if value is not None else {}, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [parse_value(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:  # numpy, torch and Ray take 64-bit integers
            raise ConfigError(f"{path}={value}: out of range (a 64-bit integer)")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}={value}: must be a finite number")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported config type {hint!r}")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def byzantine_count(attack: AttackConfig, f: int) -> int:
    """How many nodes of a role are Byzantine: none without an attack, else ids/count/f."""
    if attack.name == "none":
        return 0
    if attack.ids is not None:
        return len(attack.ids)
    return f if attack.count is None else attack.count
