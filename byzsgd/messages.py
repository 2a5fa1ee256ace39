"""Messages between nodes, and the inbox that validates and buffers them.

Payload validation lives here, in one place shared by every protocol: a correct node hands
each incoming message to its :class:`Inbox`, which rejects (and counts) anything a Byzantine
sender could use to crash or stall it, and releases quorums in arrival order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PAYLOAD_DTYPE = np.float32


@dataclass(frozen=True)
class Message:
    """One point-to-point message. ``sender`` is stamped by the runtime, never by a node."""

    sender: str
    receiver: str
    kind: str
    round: int
    payload: np.ndarray


def broadcast(sender: str, receivers: Iterable[str], kind: str, round_: int, payload: np.ndarray) -> list[Message]:
    """The same payload object to every receiver (runtimes ship it once)."""
    return [Message(sender, receiver, kind, round_, payload) for receiver in receivers]


TIMER = "timeout"


def timer(node_id: str, round_: int, delay: float, tag: int = 0) -> Message:
    """A message a node sends itself, delivered back to it (only to it) after ``delay`` network
    time units: how a node waits with a timeout. The payload carries ``[delay, tag]``; ``tag``
    tells a node's timers of one round apart. Runtimes never corrupt, count or forward timers."""
    return Message(node_id, node_id, TIMER, round_, np.array([delay, tag], dtype=PAYLOAD_DTYPE))


def is_timer(message: Message) -> bool:
    """A node's own timer (the runtime stamps senders, so no other node can forge one)."""
    return message.kind == TIMER and message.sender == message.receiver


def timer_delay(message: Message) -> float:
    return max(0.0, float(message.payload[0]))


@dataclass(frozen=True)
class Channel:
    """What one kind of message must look like: who may send it, the payload size and dtype
    (float32 by default; coded protocols ship complex values as float64 pairs)."""

    senders: frozenset[str]
    size: int
    dtype: np.dtype = np.dtype(PAYLOAD_DTYPE)


def all_finite(payload: np.ndarray) -> bool:
    """Whether every value of a float vector is finite. A finite dot product of the vector with
    itself proves it in one BLAS pass that writes nothing (about half the cost of isfinite().all()
    at d = 1.6M); a vector whose squares overflow gets the exact check."""
    with np.errstate(over="ignore"):  # squares of huge values: the exact check decides
        return bool(np.isfinite(np.dot(payload, payload))) or bool(np.isfinite(payload).all())


class Inbox:
    """Per-(kind, round) buffers of validated payloads, one per sender, in arrival order.

    Rejected: a header field of the wrong type (sender and kind must be str, round an integer:
    "malformed"), unknown kind, a sender not allowed on the channel, a payload that is not a
    plain ndarray (no subclass) holding a finite vector of the channel's dtype and size, a
    round already consumed (stale) or more than ``window`` rounds ahead (future), and a second
    message from the same sender for the same round (duplicate). The buffer never holds more
    than ``len(senders) * (window + 1)`` payloads per kind, so flooding cannot exhaust memory.
    """

    def __init__(self, channels: dict[str, Channel], window: int = 64) -> None:
        self.channels = channels
        self.window = window
        self.next_round = {kind: 0 for kind in channels}
        self.buffers: dict[str, dict[int, dict[str, np.ndarray]]] = {kind: defaultdict(dict) for kind in channels}
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def add(self, message: Message) -> bool:
        reason = self._problem(message)
        if reason:
            self.rejected[reason] += 1
            return False
        self.buffers[message.kind][message.round][message.sender] = message.payload
        self.accepted += 1
        return True

    def _problem(self, message: Message) -> str | None:
        # Header fields are checked for their exact type before any lookup: an unhashable or
        # odd-typed sender, kind or round must be refused here, not raise out of a dict lookup.
        if type(message) is not Message or type(message.kind) is not str or type(message.sender) is not str:
            return "malformed"
        channel = self.channels.get(message.kind)
        if channel is None:
            return "unknown_kind"
        if message.sender not in channel.senders:
            return "unexpected_sender"
        if type(message.round) is not int and not isinstance(message.round, np.integer):
            return "malformed"
        if message.round < self.next_round[message.kind]:
            return "stale"
        if message.round > self.next_round[message.kind] + self.window:
            return "future"
        payload = message.payload
        # A plain ndarray only: a subclass (a masked array, a matrix) may hide values from the
        # finite check or change what arithmetic on it means.
        if type(payload) is not np.ndarray or payload.dtype != channel.dtype or payload.shape != (channel.size,):
            return "malformed"
        if message.sender in self.buffers[message.kind].get(message.round, {}):
            return "duplicate"
        if not all_finite(payload):
            return "non_finite"
        return None

    def quorum(self, kind: str, round_: int, size: int) -> list[np.ndarray] | None:
        """The first ``size`` payloads of ``round_`` if that many arrived, else None."""
        arrived = self.buffers[kind].get(round_)
        if arrived is None or len(arrived) < size:
            return None
        return list(arrived.values())[:size]

    def senders(self, kind: str, round_: int) -> list[str]:
        return list(self.buffers[kind].get(round_, {}))

    def advance(self, kind: str, round_: int) -> None:
        """Drop everything of ``kind`` before ``round_``; later messages for them are stale."""
        buffers = self.buffers[kind]
        for old in [r for r in buffers if r < round_]:
            del buffers[old]
        self.next_round[kind] = max(self.next_round[kind], round_)
