"""The Ray runtime: protocol nodes hosted by actors that send each other messages directly.

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

import asyncio
import logging
import math
import os
import signal
import socket
import threading
import zlib
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from byzsgd.bus import Bus, Mailbox, Planned, StalledError, counters_row
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import Experiment, host_groups
from byzsgd.faults import FaultInjector, needs_adversary
from byzsgd.messages import Message
from byzsgd.metrics import Monitor
from byzsgd.plugins import load_plugins
from byzsgd.protocols.base import Node
from byzsgd.registry import ConfigError
from byzsgd.runtime.auth import ActorKeys, Gate, Header, draw_keys
from byzsgd.training import Workload, actor_device

__all__ = [
    "InjectorActor",
    "NodeActor",
    "Placement",
    "Traffic",
    "check_cluster_gpus",
    "gpu_groups",
    "host_groups",
    "run_ray",
    "shipped",
    "start_ray",
]


def _setup_process(config: ExperimentConfig) -> None:
    torch.set_num_threads(config.ray.torch_threads)


@ray.remote
class InjectorActor:
    """Hosts the fault injector, so one adversary coordinates every Byzantine node."""

    def __init__(self, experiment: Experiment) -> None:
        load_plugins(experiment.config.plugins)  # the user's registered rules and attacks exist here too
        config = experiment.config
        self.injector = FaultInjector(experiment)
        self.wait_s = config.network.observe_timeout * config.network.time_unit_s
        self.observed = asyncio.Event()

    async def observe(self, messages: list[Message]) -> None:
        self.injector.observe(messages)
        self.observed.set()

    async def corrupt(self, messages: list[Message]) -> list[tuple[Message, float]]:
        """The attacked messages with their extra delays; an omniscient attack first waits (at
        most ``wait_s``) for the correct vectors of the round, then uses what it has seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not self.injector.ready(messages) and (remaining := deadline - loop.time()) > 0:
            self.observed.clear()
            try:
                await asyncio.wait_for(self.observed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self.injector.corrupt(messages)


@ray.remote
class NodeActor:
    """Hosts ``node_ids`` of the driver's plan; ``adversary`` is the injector actor when an
    omniscient attack runs; ``driver_secret`` is what the driver's control calls carry."""

    def __init__(
        self, experiment: Experiment, node_ids: list[str], adversary: Any = None, driver_secret: bytes = b""
    ) -> None:
        load_plugins(experiment.config.plugins)  # the user's registered rules and attacks exist here too
        config = experiment.config
        _setup_process(config)
        # Attacks that need only the node's own vector run here: no round trip to the adversary.
        injector = FaultInjector(experiment)
        self.device = actor_device(config.device, ray.get_gpu_ids())
        self.ray_node = ray.get_runtime_context().get_node_id()
        # One per process: its nodes share the data and the model's buffers.
        workload = Workload(config, self.device)
        self.nodes: dict[str, Node] = experiment.make_nodes(node_ids, lambda n: injector.workload_for(n, workload))
        self.adversary = adversary
        omniscient = {n for n in node_ids if injector.role(n).attack.omniscient}
        self.colluding = {n for n in omniscient if injector.is_byzantine(n)} if adversary else set()
        self.tapped = {n for n in node_ids if injector.observes(n)} if adversary else set()
        self.time_unit_s = config.network.time_unit_s
        stream = zlib.crc32(",".join(node_ids).encode())  # each actor its own seeded draws
        self.bus = Bus(
            injector,
            config.network,
            experiment.node_ids,
            delay_rng=np.random.default_rng([config.seed, 1, stream]),
            reorder_rng=np.random.default_rng([config.seed, 2, stream]),
        )
        self.queue = Mailbox()
        self.outbox: defaultdict[int, list[tuple[Message, float]]] = defaultdict(list)  # with their due times
        self.hosts: list[Any] = []
        self.home: dict[str, int] = {}
        self.index = -1
        self.gate = Gate(driver_secret)
        self.pair_secrets: dict[int, bytes] = {}
        self.ray_calls = 0
        self.traffic = Traffic()
        self.snapshots: dict[tuple[str, int], np.ndarray] = {}
        self.waiters: dict[tuple[str, int], asyncio.Future] = {}

    # Control calls answer only the driver: each carries this actor's driver secret.

    def where(self, token: bytes) -> dict[str, str]:
        """The Ray node (machine) this actor runs on and the device its nodes compute on."""
        self._check_driver(token)
        return {"ray_node": self.ray_node, "device": self.device}

    def _check_driver(self, token: Any) -> None:
        if not self.gate.from_driver(token):
            raise PermissionError("not the driver: a control call without this actor's driver secret")

    def connect(
        self,
        token: bytes,
        hosts: list[Any],
        home: dict[str, int],
        keys: ActorKeys,
        ray_nodes: list[str] | None = None,
    ) -> None:
        """Every actor's handle, which actor hosts each node, this actor's secrets, and the Ray
        node each actor runs on (to count the bytes that leave this machine; default: this one)."""
        self._check_driver(token)
        self.hosts, self.home, self.index = hosts, home, keys.index
        self.pair_secrets = dict(keys.pairs)
        self.gate.connect(keys, home)
        self.traffic.place(self.ray_node, ray_nodes or [self.ray_node] * len(hosts))

    async def start(self, token: bytes) -> None:
        self._check_driver(token)
        for node_id, node in self.nodes.items():
            self._route(node_id, node.start())
            self._take_reports(node)
        self._pump()

    async def deliver(self, caller: int, token: bytes, headers: list[Header], *payloads: np.ndarray) -> None:
        """Messages from actor ``caller``: only those from a node it hosts, to a node hosted here,
        are queued (the rest are counted by the gate); a bad call never raises here."""
        for sender, receiver, kind, round_, index, lead in self.gate.admit(caller, token, headers, len(payloads)):
            self.queue.put(Message(sender, receiver, kind, round_, payloads[index]), lead)
        self._pump()

    async def report(self, token: bytes, node_id: str, step: int) -> np.ndarray:
        """Server ``node_id``'s model after ``step``, as soon as it gets there."""
        self._check_driver(token)
        if (node_id, step) in self.snapshots:
            return self.snapshots.pop((node_id, step))
        waiter = self.waiters[node_id, step] = asyncio.get_running_loop().create_future()
        return await waiter

    def stats(self, token: bytes) -> dict[str, Any]:
        self._check_driver(token)
        nodes = {node_id: {"rejected": dict(node.rejected), "step": node.step} for node_id, node in self.nodes.items()}
        return {
            "sent": {**self.bus.sent, "ray_calls": self.ray_calls},
            "traffic": dict(self.traffic.counts),
            "nodes": nodes,
            "gate": dict(self.gate.rejected),
        }

    def _pump(self) -> None:
        """Run every queued message through its node, then send what is bound for other actors."""
        while self.queue:
            message = self.queue.pop()
            node = self.nodes.get(message.receiver)
            if node is None:
                continue
            self._route(message.receiver, node.on_message(message))
            self._take_reports(node)
        self._flush()

    def _take_reports(self, node: Node) -> None:
        for step, vector in node.drain_reports():
            waiter = self.waiters.pop((node.node_id, step), None)
            if waiter is not None:
                waiter.set_result(vector)
            else:
                self.snapshots[node.node_id, step] = vector

    def _route(self, sender: str, outgoing: list[Message]) -> None:
        timers, outgoing = self.bus.timers(sender, outgoing)
        for message, delay in timers:
            asyncio.get_running_loop().call_later(delay * self.time_unit_s, self._send_late, self.index, message, 0.0)
        if not outgoing:
            return
        if sender in self.tapped:
            self.traffic.call({id(m.payload): m.payload for m in outgoing}.values())
            self.adversary.observe.remote(outgoing)
        if sender in self.colluding:
            # The adversary may wait for this round's correct vectors, some perhaps queued here:
            # corrupt in a task, so this actor's other nodes go on meanwhile.
            asyncio.get_running_loop().create_task(self._corrupt_remotely(sender, outgoing))
            return
        self._dispatch(self.bus.send(sender, outgoing))

    async def _corrupt_remotely(self, sender: str, outgoing: list[Message]) -> None:
        held = await self.adversary.corrupt.remote(outgoing)
        self._dispatch(self.bus.post(sender, self.bus.attacked(held)))
        self._pump()

    def _dispatch(self, planned: Planned) -> None:
        for message, delay, hold in planned:
            host = self.home[message.receiver]
            if hold > 0:  # a slow node or a held-back (reordered) message: held in real time
                asyncio.get_running_loop().call_later(hold * self.time_unit_s, self._send_late, host, message, delay)
            else:
                self._post(host, message, delay)

    def _post(self, host: int, message: Message, delay: float) -> None:
        """Queue ``message`` here, or for the next call to its actor, due after its network delay."""
        if host == self.index:
            self.queue.put(message, delay)
        else:
            self.outbox[host].append((message, self.queue.due(delay)))

    def _send_late(self, host: int, message: Message, delay: float) -> None:
        self._post(host, message, delay)
        self._pump()

    def _flush(self) -> None:
        shipments: dict[int, Any] = {}  # a broadcast's payload is one object: one ray.put at most
        calls: list[tuple[int, list[Any]]] = []
        for host, messages in self.outbox.items():
            payloads: list[Any] = []
            distinct: list[Any] = []
            slot: dict[int, int] = {}
            headers: list[Header] = []
            for message, due in messages:
                key = id(message.payload)
                if key not in slot:
                    if key not in shipments:
                        shipments[key] = shipped(message.payload)
                    slot[key] = len(payloads)
                    payloads.append(shipments[key])
                    distinct.append(message.payload)
                lead = self.queue.lead(due)
                headers.append((message.sender, message.receiver, message.kind, message.round, slot[key], lead))
            self.hosts[host].deliver.remote(self.index, self.pair_secrets[host], headers, *payloads)
            calls.append((host, distinct))
            self.ray_calls += 1
        self.traffic.flush(calls)
        self.outbox.clear()


INLINE_PAYLOAD_BYTES = 100 * 1024  # Ray inlines call arguments up to this size (max_direct_call_object_size)


def shipped(payload: np.ndarray) -> Any:
    """What a call carries for ``payload``: a small one inline (half the cost of a trip through
    the object store, measured), a large one as a single ``ray.put`` that every receiver of a
    broadcast shares."""
    return payload if nbytes(payload) < INLINE_PAYLOAD_BYTES else ray.put(payload)


def nbytes(payload: Any) -> int:
    return getattr(payload, "nbytes", 0)  # a Byzantine payload may be anything


class Traffic:
    """What an actor's sends copy, and what leaves its machine, in payload bytes (headers, a few
    dozen bytes a message, are not counted):

    * ``put_bytes``: copied into the object store, once per shipped payload (a broadcast's
      receivers share the copy; on the sender's machine they read it in place);
    * ``inline_bytes``: serialized into the calls, once per call that carries the payload (and
      copied out again by the receiver);
    * ``cross_node_bytes``: sent to actors on other Ray nodes: an inline payload once per call,
      an object once per receiving machine (Ray's object manager pulls it there once, however
      many of that machine's actors read it).
    """

    def __init__(self, ray_node: str = "", ray_nodes: list[str] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.place(ray_node, ray_nodes or [])

    def place(self, ray_node: str, ray_nodes: list[str]) -> None:
        """This actor's Ray node, and the Ray node of every actor (by host index)."""
        self.ray_node, self.ray_nodes = ray_node, ray_nodes

    def flush(self, calls: list[tuple[int, list[Any]]]) -> None:
        """One flush: each call's receiving actor and the distinct payloads it carries (shipped as
        :func:`shipped` does: inline below ``INLINE_PAYLOAD_BYTES``, else one object)."""
        stored: set[int] = set()
        pulled: set[tuple[int, str]] = set()
        for host, payloads in calls:
            machine = self.ray_nodes[host]
            remote = machine != self.ray_node
            for payload in payloads:
                size = nbytes(payload)
                if size < INLINE_PAYLOAD_BYTES:
                    self.counts["inline_bytes"] += size
                    self.counts["cross_node_bytes"] += size * remote
                    continue
                if id(payload) not in stored:
                    stored.add(id(payload))
                    self.counts["put_bytes"] += size
                if remote and (id(payload), machine) not in pulled:
                    pulled.add((id(payload), machine))
                    self.counts["cross_node_bytes"] += size

    def call(self, payloads: Any) -> None:
        """A call whose arguments hold ``payloads`` (the adversary's tap): one copy of them all,
        inline, or into the object store as one object when they are large together."""
        size = sum(nbytes(p) for p in payloads)
        self.counts["inline_bytes" if size < INLINE_PAYLOAD_BYTES else "put_bytes"] += size


def start_ray(config: ExperimentConfig) -> bool:
    """Connect to Ray; returns whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Inside a Ray job (ray job submit) RAY_ADDRESS names the cluster: join it, start nothing.
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    # ray.init replaces a SIGTERM handler by one that exits at once; the caller's (the CLI's
    # turns SIGTERM into an exception, so the run records how it ended and shuts Ray down) wins.
    caller_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if address:
        source = "ray.address" if config.ray.address else "RAY_ADDRESS"
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


def report_steps(config: ExperimentConfig) -> list[int]:
    return sorted(set(range(0, config.steps, config.eval_every)) | {config.steps})


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


def run_ray(experiment: Experiment, monitor: Monitor) -> dict[str, Any]:
    config, groups = experiment.config, experiment.groups
    home = {node_id: index for index, group in enumerate(groups) for node_id in group}
    owns_ray = start_ray(config)
    hosts: list[Any] = []
    placement = adversary = None
    # The driver evaluates models on the cores the actors use: idle torch threads spinning here
    # would take CPU from them.
    driver_threads = torch.get_num_threads()
    _setup_process(config)
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
