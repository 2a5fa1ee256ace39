"""The Ray runtime: protocol nodes hosted by actors that send each other messages directly.
This module is the driver's side (start the actors from the plan, collect the servers' models);
the actors are in :mod:`byzsgd.runtime.actors`, joining Ray and placement in
:mod:`byzsgd.runtime.cluster`.

By default each node is its own actor (``ray.actors: null``); with ``ray.actors: k`` the nodes
are dealt over k actors, each built from the driver's plan (:class:`byzsgd.experiment.Experiment`).
An actor is a mailbox and a batcher: it queues incoming messages, hands them one at a time to the
node they are for in the order of their simulated network delays (:class:`byzsgd.bus.Mailbox`: so
co-hosted nodes see messages in different orders, as over a network), passes what that node sends
through the bus (:mod:`byzsgd.bus`), and delivers it:
in its own queue when the receiver lives here, otherwise batched, one ``deliver`` call per
receiving actor once its queue has run dry (a Ray call costs ~2 ms of CPU, shipping a payload
much less). A payload goes once per call, a small one inline, a large one as one ``ray.put``
shared by every call that carries it. A Byzantine node's attack runs in its shell when it needs
only the node's own vector; an omniscient attack goes through the fault-injector actor, to which
correct nodes of the attacked role also tap their outgoing payloads (fire and forget: a correct
node never waits for the adversary). Actors are spread over the cluster's machines or packed
onto few (``ray.placement``); those hosting a role of ``ray.gpu_roles`` request
``ray.num_gpus_per_actor`` GPUs and compute on the one Ray assigns them, the others on the CPU.

Payloads travel as float32 numpy vectors: Ray serializes them out of band, so a receiver on the
sender's machine reads the object store's copy in place (a read-only view, never copied until a
node stacks its quorum) and a receiver on another machine gets one copy per machine. Each actor
counts what it copies (``put_bytes`` into the object store, ``inline_bytes`` serialized into
calls) and what leaves its machine (``cross_node_bytes``): see :class:`Traffic`.

Every call is checked (:mod:`byzsgd.runtime.auth`): ``deliver`` carries the calling actor's index
and their pair's secret, and a message is accepted only from a sender that actor hosts; the
control calls carry the driver's secret. Every wait is bounded: the address is probed before
``ray.init`` (``ray.connect_timeout_s``), the actors must be up within ``ray.start_timeout_s``,
each report within ``ray.snapshot_timeout_s``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError

from byzsgd.bus import StalledError, counters_row
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import Experiment
from byzsgd.faults import needs_adversary
from byzsgd.metrics import Monitor
from byzsgd.runtime.actors import InjectorActor, NodeActor, setup_process
from byzsgd.runtime.auth import ActorKeys, draw_keys
from byzsgd.runtime.cluster import Placement, check_cluster_gpus, gpu_groups, start_ray


def report_steps(config: ExperimentConfig) -> list[int]:
    return sorted(set(range(0, config.steps, config.eval_every)) | {config.steps})


def run_ray(experiment: Experiment, monitor: Monitor) -> dict[str, Any]:
    config, groups = experiment.config, experiment.groups
    home = {node_id: index for index, group in enumerate(groups) for node_id in group}
    owns_ray = start_ray(config)
    hosts: list[Any] = []
    placement = adversary = None
    # The driver evaluates models on the cores the actors use: idle torch threads spinning here
    # would take CPU from them.
    driver_threads = torch.get_num_threads()
    setup_process(config)
    try:
        omniscient = needs_adversary(experiment)
        gpu_flags = gpu_groups(experiment)
        check_cluster_gpus(config, sum(gpu_flags), ray.cluster_resources())
        placement = Placement(config, [False] * omniscient + gpu_flags)  # the adversary computes on the CPU
        plan = ray.put(experiment)  # one copy in the object store, whatever the number of actors
        keys = draw_keys(len(groups))  # fresh per run: an actor of an earlier run knows none of them
        adversary = InjectorActor.options(**placement.options()).remote(plan) if omniscient else None
        for group, own, gpu in zip(groups, keys, gpu_flags, strict=True):
            hosts.append(NodeActor.options(**placement.options(gpu)).remote(plan, group, adversary, own.driver))
        located = [host.where.remote(own.driver) for host, own in zip(hosts, keys)]
        if adversary is not None:
            located.append(adversary.__ray_ready__.remote())  # Ray's own: the actor is up
        wait_for_actors(config, located, len(hosts) + omniscient)
        where = ray.get(located[: len(hosts)])
        ray_nodes = [w["ray_node"] for w in where]
        ray.get([host.connect.remote(own.driver, hosts, home, own, ray_nodes) for host, own in zip(hosts, keys)])
        ray.get([host.start.remote(own.driver) for host, own in zip(hosts, keys)])
        traffic = collect_reports(experiment, monitor, hosts, home, keys)
        return {
            "actors": len(hosts) + (adversary is not None),
            "devices": {node: where[home[node]]["device"] for node in experiment.node_ids},
            "ray_nodes": {node: ray_nodes[home[node]] for node in experiment.node_ids},
            **{f"{name}_per_step": round(traffic[name] / config.steps) for name in TRAFFIC_COUNTERS},
        }
    finally:
        for actor in [*hosts, *([adversary] if adversary is not None else [])]:
            ray.kill(actor)  # a sweep runs many experiments in one driver: leave no actor behind
        if placement is not None:
            placement.release()
        if owns_ray:
            ray.shutdown()
        torch.set_num_threads(driver_threads)


def wait_for_actors(config: ExperimentConfig, refs: list[Any], count: int) -> None:
    """Wait (at most ``ray.start_timeout_s``) until every actor is scheduled and built: Ray
    queues an actor the cluster has no room for, without a word, for ever."""
    try:
        ray.get(refs, timeout=config.ray.start_timeout_s)
    except GetTimeoutError:
        total, free = ray.cluster_resources(), ray.available_resources()
        raise StalledError(
            f"the {count} actors were not all up within ray.start_timeout_s={config.ray.start_timeout_s:g} s: "
            f"they request ray.num_cpus_per_actor={config.ray.num_cpus_per_actor} CPU each "
            f"({count * config.ray.num_cpus_per_actor:g} in all); the cluster has {total.get('CPU', 0):g} CPUs, "
            f"{free.get('CPU', 0):g} free (lower ray.num_cpus_per_actor, set ray.actors, add nodes, or raise "
            "ray.start_timeout_s if the cluster is only slow to start them)"
        ) from None


def collect_reports(
    experiment: Experiment, monitor: Monitor, hosts: list[Any], home: dict[str, int], keys: list[ActorKeys]
) -> Counter[str]:
    """Fetch every correct server's model at each reported step and feed the monitor; returns
    the actors' :class:`Traffic` counts at the last step."""
    config, roster = experiment.config, experiment.roster
    tokens = [own.driver for own in keys]
    traffic: Counter[str] = Counter()
    for step in report_steps(config):
        if not monitor.live_servers:
            raise StalledError("every correct server has crashed")
        refs = {
            server: hosts[home[server]].report.remote(tokens[home[server]], server, step)
            for server in monitor.live_servers
        }
        models = {}
        for server, ref in refs.items():
            try:
                models[server] = ray.get(ref, timeout=config.ray.snapshot_timeout_s)
            except RayActorError:
                monitor.drop_server(server)
            except GetTimeoutError:
                raise StalledError(
                    f"server {server} did not reach step {step} within {config.ray.snapshot_timeout_s} s "
                    f"(server steps: {server_steps(hosts, tokens, monitor.servers)})"
                ) from None
        stats = host_stats(hosts, tokens)
        rejections = [node["rejected"] for s in stats for n, node in s["nodes"].items() if not roster.is_byzantine(n)]
        counters = counters_row(
            sum((Counter(s["sent"]) for s in stats), Counter()),
            rejections + [s["gate"] for s in stats],  # calls every actor's shell refused
        )
        traffic = sum((Counter(s["traffic"]) for s in stats), Counter())
        counters.update({name: traffic[name] for name in TRAFFIC_COUNTERS})
        monitor.counters = lambda counters=counters: counters
        for server, vector in models.items():
            monitor.report(server, step, vector)
    return traffic


TRAFFIC_COUNTERS = ("put_bytes", "inline_bytes", "cross_node_bytes")


def host_stats(hosts: list[Any], tokens: list[bytes]) -> list[dict[str, Any]]:
    """Counters of every live actor (a crashed one has none to give)."""
    refs = [host.stats.remote(token) for host, token in zip(hosts, tokens)]
    stats = []
    for ref in refs:
        try:
            stats.append(ray.get(ref, timeout=30))
        except (RayActorError, GetTimeoutError):
            continue
    return stats


def server_steps(hosts: list[Any], tokens: list[bytes], servers: list[str]) -> dict[str, int]:
    return {n: node["step"] for s in host_stats(hosts, tokens) for n, node in s["nodes"].items() if n in servers}
