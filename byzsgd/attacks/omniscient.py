"""Attacks built from the correct nodes' vectors of the round (an omniscient adversary).

The fault injector collects what correct nodes send and hands it to the attack as
``context.observed``; it computes these attacks once per (kind, round), so every Byzantine
node of the role sends the same vector: the attackers collude. With nothing observed yet, the
sample is the Byzantine node's own honest vector.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from byzsgd.attacks.base import ATTACKS, Attack, AttackContext, as_payload
from byzsgd.nodes import node_index


def alie_z(n: int, f: int) -> float:
    """A Little Is Enough's z (Baruch et al. 2019): the largest shift that keeps the Byzantine
    vectors inside the majority, s = floor(n/2 + 1) - f, z = Phi^-1((n - f - s) / (n - f))."""
    if not 0 < f < n:
        raise ValueError(f"ALIE needs 0 < f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    quantile = (n - f - s) / (n - f)
    if not 0 < quantile < 1:
        raise ValueError(f"ALIE's z is undefined for n={n}, f={f} (quantile {quantile:.3f} outside (0, 1))")
    # The standard library's inverse normal CDF: scipy.stats would cost every Ray actor seconds to import.
    return NormalDist().inv_cdf(quantile)


class Omniscient(Attack):
    omniscient = True


@ATTACKS.register("alie")
class ALIE(Omniscient):
    """mean + z * std of the correct vectors, per coordinate; z from :func:`alie_z` unless given."""

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else float(z)

    def z_for(self, context: AttackContext) -> float:
        return self.z if self.z is not None else alie_z(context.n, context.f)

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        sample = context.honest_sample(honest)
        return as_payload(sample.mean(0) + self.z_for(context) * sample.std(0))


@ATTACKS.register("ipm")
class IPM(Omniscient):
    """Inner-product manipulation / Fall of Empires (Xie et al. 2019): -eps * mean of the correct vectors."""

    def __init__(self, eps: float = 0.1) -> None:
        self.eps = float(eps)

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return as_payload(-self.eps * context.honest_sample(honest).mean(0))


@ATTACKS.register("mimic")
class Mimic(Omniscient):
    """Copies one correct node's vector (Karimireddy et al. 2022): worker ``target`` if it was
    observed this round, else the correct node with the smallest id observed (a stable choice,
    which over-weights that node's data: the point of the attack under heterogeneity)."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        if not context.observed:
            return honest
        chosen = [s for s in context.observed if self.target is not None and node_index(s) == self.target]
        sender = chosen[0] if chosen else min(context.observed, key=lambda s: (len(s), s))
        return as_payload(context.observed[sender])


class LineSearch(Omniscient):
    """Picks the scale that moves the receivers' aggregate furthest from the correct mean:
    argmax_s ||A(correct + f copies of b(s)) - mean(correct)|| over a grid of scales."""

    def __init__(self, max_scale: float = 10.0, points: int = 21) -> None:
        if max_scale <= 0 or points < 2:
            raise ValueError(f"need max_scale > 0 and points >= 2, got {max_scale}, {points}")
        self.scales = np.linspace(0.0, float(max_scale), int(points))

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        raise NotImplementedError

    def best_scale(self, sample: np.ndarray, context: AttackContext) -> float:
        if context.aggregate is None or context.f < 1:
            return float(self.scales[-1])
        center = sample.mean(0)
        best, best_gap = float(self.scales[-1]), -1.0
        for scale in self.scales:
            byzantine = np.repeat(self.candidate(sample, scale)[None], context.f, axis=0)
            try:
                output = np.asarray(context.aggregate(np.concatenate([sample, byzantine])), dtype=np.float64)
            except ValueError:  # too few observed vectors for the rule: no search possible
                return float(self.scales[-1])
            gap = float(np.linalg.norm(output - center))
            if gap > best_gap:
                best, best_gap = float(scale), gap
        return best

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        sample = context.honest_sample(honest)
        return as_payload(self.candidate(sample, self.best_scale(sample, context)))


@ATTACKS.register("optimal-alie")
class OptimalALIE(LineSearch):
    """ALIE with z chosen by a line search against the configured aggregator."""

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        return sample.mean(0) + scale * sample.std(0)


@ATTACKS.register("optimal-ipm")
class OptimalIPM(LineSearch):
    """IPM with eps chosen by a line search against the configured aggregator."""

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        return -scale * sample.mean(0)
