"""The in-process runtime: a deterministic discrete-event simulation of the network.

Every message gets a seeded random delay (plus, if configured, a held-back delay that reorders
it, and a slow node's extra delay); nodes react instantly when a message is delivered. The
same seed gives the same run, which makes protocol behaviour testable, and hundreds of nodes
fit in one process. An omniscient adversary sees correct nodes' payloads as they are sent;
a Byzantine node's messages wait (parked) until it has seen the round, at most
``network.observe_timeout`` time units.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from byzsgd.config import ExperimentConfig
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message, is_timer, timer_delay
from byzsgd.metrics import Monitor
from byzsgd.protocols import PROTOCOLS
from byzsgd.protocols.base import Node
from byzsgd.runtime import counters_row


class StalledError(RuntimeError):
    """No message is in flight but the correct servers have not finished."""


class Network:
    def __init__(
        self, nodes: dict[str, Node], injector: FaultInjector, config: ExperimentConfig, monitor: Monitor
    ) -> None:
        self.nodes = nodes
        self.injector = injector
        self.monitor = monitor
        self.rng = np.random.default_rng([config.seed, 1])
        self.reorder_rng = np.random.default_rng([config.seed, 2])
        self.delay, self.jitter = config.network.delay, config.network.jitter
        self.reorder, self.reorder_delay = config.network.reorder, config.network.reorder_delay
        self.observe_timeout = config.network.observe_timeout
        # Heap of (time, sequence, message), or of (time, sequence, parked id): a wait running out.
        self.queue: list[tuple[float, int, Message | int]] = []
        self.parked: dict[int, tuple[str, list[Message]]] = {}
        self.now = 0.0
        self.sequence = 0
        self.sent: Counter[str] = Counter()

    def send(self, sender: str, messages: list[Message]) -> None:
        for message in [m for m in messages if is_timer(m) and m.sender == sender]:  # back to the sender only
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + timer_delay(message), self.sequence, message))
        messages = [m for m in messages if not is_timer(m)]
        if not messages:
            return
        if self.injector.observes(sender):
            self.injector.observe(messages)
            for parked_id in [p for p, (_, parked) in self.parked.items() if self.injector.ready(parked)]:
                self.transmit(*self.parked.pop(parked_id))
        if not self.injector.is_byzantine(sender) or self.injector.ready(messages):
            self.transmit(sender, messages)
        else:
            self.sequence += 1
            self.parked[self.sequence] = (sender, messages)
            heapq.heappush(self.queue, (self.now + self.observe_timeout, self.sequence, self.sequence))

    def transmit(self, sender: str, messages: list[Message]) -> None:
        planned = [(m, 0.0) for m in messages]
        if self.injector.is_byzantine(sender):
            planned = self.injector.corrupt(messages)
            self.sent["byzantine_messages"] += len(planned)
        for message, hold in planned:
            if message.sender != sender:  # the bus stamps the sender: an attack cannot speak as another node
                message = replace(message, sender=sender)
            spread = self.rng.uniform(1 - self.jitter, 1 + self.jitter)
            if self.reorder and self.reorder_rng.random() < self.reorder:
                hold += self.reorder_delay
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + self.delay * spread + hold, self.sequence, message))
            self.sent["messages"] += 1
            self.sent["bytes"] += getattr(message.payload, "nbytes", 0)  # a Byzantine payload may be anything

    def forward_reports(self, node: Node) -> None:
        for step, vector in node.drain_reports():
            self.monitor.report(node.node_id, step, vector)

    def run(self) -> None:
        for node_id, node in self.nodes.items():
            self.send(node_id, node.start())
            self.forward_reports(node)
        while self.queue and not self.monitor.done:
            self.now, _, message = heapq.heappop(self.queue)
            if isinstance(message, int):  # a parked Byzantine send whose wait ran out
                if message in self.parked:
                    self.transmit(*self.parked.pop(message))
                continue
            node = self.nodes.get(message.receiver)
            if node is None:
                continue
            outgoing = node.on_message(message)
            self.forward_reports(node)
            self.send(node.node_id, outgoing)
        if not self.monitor.done:
            steps = {n: node.step for n, node in self.nodes.items() if node.role == "server"}
            raise StalledError(f"the run stalled: no message in flight, server steps {steps}")


def run_local(config: ExperimentConfig, monitor: Monitor) -> dict[str, Any]:
    protocol = PROTOCOLS[config.protocol]
    workload = monitor.workload
    ids = protocol.server_ids(config) + protocol.worker_ids(config)
    injector = FaultInjector(config)
    # One workload serves every node: the simulation shares data and the model's buffers.
    nodes = {node_id: protocol.make_node(config, node_id, injector.workload_for(node_id, workload)) for node_id in ids}
    network = Network(nodes, injector, config, monitor)
    monitor.counters = lambda: counters_row(
        network.sent, (node.rejected for n, node in nodes.items() if not injector.is_byzantine(n))
    )
    network.run()
    return {"simulated_time": network.now}
