"""The message bus both runtimes share: what happens to a message between a node's
``on_message`` and the receiving node's inbox, whatever moves it (a simulated clock or Ray).

A Byzantine sender's messages go through the fault injector (the attack rewrites them and may
hold them back: a slow node); the bus then stamps the real sender (an attack cannot speak as
another node), drops messages to nodes that are not in the run, holds some back so later ones
overtake them (``network.reorder``) and counts what was sent. The runtime then only delivers each
message after its hold, in its own units (simulated time units, or ``network.time_unit_s``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from byzsgd.config import NetworkConfig
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message, is_timer, timer_delay

Planned = list[tuple[Message, float]]  # messages with their extra delay, in network time units


class StalledError(RuntimeError):
    """The correct servers cannot finish: nothing is in flight, or a wait ran out."""


class Bus:
    def __init__(
        self,
        injector: FaultInjector,
        network: NetworkConfig,
        receivers: Iterable[str],
        reorder_rng: np.random.Generator,
    ) -> None:
        self.injector = injector
        self.receivers = frozenset(receivers)
        self.reorder, self.reorder_delay = network.reorder, network.reorder_delay
        self.reorder_rng = reorder_rng
        self.sent: Counter[str] = Counter()

    @staticmethod
    def timers(sender: str, messages: list[Message]) -> tuple[Planned, list[Message]]:
        """A node's self-addressed timers, each with its delay (they go back to the sender only,
        never corrupted or counted), and the messages for the network."""
        timers = [(m, timer_delay(m)) for m in messages if is_timer(m) and m.sender == sender]
        return timers, [m for m in messages if not is_timer(m)]

    def send(self, sender: str, messages: list[Message]) -> Planned:
        """What ``sender``'s outgoing messages become on the wire, each with its hold."""
        if self.injector.is_byzantine(sender):
            return self.post(sender, self.attacked(self.injector.corrupt(messages)))
        return self.post(sender, [(message, 0.0) for message in messages])

    def attacked(self, planned: Planned) -> Planned:
        """Count what the adversary sends (the Ray runtime corrupts in the injector's actor)."""
        self.sent["byzantine_messages"] += len(planned)
        return planned

    def post(self, sender: str, planned: Planned) -> Planned:
        out = []
        for message, hold in planned:
            if message.receiver not in self.receivers:
                continue
            if message.sender != sender:
                message = replace(message, sender=sender)
            if self.reorder and self.reorder_rng.random() < self.reorder:
                hold += self.reorder_delay
            self.sent["messages"] += 1
            self.sent["bytes"] += getattr(message.payload, "nbytes", 0)  # a Byzantine payload may be anything
            out.append((message, hold))
        return out


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
