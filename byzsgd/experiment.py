"""Assembly: a parsed config becomes the plan of one run, once, in the driver.

:func:`config_from_dict` / :func:`load_config` parse a config and check it (the shared field
checks of :mod:`byzsgd.config`, then the protocol's own rules). :func:`assemble` turns it into an
:class:`Experiment`: the config, the protocol's derived settings, the node ids, the roster (who is
Byzantine, in which role, at which round when attackers rotate) and the Ray actor groups. The
runtimes and the fault injector take that plan; a Ray actor receives it (small plain data) and
builds only its own nodes from it, so nothing is parsed, validated or searched twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from byzsgd.attacks import ATTACKS
from byzsgd.checks import validate
from byzsgd.config import (
    AttackConfig,
    ExperimentConfig,
    RayConfig,
    RuleConfig,
    byzantine_count,
    parse_config,
    read_config_dict,
)
from byzsgd.plugins import load_plugins
from byzsgd.protocols import PROTOCOLS, Protocol
from byzsgd.registry import ConfigError

if TYPE_CHECKING:
    from byzsgd.protocols.base import Node


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Parse and check a config mapping: the shared field checks, then the protocol's rules."""
    load_plugins(data.get("plugins"))  # before any registered name (protocol, rule, attack) is looked up
    config = parse_config(data, {name: PROTOCOLS[name].options for name in PROTOCOLS.names()})
    validate(config)
    PROTOCOLS[config.protocol].validate(config)
    check_local_ray_room(config)
    return config


def check_local_ray_room(config: ExperimentConfig) -> None:
    """Refuse now what the local Ray could never schedule (its actors would wait forever):
    every actor takes ``ray.num_cpus_per_actor`` of the ``ray.num_cpus`` the driver starts it
    with. A cluster joined by address may grow (autoscaling): its room is checked when the
    actors are created, with a timeout (``ray.start_timeout_s``)."""
    if config.runtime != "ray" or config.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    protocol = PROTOCOLS[config.protocol]
    actors = len(host_groups(protocol.server_ids(config), protocol.worker_ids(config), config.ray.actors))
    actors += needs_injector_actor(config)
    cpus = config.ray.num_cpus or os.cpu_count() or 1
    needed = actors * config.ray.num_cpus_per_actor
    if needed > cpus + 1e-6:
        where = f"ray.num_cpus={config.ray.num_cpus}" if config.ray.num_cpus else f"all {cpus} cores (ray.num_cpus)"
        raise ConfigError(
            f"ray.num_cpus_per_actor={config.ray.num_cpus_per_actor} x {actors} actors needs {needed:g} CPUs, "
            f"but the local Ray gets {where}: lower ray.num_cpus_per_actor, host the nodes in fewer actors "
            f"(ray.actors), or raise ray.num_cpus"
        )


def needs_injector_actor(config: ExperimentConfig) -> bool:
    """Whether an omniscient attack runs (on Ray, the fault injector is then an actor too)."""
    for attack, f in ((config.attack, config.nodes.f_w), (config.server_attack, config.nodes.f_ps)):
        if byzantine_count(attack, f) and ATTACKS.build(attack.name, **attack.params).omniscient:
            return True
    return False


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML file (or the embedded default), apply ``key=value`` overrides, check."""
    return config_from_dict(read_config_dict(path, overrides))


def ignored_settings(config: ExperimentConfig) -> list[str]:
    """Settings changed from their defaults that the chosen runtime or protocol does not use, one
    line each. Warnings, not errors: ``--runtime local`` or a sweep's variants switch runtime and
    protocol under one file's settings, and those runs must still start."""
    notes = []
    if config.runtime == "local":
        default = RayConfig()
        changed = [f"ray.{f.name}" for f in fields(default) if getattr(config.ray, f.name) != getattr(default, f.name)]
        if changed:
            notes.append(f"{', '.join(changed)}: not used with runtime: local (they configure the Ray runtime)")
    if not PROTOCOLS[config.protocol].uses_aggregator and config.aggregator != RuleConfig():
        worker_attack = ATTACKS.build(config.attack.name, **config.attack.params)
        if not (worker_attack.omniscient and byzantine_count(config.attack, config.nodes.f_w)):
            notes.append(
                f"aggregator.name={config.aggregator.name!r}: not used by protocol {config.protocol!r} "
                "(its server decodes the exact gradient sum)"
            )
    attack = config.attack
    if attack.name != "none" and config.nodes.f_w == 0 and attack.count is None and attack.ids is None:
        # The count defaults to f_w: a sweep's baseline row (f_w: 0) keeps the file's attack on purpose.
        notes.append(
            f"attack.name={attack.name!r} with nodes.f_w=0: no worker is Byzantine, so the attack never runs "
            "(raise nodes.f_w to attack)"
        )
    return notes


def choose_byzantine(attack: AttackConfig, node_ids: list[str], f: int, seed: int, epoch: int = 0) -> list[str]:
    """The Byzantine nodes of one role: fixed ``ids``, or a seeded random draw (redrawn every
    epoch when ``rotate_every`` is set)."""
    if attack.ids is not None:
        return [node_ids[i] for i in attack.ids]
    count = byzantine_count(attack, f)
    chosen = np.random.default_rng([seed, epoch]).choice(len(node_ids), size=count, replace=False)
    return [node_ids[i] for i in sorted(chosen)]


@dataclass
class RoleRoster:
    """Who of one role (workers or servers) is Byzantine, and when."""

    ids: list[str]  # every node of the role
    attack: AttackConfig
    count: int  # Byzantine at any one round
    fixed: list[str]  # the Byzantine nodes when they do not rotate
    seed: int
    _epochs: dict[int, frozenset[str]] = field(default_factory=dict, repr=False)

    @property
    def rotate_every(self) -> int | None:
        return self.attack.rotate_every

    @property
    def correct_count(self) -> int:
        return len(self.ids) - self.count

    def members(self, round_: int | None = None) -> frozenset[str]:
        """Byzantine at ``round_``; with None, every node that is Byzantine at some round."""
        if not self.count:
            return frozenset()
        if self.rotate_every is None:
            return frozenset(self.fixed)
        if round_ is None:
            return frozenset(self.ids)
        epoch = max(round_, 0) // self.rotate_every
        if epoch not in self._epochs:  # a pure function of the seed: every process draws alike
            self._epochs[epoch] = frozenset(choose_byzantine(self.attack, self.ids, self.count, self.seed, epoch))
        return self._epochs[epoch]


@dataclass
class Roster:
    workers: RoleRoster
    servers: RoleRoster

    def role(self, node_id: str) -> RoleRoster:
        return self.workers if node_id in self.workers.ids else self.servers

    def is_byzantine(self, node_id: str, round_: int | None = None) -> bool:
        """Whether ``node_id`` attacks at ``round_`` (None: at some round of the run)."""
        return node_id in self.role(node_id).members(round_)

    @property
    def byzantine(self) -> list[str]:
        """Every node that is Byzantine at some round."""
        return sorted(self.workers.members() | self.servers.members())


def make_roster(config: ExperimentConfig, protocol: Protocol, servers: list[str], workers: list[str]) -> Roster:
    nodes = config.nodes
    worker_count = byzantine_count(config.attack, nodes.f_w)
    worker_seed = config.seed * 7919 + 1
    fixed = choose_byzantine(config.attack, workers, nodes.f_w, worker_seed)
    if worker_count and config.attack.ids is None and config.attack.rotate_every is None:
        # Some protocols (DETOX, ByzShield) know which workers an omniscient adversary picks.
        worst = protocol.worst_case_workers(config, worker_count)
        if worst is not None:
            fixed = [workers[i] for i in worst]
    server_seed = config.seed * 7919 + 2
    return Roster(
        workers=RoleRoster(workers, config.attack, worker_count, fixed, worker_seed),
        servers=RoleRoster(
            servers,
            config.server_attack,
            byzantine_count(config.server_attack, nodes.f_ps),
            choose_byzantine(config.server_attack, servers, nodes.f_ps, server_seed),
            server_seed,
        ),
    )


def host_groups(servers: list[str], workers: list[str], actors: int | None) -> list[list[str]]:
    """The nodes each Ray actor hosts: one node per actor, or ``actors`` actors of which some
    host servers and the others workers, in proportion to their counts. Roles talk to each
    other, so a phase's messages then cross in one call per pair of actors, and messages among
    servers (ByzSGD's Gather) stay inside their actors."""
    nodes = servers + workers
    if actors is None or actors >= len(nodes):
        return [[node] for node in nodes]
    if actors == 1 or not servers or not workers:
        return [nodes[i::actors] for i in range(actors)]
    server_actors = min(max(1, round(actors * len(servers) / len(nodes))), len(servers), actors - 1)
    worker_actors = min(actors - server_actors, len(workers))
    return [servers[i::server_actors] for i in range(server_actors)] + [
        workers[i::worker_actors] for i in range(worker_actors)
    ]


@dataclass
class Experiment:
    """The plan of one run: plain data, small enough to send to every Ray actor."""

    config: ExperimentConfig
    servers: list[str]
    workers: list[str]
    roster: Roster
    settings: dict[str, Any]  # the protocol's derived settings (e.g. ByzSGD's gather period)
    groups: list[list[str]]  # the nodes each Ray actor hosts
    derived: dict[str, Any] = field(default_factory=dict)  # the protocol's searches (Protocol.derive)
    gradient_quorum: int = 0  # how many gradients a correct server aggregates (Protocol.gradient_quorum)

    @property
    def protocol(self) -> Protocol:
        return PROTOCOLS[self.config.protocol]

    @property
    def node_ids(self) -> list[str]:
        return self.servers + self.workers

    @property
    def correct_servers(self) -> list[str]:
        return [s for s in self.servers if not self.roster.is_byzantine(s)]

    def make_nodes(self, node_ids: list[str], workload_for: Callable[[str], Any]) -> dict[str, Node]:
        """Build ``node_ids``, each on its workload (the fault injector's ``workload_for``: a
        label-flipping worker computes on flipped labels)."""
        protocol = self.protocol
        protocol.restore(self.derived)
        return {node_id: protocol.make_node(self.config, node_id, workload_for(node_id)) for node_id in node_ids}


def assemble(config: ExperimentConfig) -> Experiment:
    """The plan of a run from a checked config (see :func:`config_from_dict`)."""
    protocol = PROTOCOLS[config.protocol]
    servers, workers = protocol.server_ids(config), protocol.worker_ids(config)
    derived = protocol.derive(config)  # first: the searches below (roster, describe) reuse it
    return Experiment(
        config=config,
        servers=servers,
        workers=workers,
        roster=make_roster(config, protocol, servers, workers),
        settings=protocol.describe(config),
        groups=host_groups(servers, workers, config.ray.actors),
        derived=derived,
        gradient_quorum=protocol.gradient_quorum(config),
    )
