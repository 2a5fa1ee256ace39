"""The message bus both runtimes share: what happens to a message between a node's
``on_message`` and the receiving node's inbox, whatever moves it (a simulated clock or Ray).

A Byzantine sender's messages go through the fault injector (the attack rewrites them and may
hold them back: a slow node); the bus then stamps the real sender (an attack cannot speak as
another node), drops messages to nodes that are not in the run, gives each message its own
simulated network delay (``network.delay`` with ``network.jitter``, from a seeded generator),
holds some back so later ones overtake them (``network.reorder``) and counts what was sent.

The runtime then delivers each message after its hold, in its own units (simulated time units,
or ``network.time_unit_s``), and in the order of the simulated delays: the in-process clock waits
them out; a Ray actor, whose co-hosted nodes would otherwise see every message in the same order,
orders its queue by them (a :class:`Mailbox`) without waiting.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from byzsgd.config import NetworkConfig
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message, is_timer, timer_delay

Held = list[tuple[Message, float]]  # messages with their hold (extra delay), in network time units
Planned = list[tuple[Message, float, float]]  # messages on the wire: (message, network delay, hold)


class StalledError(RuntimeError):
    """The correct servers cannot finish: nothing is in flight, or a wait ran out."""


class Bus:
    def __init__(
        self,
        injector: FaultInjector,
        network: NetworkConfig,
        receivers: Iterable[str],
        delay_rng: np.random.Generator,
        reorder_rng: np.random.Generator,
    ) -> None:
        self.injector = injector
        self.receivers = frozenset(receivers)
        self.delay, self.jitter = network.delay, network.jitter
        self.reorder, self.reorder_delay = network.reorder, network.reorder_delay
        self.delay_rng, self.reorder_rng = delay_rng, reorder_rng
        self.sent: Counter[str] = Counter()

    @staticmethod
    def timers(sender: str, messages: list[Message]) -> tuple[Held, list[Message]]:
        """A node's self-addressed timers, each with its delay (they go back to the sender only,
        never corrupted or counted), and the messages for the network."""
        timers = [(m, timer_delay(m)) for m in messages if is_timer(m) and m.sender == sender]
        return timers, [m for m in messages if not is_timer(m)]

    def send(self, sender: str, messages: list[Message]) -> Planned:
        """What ``sender``'s outgoing messages become on the wire, each with its network delay
        and its hold."""
        if self.injector.is_byzantine(sender):
            return self.post(sender, self.attacked(self.injector.corrupt(messages)))
        return self.post(sender, [(message, 0.0) for message in messages])

    def attacked(self, held: Held) -> Held:
        """Count what the adversary sends (the Ray runtime corrupts in the injector's actor)."""
        self.sent["byzantine_messages"] += len(held)
        return held

    def post(self, sender: str, held: Held) -> Planned:
        out = []
        for message, hold in held:
            if message.receiver not in self.receivers:
                continue
            if message.sender != sender:
                message = replace(message, sender=sender)
            if self.reorder and self.reorder_rng.random() < self.reorder:
                hold += self.reorder_delay
            self.sent["messages"] += 1
            self.sent["bytes"] += getattr(message.payload, "nbytes", 0)  # a Byzantine payload may be anything
            out.append((message, hold))
        # Every link's delay is drawn on its own, so the receivers of a broadcast see it at
        # different times: what makes correct servers' quorums, and so their models, differ.
        # One draw for the lot (the same numbers as one per message, a fraction of the cost).
        spreads = self.delay_rng.uniform(1 - self.jitter, 1 + self.jitter, size=len(out))
        return [(message, self.delay * float(spread), hold) for (message, hold), spread in zip(out, spreads)]


class Mailbox:
    """A Ray actor's queue, ordered in simulated network time (ours: the Ray runtime's stand-in
    for the asynchrony its co-hosted nodes lack).

    Nodes that share an actor (``ray.actors``) would otherwise see every message in the same
    order, and so run identical quorums: correct servers' models would never differ. Each
    message is due at the actor's clock when it was queued plus its network delay (from the
    bus); messages leave in due order, and the clock moves to each one's due time. Nothing waits
    in real time: the queue only reorders what has arrived, and Ray's own timing still decides
    what arrives when. Across actors a message carries its ``lead`` (due time minus the sender's
    clock when it left), so the receiver keeps the sender's relative timing without shared clocks.
    """

    def __init__(self) -> None:
        self.clock = 0.0
        self.heap: list[tuple[float, int, Message]] = []
        self.sequence = 0  # ties leave in arrival order

    def __len__(self) -> int:
        return len(self.heap)

    def put(self, message: Message, lead: float = 0.0) -> None:
        """Queue ``message``, due ``lead`` time units from now (negative: already overdue)."""
        self.sequence += 1
        heapq.heappush(self.heap, (self.clock + lead, self.sequence, message))

    def pop(self) -> Message:
        due, _, message = heapq.heappop(self.heap)
        self.clock = max(self.clock, due)
        return message

    def due(self, delay: float) -> float:
        """When a message sent now with ``delay`` is due, on this actor's clock."""
        return self.clock + delay

    def lead(self, due: float) -> float:
        """What a message due at ``due`` carries to another actor (see the class docstring)."""
        return due - self.clock


def counters_row(sent: Mapping[str, int], rejections: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Message counters as the metrics report them; pass only correct nodes' rejections. The Ray
    runtime also counts its ``deliver`` calls (``ray_calls``: fewer than messages when batched)."""
    rejected: Counter[str] = Counter()
    for counts in rejections:
        rejected.update(counts)
    calls = {"ray_calls": sent["ray_calls"]} if "ray_calls" in sent else {}
    return {
        "messages": sent.get("messages", 0),
        "bytes": sent.get("bytes", 0),
        **calls,
        "byzantine_messages": sent.get("byzantine_messages", 0),
        "rejected": sum(rejected.values()),
        **{f"rejected_{reason}": count for reason, count in sorted(rejected.items())},
    }
