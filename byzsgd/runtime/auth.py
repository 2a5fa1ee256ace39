"""Who may call a Ray actor, and as whom: plain Python, no Ray (see README "Trust model").

Ray lets any process on the cluster that holds an actor's handle call its methods, and every
node actor holds every other's handle (it must, to send). Ray does not tell a method who
called it, so the calls carry proof: the driver draws a random secret per pair of node actors
and one per actor for itself (:func:`draw_keys`), and gives each actor only its own
(:class:`ActorKeys`). A ``deliver`` call names the calling actor and carries their pair's
secret; the receiver (:class:`Gate`) drops the call if the secret is wrong, and each message
whose sender is not a node hosted by the calling actor, or whose receiver is not hosted here
(a forged identity): a hostile actor can speak only for its own nodes. The control calls
(connect, start, report, stats) must carry the driver's secret of that actor. Every refusal
is counted (``rejected_forged``, ``rejected_unauthenticated``, ``rejected_control``,
``rejected_malformed`` in the metrics); a refused ``deliver`` returns quietly, a refused control
call answers its caller with PermissionError, and neither changes the actor's state.

Secrets are compared with :func:`hmac.compare_digest`. Nothing is signed per byte: the secrets
authenticate the calling actor, not the payloads (Ray's own token authentication and TLS keep
processes outside the cluster out).
"""

from __future__ import annotations

import hmac
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SECRET_BYTES = 16

# What a batched deliver call carries per message: sender, receiver, kind, round, index of its
# payload, and its lead (when it is due, relative to the sender's clock: see byzsgd.bus.Mailbox).
Header = tuple[str, str, str, int, int, float]

# A lead beyond this (network time units) is no delay the bus draws: a NaN, an infinity or a huge
# one would throw the receiving actor's simulated clock, and so the order of everyone's messages.
MAX_LEAD = 1e9


@dataclass(frozen=True)
class ActorKeys:
    """What one actor knows: its index, the driver's secret for it, and the secret it shares
    with each other node actor (by that actor's index)."""

    index: int
    driver: bytes
    pairs: Mapping[int, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print a secret into a log
        return f"ActorKeys(index={self.index}, peers={sorted(self.pairs)})"


def draw_keys(count: int) -> list[ActorKeys]:
    """Fresh secrets for ``count`` node actors: one per pair, one per actor for the driver."""
    pair = {(i, j): secrets.token_bytes(SECRET_BYTES) for i in range(count) for j in range(i + 1, count)}
    return [
        ActorKeys(
            index=i,
            driver=secrets.token_bytes(SECRET_BYTES),
            pairs={j: pair[min(i, j), max(i, j)] for j in range(count) if j != i},
        )
        for i in range(count)
    ]


def same_secret(given: Any, expected: bytes | None) -> bool:
    return expected is not None and isinstance(given, bytes) and hmac.compare_digest(given, expected)


class Gate:
    """An actor's checks on what it is called with; counts every refusal in ``rejected``."""

    def __init__(self, driver_secret: bytes) -> None:
        self.driver_secret = driver_secret
        self.keys: ActorKeys | None = None
        self.hosted_by: dict[int, frozenset[str]] = {}  # each actor's nodes
        self.rejected: Counter[str] = Counter()

    def from_driver(self, token: Any) -> bool:
        """Whether a control call carries this actor's driver secret (counted when not)."""
        if same_secret(token, self.driver_secret):
            return True
        self.rejected["control"] += 1
        return False

    def connect(self, keys: ActorKeys, home: Mapping[str, int]) -> None:
        groups: dict[int, set[str]] = {}
        for node_id, host in home.items():
            groups.setdefault(host, set()).add(node_id)
        self.keys = keys
        self.hosted_by = {host: frozenset(nodes) for host, nodes in groups.items()}

    def admit(self, caller: Any, token: Any, headers: Any, payload_count: int) -> list[Header]:
        """The headers of a ``deliver`` call that may go to this actor's nodes: the call must
        come from another node actor with their pair's secret, each header must be well formed,
        name a sender hosted by the caller and a receiver hosted here."""
        keys = self.keys
        if keys is None or type(caller) is not int or not same_secret(token, keys.pairs.get(caller)):
            self.rejected["unauthenticated"] += 1
            return []
        if not isinstance(headers, (list, tuple)):
            self.rejected["malformed"] += 1
            return []
        senders, receivers = self.hosted_by.get(caller, frozenset()), self.hosted_by.get(keys.index, frozenset())
        admitted = []
        for header in headers:
            if not well_formed(header, payload_count):
                self.rejected["malformed"] += 1
            elif header[0] not in senders or header[1] not in receivers:
                self.rejected["forged"] += 1
            else:
                admitted.append(header)
        return admitted


def well_formed(header: Any, payload_count: int) -> bool:
    if not isinstance(header, tuple) or len(header) != 6:
        return False
    sender, receiver, kind, _, index, lead = header  # the round is the Inbox's to check
    return (
        all(type(value) is str for value in (sender, receiver, kind))
        and type(index) is int
        and 0 <= index < payload_count
        and isinstance(lead, (float, int))
        and not isinstance(lead, bool)
        and -MAX_LEAD <= lead <= MAX_LEAD  # False for NaN
    )
