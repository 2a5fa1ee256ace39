"""Model attacks by Byzantine servers (a random model is ``gaussian``, a reversed one ``signflip``)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from byzsgd.attacks.base import ATTACKS, Attack, AttackContext
from byzsgd.nodes import node_index
from byzsgd.registry import ConfigError


@ATTACKS.register("stale")
class Stale(Attack):
    """Sends the model it held ``lag`` sends ago (of the same kind), instead of the current one;
    before it has that many, its oldest."""

    def __init__(self, lag: int = 5) -> None:
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
            raise ValueError(f"lag={lag!r} must be an integer >= 1")
        self.lag = lag
        self.history: dict[tuple[str, str], deque[np.ndarray]] = {}

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        past = self.history.setdefault((context.sender, context.kind), deque(maxlen=self.lag + 1))
        past.append(np.array(honest, dtype=np.float32))
        return past[0]


@ATTACKS.register("equivocation")
class Equivocation(Attack):
    """Different models to different receivers: the honest one to some, a poisoned one (the
    ``poison`` attack) to the others — by default to every receiver with an odd index, or to
    the node ids listed in ``targets``."""

    per_receiver = True

    def __init__(self, poison: str = "signflip", poison_params: dict[str, Any] | None = None, targets: Any = None):
        if poison == "equivocation":
            raise ValueError("poison cannot be equivocation itself")
        self.poison = ATTACKS.build(poison, field="poison", **(poison_params or {}))
        if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
            raise ConfigError(f"targets={targets!r}: expected a list of node ids, e.g. [w0, w2]")
        self.targets = None if targets is None else set(targets)
        self.omniscient = self.poison.omniscient

    def poisons(self, receiver: str) -> bool:
        if self.targets is not None:
            return receiver in self.targets
        return node_index(receiver) % 2 == 1

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return self.poison(honest, context) if self.poisons(context.receiver) else honest
