"""What every attack shares: the registry, the context an attack sees, the base class.

An attack receives the vector a Byzantine node would honestly have sent and returns what it
sends instead, or None to send nothing. The fault injector (byzsgd.faults) calls it and fills
the context: who sends what to whom, and, for omniscient attacks, the correct nodes' vectors
of the same round that the adversary has observed so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from byzsgd.registry import Registry

ATTACKS: Registry = Registry("attack")

AggregateFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class AttackContext:
    sender: str
    receiver: str
    kind: str
    round: int
    rng: np.random.Generator
    # Correct nodes' payloads of this kind and round seen by the adversary, by sender, in arrival order.
    observed: dict[str, np.ndarray] = field(default_factory=dict)
    n: int = 0  # nodes of the sender's role
    f: int = 0  # Byzantine nodes of that role (how many send the attack)
    aggregate: AggregateFn | None = None  # the rule the receivers apply (for line searches)
    quorum: int = 0  # how many vectors a correct receiver aggregates (0: unknown, take n - f)

    def honest_sample(self, honest: np.ndarray) -> np.ndarray:
        """The correct vectors the adversary knows, (k, d) float64; its own honest one if none."""
        if self.observed:
            return np.stack(list(self.observed.values())).astype(np.float64)
        return honest[None].astype(np.float64)


class Attack:
    """Base class. Flags tell the injector and the runtimes what the attack needs."""

    omniscient = False  # needs the correct nodes' vectors of the round (the injector waits, bounded)
    per_receiver = False  # may send different payloads to different receivers (equivocation)
    flips_labels = False  # the Byzantine worker trains on flipped labels (see FlippedLabels)

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        raise NotImplementedError

    def hold(self, context: AttackContext) -> float:
        """Extra delay of this message, in network time units (a slow node)."""
        return 0.0


def as_payload(vector: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vector, dtype=np.float32)
