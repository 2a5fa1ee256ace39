"""Attacks that need only the Byzantine node's own vector (they apply to models too)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from byzsgd.attacks.base import ATTACKS, Attack, AttackContext, as_payload


@ATTACKS.register("none")
class NoAttack(Attack):
    """Honest behaviour. Accepts (and ignores) any parameters, so ``--set attack.name=none``
    works on a config whose attack has parameters."""

    def __init__(self, **ignored: object) -> None:
        pass

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return honest


@ATTACKS.register("signflip")
class SignFlip(Attack):
    """The reversed vector, scaled: -scale * honest (on servers: the reversed model)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return as_payload(-self.scale * honest)


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """A random vector, N(mean, std^2) per coordinate, unrelated to the honest one
    (on servers: a random model)."""

    def __init__(self, std: float = 200.0, mean: float = 0.0) -> None:
        if std < 0:
            raise ValueError(f"std={std} must be >= 0")
        self.std = float(std)
        self.mean = float(mean)

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return context.rng.normal(self.mean, self.std, size=honest.shape).astype(np.float32)


@ATTACKS.register("zero")
class Zero(Attack):
    """The zero vector: a worker that claims there is nothing to learn."""

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return np.zeros_like(honest, dtype=np.float32)


@ATTACKS.register("nan")
class NaN(Attack):
    """A vector of NaNs (or +Inf with ``value: inf``, -Inf with ``value: -inf``)."""

    def __init__(self, value: str = "nan") -> None:
        values = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}
        if value not in values:
            raise ValueError(f"value={value!r} must be one of {', '.join(values)}")
        self.value = np.float32(values[value])

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return np.full(honest.shape, self.value, dtype=np.float32)


@ATTACKS.register("labelflip")
class LabelFlip(Attack):
    """The worker trains on flipped labels y -> C-1-y and sends that gradient as is. The
    flipping happens where the gradient is computed: the runtime gives the worker a
    :class:`FlippedLabels` workload; the payload itself is left alone."""

    flips_labels = True

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return honest


class FlippedLabels:
    """A workload whose gradients are computed on flipped labels (C-1-y); everything else
    (sampler, dimension, device, evaluation) is the wrapped workload's."""

    def __init__(self, workload: Any) -> None:
        self.workload = workload
        data = workload.data
        self._y = torch.from_numpy(data.num_classes - 1 - data.y_train).to(workload.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.workload, name)

    def gradient(self, vector: torch.Tensor, batch: np.ndarray) -> tuple[torch.Tensor, float]:
        return self.workload.gradient(vector, batch, labels=self._y)
