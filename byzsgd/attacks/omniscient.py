"""Attacks built from the correct nodes' vectors of the round (an omniscient adversary).

The fault injector collects what correct nodes send and hands it to the attack as
``context.observed``; it computes these attacks once per (kind, round), so every Byzantine
node of the role sends the same vector: the attackers collude. With nothing observed yet, the
sample is the Byzantine node's own honest vector.
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np

from byzsgd.attacks.base import ATTACKS, Attack, AttackContext, as_payload

ALIE_Z_FORMULAS = ("honest", "paper")


def alie_z(n: int, f: int, formula: str = "honest") -> float:
    """A Little Is Enough's z (Baruch et al. 2019): the largest shift that keeps the Byzantine
    vectors inside the majority, with s = floor(n/2 + 1) - f supporters needed from the correct
    nodes. ``formula``:

    - ``honest`` (default): z = Phi^-1((n - f - s) / (n - f)), counting only the n - f correct
      nodes, as the widely used implementation does (Karimireddy et al.'s code);
    - ``paper``: z = Phi^-1((n - s) / n), as Baruch et al. write it (Phi(z) < (n - s)/n)."""
    if formula not in ALIE_Z_FORMULAS:
        raise ValueError(f"z_formula={formula!r} must be one of {', '.join(ALIE_Z_FORMULAS)}")
    if not 0 < f < n:
        raise ValueError(f"ALIE needs 0 < f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    quantile = (n - f - s) / (n - f) if formula == "honest" else (n - s) / n
    if not 0 < quantile < 1:
        raise ValueError(f"ALIE's z is undefined for n={n}, f={f} (quantile {quantile:.3f} outside (0, 1))")
    # The standard library's inverse normal CDF: scipy.stats would cost every Ray actor seconds to import.
    return NormalDist().inv_cdf(quantile)


class Omniscient(Attack):
    omniscient = True


@ATTACKS.register("alie")
class ALIE(Omniscient):
    """mean + z * std of the correct vectors, per coordinate; z from :func:`alie_z` (``z_formula``)
    unless given."""

    def __init__(self, z: float | None = None, z_formula: str = "honest") -> None:
        if z_formula not in ALIE_Z_FORMULAS:
            raise ValueError(f"z_formula={z_formula!r} must be one of {', '.join(ALIE_Z_FORMULAS)}")
        self.z = None if z is None else float(z)
        self.z_formula = z_formula

    def z_for(self, context: AttackContext) -> float:
        return self.z if self.z is not None else alie_z(context.n, context.f, self.z_formula)

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
        chosen = [s for s in context.observed if self.target is not None and s.lstrip("psw") == str(self.target)]
        sender = chosen[0] if chosen else min(context.observed, key=lambda s: (len(s), s))
        return as_payload(context.observed[sender])


class LineSearch(Omniscient):
    """Picks the scale of its family's vector b(s) that hurts what a correct receiver really
    aggregates: a quorum of q vectors (q = n - f, what ByzSGD's and the parameter server's
    receivers wait for) holding the f Byzantine copies of b(s) and q - f correct vectors. The
    damage is the distance of that aggregate from the mean of all correct vectors,

        damage(s) = E_Q || A(Q(s)) - mean(correct) ||,

    the quantity robust aggregators' guarantees bound and the objective of Shejwalkar &
    Houmansadr's aggregator-tailored attacks (NDSS 2021). The expectation is over which correct
    vectors fill the quorum: every choice when there are at most ``subsets`` of them, else
    ``subsets`` seeded draws shared by all candidates. The candidates are a grid
    linspace(0, max_scale, points) plus every fixed scale of the family's plain attack
    (:attr:`FIXED`, and the family's defaults), so the chosen scale is never weaker on this
    objective than any plain member of the family. ``quorum`` overrides q (e.g. when fewer than
    f nodes attack: the injector's f is the number of attackers)."""

    FIXED: tuple[float, ...] = ()

    def __init__(self, max_scale: float = 10.0, points: int = 21, quorum: int | None = None, subsets: int = 8) -> None:
        if max_scale <= 0 or points < 2:
            raise ValueError(f"need max_scale > 0 and points >= 2, got {max_scale}, {points}")
        if quorum is not None and quorum < 1:
            raise ValueError(f"quorum={quorum} must be >= 1")
        if subsets < 1:
            raise ValueError(f"subsets={subsets} must be >= 1")
        self.grid = np.linspace(0.0, float(max_scale), int(points))
        self.quorum = quorum
        self.subsets = int(subsets)

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        raise NotImplementedError

    def scales(self, context: AttackContext) -> list[float]:
        """Every scale the search tries: the grid and the family's fixed members."""
        return sorted({float(s) for s in self.grid} | {float(s) for s in self.FIXED})

    def correct_parts(self, sample: np.ndarray, context: AttackContext) -> list[np.ndarray]:
        """The correct vectors of each quorum the damage is averaged over."""
        q = self.quorum if self.quorum is not None else context.n - context.f
        k = min(max(q - context.f, 0), len(sample))
        total = math.comb(len(sample), k)
        if total <= self.subsets:
            return [sample[list(c)] for c in itertools.combinations(range(len(sample)), k)]
        return [sample[np.sort(context.rng.choice(len(sample), size=k, replace=False))] for _ in range(self.subsets)]

    def damage(self, sample: np.ndarray, byzantine: np.ndarray, context: AttackContext) -> float:
        """E_Q ||A(Q) - mean(sample)|| with f copies of ``byzantine`` in every quorum Q."""
        return self._damage(self.correct_parts(sample, context), sample.mean(0), byzantine, context)

    def _damage(
        self, parts: list[np.ndarray], center: np.ndarray, byzantine: np.ndarray, context: AttackContext
    ) -> float:
        copies = np.repeat(byzantine[None], context.f, axis=0)
        gaps = [
            np.linalg.norm(np.asarray(context.aggregate(np.concatenate([part, copies])), dtype=np.float64) - center)
            for part in parts
        ]
        return float(np.mean(gaps))

    def best_scale(self, sample: np.ndarray, context: AttackContext) -> float:
        scales = self.scales(context)
        if context.aggregate is None or context.f < 1:
            return scales[-1]
        parts, center = self.correct_parts(sample, context), sample.mean(0)
        best, best_damage = scales[-1], -1.0
        for scale in scales:
            try:
                damage = self._damage(parts, center, self.candidate(sample, scale), context)
            except ValueError:  # too few vectors for the rule: no search possible
                return scales[-1]
            if damage > best_damage:
                best, best_damage = scale, damage
        return best

    def __call__(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        sample = context.honest_sample(honest)
        return as_payload(self.candidate(sample, self.best_scale(sample, context)))


@ATTACKS.register("optimal-alie")
class OptimalALIE(LineSearch):
    """ALIE with z chosen by a line search against the configured aggregator on a quorum; the
    candidates include z = 0.5, 1, 1.5, 2, 3 and both formulas' z for the role's n and f."""

    FIXED = (0.5, 1.0, 1.5, 2.0, 3.0)

    def scales(self, context: AttackContext) -> list[float]:
        defaults = set()
        for formula in ALIE_Z_FORMULAS:
            try:
                defaults.add(alie_z(context.n, context.f, formula))
            except ValueError:  # undefined for this n and f
                pass
        return sorted(set(super().scales(context)) | defaults)

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        return sample.mean(0) + scale * sample.std(0)


@ATTACKS.register("optimal-ipm")
class OptimalIPM(LineSearch):
    """IPM with eps chosen by a line search against the configured aggregator on a quorum; the
    candidates include the literature's eps = 0.1, 0.5, 1, 2, 5, 10."""

    FIXED = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        return -scale * sample.mean(0)
