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
from byzsgd.nodes import node_index

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
        chosen = [s for s in context.observed if self.target is not None and node_index(s) == self.target]
        sender = chosen[0] if chosen else min(context.observed, key=lambda s: (len(s), s))
        return as_payload(context.observed[sender])


Quorum = tuple[float, np.ndarray, int]  # (probability weight, its correct vectors, its Byzantine copies)


class LineSearch(Omniscient):
    """Picks the scale of its family's vector b(s) that hurts most what a correct receiver really
    aggregates: a quorum of q vectors, q as the protocol's servers wait for (n_w - f_w with the
    declared f_w for ByzSGD and the parameter server; n_w under ``ps.wait: all``), the first q
    of the n senders to arrive, holding c Byzantine copies of
    b(s) and q - c of the m correct vectors. The damage (``objective``) is

        descent (default): E_Q < mean(correct) - A(Q(s)), mean(correct) / ||mean(correct)|| >,
        distance:          E_Q || A(Q(s)) - mean(correct) ||,

    the first the progress lost along the correct direction (Fall of Empires' inner-product
    criterion), the second the quantity robust aggregators' guarantees bound and the objective
    of Shejwalkar & Houmansadr's aggregator-tailored attacks (NDSS 2021). Descent is the
    default because distance also counts the rule's own variance as damage: Krum outputs one
    correct gradient, far from the mean yet harmless on average, so a distance search prefers
    scales the rule rejects (measured: against Krum, distance-optimal IPM 0.858 accuracy where
    plain eps = 0.1 gave 0.116).

    How many copies a quorum holds depends on timing the adversary cannot see (it sends after
    observing the correct vectors, so usually late): ``copies`` = ``uniform`` (default) weighs
    c = 1 .. f equally; ``random`` takes c hypergeometric (arrival independent of the sender);
    ``all`` puts all f copies in every quorum. For each c the expectation runs over every
    choice of the q - c correct vectors when there are at most ceil(subsets * P(c)) of them,
    else over that many seeded draws, shared by all candidates. The candidates are 0 and
    points - 1 scales spaced geometrically from 0.05 to max_scale, plus every fixed scale of the
    family's plain attack (:attr:`FIXED` and the family's defaults), so the chosen scale is
    never weaker on this objective than any plain member of the family. ``quorum`` overrides q
    (by default the injector passes the protocol's quorum; the number of attackers may be below
    the declared f, which sets the quorum)."""

    FIXED: tuple[float, ...] = ()
    OBJECTIVES = ("distance", "descent")
    COPIES = ("uniform", "random", "all")

    def __init__(
        self,
        max_scale: float = 10.0,
        points: int = 21,
        quorum: int | None = None,
        subsets: int = 8,
        objective: str = "descent",
        copies: str = "uniform",
    ) -> None:
        if copies not in self.COPIES:
            raise ValueError(f"copies={copies!r} must be one of {', '.join(self.COPIES)}")
        self.copies = copies
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective={objective!r} must be one of {', '.join(self.OBJECTIVES)}")
        self.objective = objective
        if max_scale <= 0.05 or points < 2:
            raise ValueError(f"need max_scale > 0.05 and points >= 2, got {max_scale}, {points}")
        if quorum is not None and quorum < 1:
            raise ValueError(f"quorum={quorum} must be >= 1")
        if subsets < 1:
            raise ValueError(f"subsets={subsets} must be >= 1")
        # Geometric, with 0: the scale where the rule starts rejecting the copies (a cliff in the
        # damage) is usually small, where an even grid would be coarse.
        self.grid = np.concatenate([[0.0], np.geomspace(0.05, float(max_scale), int(points) - 1)])
        self.quorum = quorum
        self.subsets = int(subsets)

    def candidate(self, sample: np.ndarray, scale: float) -> np.ndarray:
        raise NotImplementedError

    def scales(self, context: AttackContext) -> list[float]:
        """Every scale the search tries: the grid and the family's fixed members."""
        return sorted({float(s) for s in self.grid} | {float(s) for s in self.FIXED})

    def quorums(self, sample: np.ndarray, context: AttackContext) -> list[Quorum]:
        """The quorums the damage averages over, each with its probability weight."""
        m, f = len(sample), context.f
        default = context.quorum or context.n - f
        q = min(self.quorum if self.quorum is not None else default, m + f)
        counts = range(max(0, q - m), min(f, q) + 1)
        if self.copies == "random":
            total = math.comb(m + f, q)
            weights = {c: math.comb(f, c) * math.comb(m, q - c) / total for c in counts}
        elif self.copies == "all":
            weights = {min(f, q): 1.0}
        else:  # uniform over 1 .. f (a quorum without copies is the same for every candidate)
            present = [c for c in counts if c > 0]
            weights = {c: 1.0 / len(present) for c in present}
        out: list[Quorum] = []
        for copies, weight in weights.items():
            wanted = math.ceil(self.subsets * weight)
            if math.comb(m, q - copies) <= wanted:
                chosen = [list(c) for c in itertools.combinations(range(m), q - copies)]
            else:
                chosen = [np.sort(context.rng.choice(m, size=q - copies, replace=False)) for _ in range(wanted)]
            out.extend((weight / len(chosen), sample[c], copies) for c in chosen)
        return out

    def damage(self, sample: np.ndarray, byzantine: np.ndarray, context: AttackContext) -> float:
        """E_Q ||A(Q) - mean(sample)|| with the Byzantine copies of ``byzantine`` in each quorum Q."""
        return self._damage(self.quorums(sample, context), sample.mean(0), byzantine, context)

    def _damage(
        self, quorums: list[Quorum], center: np.ndarray, byzantine: np.ndarray, context: AttackContext
    ) -> float:
        total = 0.0
        direction = center / max(float(np.linalg.norm(center)), 1e-30)
        for weight, correct, copies in quorums:
            inputs = np.concatenate([correct, np.repeat(byzantine[None], copies, axis=0)])
            output = np.asarray(context.aggregate(inputs), dtype=np.float64)
            if self.objective == "distance":
                total += weight * float(np.linalg.norm(output - center))
            else:  # progress lost along the correct mean
                total += weight * float(direction @ (center - output))
        return total

    def best_scale(self, sample: np.ndarray, context: AttackContext) -> float:
        scales = self.scales(context)
        if context.aggregate is None or context.f < 1:
            return scales[-1]
        quorums, center = self.quorums(sample, context), sample.mean(0)
        best, best_damage = scales[-1], -1.0
        for scale in scales:
            try:
                damage = self._damage(quorums, center, self.candidate(sample, scale), context)
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
