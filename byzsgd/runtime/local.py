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
from typing import Any

import numpy as np

from byzsgd.bus import Bus, StalledError, counters_row
from byzsgd.experiment import Experiment
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message
from byzsgd.metrics import Monitor
from byzsgd.protocols.base import Node

__all__ = ["Network", "StalledError", "run_local"]


class Network:
    """The clock: delivers what the bus sends after its seeded random delay plus its hold."""

    def __init__(
        self, nodes: dict[str, Node], injector: FaultInjector, experiment: Experiment, monitor: Monitor
    ) -> None:
        config = experiment.config
        self.nodes = nodes
        self.injector = injector
        self.monitor = monitor
        self.bus = Bus(
            injector,
            config.network,
            experiment.node_ids,
            delay_rng=np.random.default_rng([config.seed, 1]),
            reorder_rng=np.random.default_rng([config.seed, 2]),
        )
        self.observe_timeout = config.network.observe_timeout
        # Heap of (time, sequence, message), or of (time, sequence, parked id): a wait running out.
        self.queue: list[tuple[float, int, Message | int]] = []
        self.parked: dict[int, tuple[str, list[Message]]] = {}
        self.now = 0.0
        self.sequence = 0

    @property
    def sent(self) -> dict[str, int]:
        return self.bus.sent

    def send(self, sender: str, messages: list[Message]) -> None:
        timers, messages = self.bus.timers(sender, messages)
        for message, delay in timers:
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + delay, self.sequence, message))
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
        for message, delay, hold in self.bus.send(sender, messages):
            self.sequence += 1
            heapq.heappush(self.queue, (self.now + delay + hold, self.sequence, message))

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


def run_local(experiment: Experiment, monitor: Monitor) -> dict[str, Any]:
    injector = FaultInjector(experiment)
    # One workload serves every node: the simulation shares data and the model's buffers.
    nodes = experiment.make_nodes(experiment.node_ids, lambda n: injector.workload_for(n, monitor.workload))
    network = Network(nodes, injector, experiment, monitor)
    monitor.counters = lambda: counters_row(
        network.sent, (node.rejected for n, node in nodes.items() if not injector.is_byzantine(n))
    )
    network.run()
    return {"simulated_time": network.now}
