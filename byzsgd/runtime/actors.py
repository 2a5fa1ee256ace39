"""The Ray actors: a node actor is a mailbox and a batcher for the nodes of the driver's plan it
hosts; the injector actor hosts the one adversary. Payloads and their byte accounting
(:class:`Traffic`) live here too; what each call may do is checked by :mod:`byzsgd.runtime.auth`.
See :mod:`byzsgd.runtime.ray` for the whole picture."""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import ray
import torch

from byzsgd.bus import Bus, Mailbox, Planned
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import Experiment
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message
from byzsgd.plugins import load_plugins
from byzsgd.protocols.base import Node
from byzsgd.runtime.auth import ActorKeys, Gate, Header
from byzsgd.training import Workload, actor_device


def setup_process(config: ExperimentConfig) -> None:
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
        setup_process(config)
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
