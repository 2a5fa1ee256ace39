"""Joining or starting Ray within bounded waits, and where the actors go: spread or packed,
GPU requests for the roles of ``ray.gpu_roles``, checked against the cluster's resources."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from byzsgd.bus import StalledError
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import Experiment
from byzsgd.registry import ConfigError


def start_ray(config: ExperimentConfig) -> bool:
    """Connect to Ray; returns whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address, source = cluster_address(config)
    # ray.init replaces a SIGTERM handler by one that exits at once; the caller's (the CLI's
    # turns SIGTERM into an exception, so the run records how it ended and shuts Ray down) wins.
    caller_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if address:
        probe_address(address, config.ray.connect_timeout_s, source)
        join_cluster(address, config.ray.start_timeout_s, source)
    else:
        ray.init(
            num_cpus=config.ray.num_cpus,
            object_store_memory=config.ray.object_store_memory,
            include_dashboard=False,
            log_to_driver=True,
        )
    if callable(caller_sigterm):
        signal.signal(signal.SIGTERM, caller_sigterm)
    return True


def cluster_address(config: ExperimentConfig) -> tuple[str | None, str]:
    """The cluster a run joins, and the setting that named it; None: start a local Ray. Inside a
    Ray job (ray job submit) RAY_ADDRESS names the cluster: join it, start nothing."""
    if config.ray.address:
        return config.ray.address, "ray.address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def probe_cluster(config: ExperimentConfig) -> None:
    """Fail fast, before anything is written, when the cluster to join does not answer."""
    address, source = cluster_address(config)
    if address:
        probe_address(address, config.ray.connect_timeout_s, source)


def join_cluster(address: str, timeout_s: float, source: str) -> None:
    """``ray.init(address)``, given at most ``timeout_s``: something that answers at the
    address but is not a Ray head (a dashboard's port, another service) makes it retry for
    minutes. It runs in a daemon thread, left behind when it hangs (the command then ends)."""
    outcome: dict[str, BaseException] = {}

    def connect() -> None:
        try:
            ray.init(address=address, log_to_driver=True)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    quiet = _NoSigtermWarning()
    worker_log = logging.getLogger("ray._private.worker")
    worker_log.addFilter(quiet)  # the caller's SIGTERM handler is kept anyway (see start_ray)
    try:
        thread = threading.Thread(target=connect, name="ray-init", daemon=True)
        thread.start()
        thread.join(timeout_s)
    finally:
        worker_log.removeFilter(quiet)
    if thread.is_alive():
        raise UnreachableClusterError(
            f"something answers there but ray.init did not join a cluster within ray.start_timeout_s={timeout_s:g} s "
            f"({source}: is it a head's GCS port, 6379 by default? 8265 is the dashboard: submit a job instead)"
        )
    if "error" in outcome:
        raise outcome["error"]


class _NoSigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class UnreachableClusterError(ConnectionError):
    """Nothing answers at the Ray address (ray.init would retry for minutes)."""


def probe_address(address: str, timeout_s: float, source: str = "ray.address") -> None:
    """Fail fast when nothing listens at ``HOST:PORT`` or ``ray://HOST:PORT`` (``auto`` is
    resolved by Ray from this machine's running cluster, and fails fast by itself)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s (ray.connect_timeout_s)"
    except socket.gaierror:
        reason = f"unknown host {host!r}"
    except OSError as error:
        reason = (error.strerror or type(error).__name__).lower()
    raise UnreachableClusterError(
        f"nothing answers there ({source}: {reason}); start a cluster there (ray start --head --port={port}) "
        f"or fix {source} (a head's HOST:6379, ray://HOST:10001, or unset it to start a local Ray)"
    )


def gpu_groups(experiment: Experiment) -> list[bool]:
    """Which actor groups request GPUs: those hosting a node of a role in ``ray.gpu_roles``."""
    config = experiment.config
    if not config.ray.num_gpus_per_actor:
        return [False] * len(experiment.groups)
    roles = {"servers": set(experiment.servers), "workers": set(experiment.workers)}
    wanted = set().union(*(roles[role] for role in config.ray.gpu_roles))
    return [any(node in wanted for node in group) for group in experiment.groups]


def check_cluster_gpus(config: ExperimentConfig, gpu_actors: int, resources: dict[str, float]) -> None:
    """Refuse at start-up a run whose GPU actors the cluster (``ray.cluster_resources()``) cannot
    place: Ray would wait for them forever."""
    per_actor = config.ray.num_gpus_per_actor
    if not gpu_actors or not per_actor:
        return
    gpus = resources.get("GPU", 0)
    if not gpus:
        raise ConfigError(
            f"ray.num_gpus_per_actor={per_actor}: the Ray cluster has no GPU (CPU: {resources.get('CPU', 0):g}); "
            "set it to 0 to run every actor on the CPU"
        )
    # A fractional share never spans two GPUs: each holds floor(1 / share) actors.
    capacity = math.floor(gpus) * math.floor(1 / per_actor + 1e-9) if per_actor <= 1 else gpus // per_actor
    if gpu_actors > capacity:
        raise ConfigError(
            f"ray.num_gpus_per_actor={per_actor}: {gpu_actors} actors of ray.gpu_roles={config.ray.gpu_roles} "
            f"need GPUs, the cluster's {gpus:g} GPU hold {capacity:g} of them "
            "(lower ray.num_gpus_per_actor, use ray.actors, or add GPUs)"
        )


class Placement:
    """Where the actors go (``ray.placement``): Ray's SPREAD strategy, or one PACK placement
    group with a bundle per actor. An actor hosting a role of ``ray.gpu_roles`` also requests
    ``ray.num_gpus_per_actor`` GPUs, so Ray puts it on a machine with a GPU and assigns it one."""

    def __init__(self, config: ExperimentConfig, gpu_flags: list[bool]) -> None:
        self.cpus = config.ray.num_cpus_per_actor
        self.gpus = config.ray.num_gpus_per_actor
        self.group = None
        self.next_bundle = 0
        if config.ray.placement == "pack":
            bundles = [{"CPU": self.cpus, **({"GPU": self.gpus} if gpu else {})} for gpu in gpu_flags]
            self.group = placement_group(bundles, strategy="PACK")
            try:
                ray.get(self.group.ready(), timeout=config.ray.snapshot_timeout_s)
            except GetTimeoutError:
                raise StalledError(
                    f"ray.placement=pack: the cluster did not grant {len(bundles)} bundles of {self.cpus} CPU "
                    f"within {config.ray.snapshot_timeout_s} s (lower ray.num_cpus_per_actor or add nodes)"
                ) from None

    def options(self, gpu: bool = False) -> dict[str, Any]:
        """``.options(...)`` of the next actor (``gpu``: it hosts a role of ``ray.gpu_roles``;
        with a placement group, actors must be created in the order of ``gpu_flags``)."""
        resources = {"num_cpus": self.cpus, "num_gpus": self.gpus if gpu else 0}
        if self.group is None:
            return {**resources, "scheduling_strategy": "SPREAD"}
        index, self.next_bundle = self.next_bundle, self.next_bundle + 1
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)
        return {**resources, "scheduling_strategy": strategy}

    def release(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
