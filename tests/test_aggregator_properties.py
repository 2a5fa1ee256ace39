"""Property-based tests (Hypothesis) of every aggregation rule, on inputs built to tell a robust
rule from a wrong one: an honest cloud at a random offset and scale, and f *identical*
colluders placed inside it, at its edge, or far away.

Each rule is held to a bound on how far its output may land from the honest mean. The bounds
are stated in terms of the honest rows only (H = honest rows, m = their mean,
r = max ||h - m||, D = their diameter, [lo, hi] their coordinate-wise range, w = hi - lo):

- median, trimmed mean, bucketing(median), clipping(median) with a threshold above every
  honest norm: every coordinate inside [lo, hi] (fewer than half the values of a coordinate,
  or at most the f trimmed on each side, are Byzantine; Yin et al. 2018).
- MeaMed, Bulyan: inside [lo - w, hi + w]. The coordinate median is in [lo, hi] (honest
  majority); a Byzantine value kept among the values nearest it is no farther from it than
  an excluded honest one.
- NNM(median), ARC(trimmed mean): inside [lo - D, hi + D]. NNM moves an honest row to the
  mean of its n-f nearest, all within D of it; ARC clips an honest row to a norm no smaller
  than the smallest honest norm, moving it by at most D. The base rule then stays in the
  moved honest rows' box.
- MDA: ||out - m|| <= D + r. The honest rows are a candidate subset, so the chosen subset has
  diameter <= D and holds an honest row (El Mhamdi et al., ByzSGD).
- Krum, Multi-Krum: ||out - m|| <= sqrt(n-f-2) D + r. An honest row's score is at most
  (n-f-2) D^2; any selected row has an honest row among its n-f-2 nearest (Blanchard et al.).
- geometric median: ||out - m|| <= r (n-f) / sqrt(n (n-2f)). At a point farther than that
  from m, the n-f honest rows pull towards m harder than the f others can pull away (the
  directional derivative of the sum of distances is negative), so the minimiser is not there.
- centered clipping (tau = the cloud's scale, 3 iterations): ||out - m|| <= ||w|| + 3 tau:
  it starts at the coordinate median and each iteration moves by at most tau.
- CTMA(NNM(median)): ||out - m|| <= 2 B + r with B = ||w + D|| the NNM(median) bound: every
  kept row is no farther from the centre than the farthest honest row.
The mean has no bound: a test checks that these inputs do push it out of the honest box, so
the bounds are not vacuous.

Equivariance (translation, positive scaling), permutation invariance and non-finite rows
(dropped and counted against f, exactly as if the rule ran with f-k on the finite rows) are
checked on the same clouds. Rules that compare norms to the origin or to a fixed threshold
are left out of the equivariance they cannot have (named per test).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from byzsgd.aggregators import Aggregator, Mean, make_aggregator, min_diameter_subset
from byzsgd.registry import ConfigError
from tests.test_aggregators import ROBUST, RULES, smallest_n  # every rule, with robust parameters

# Norms measured from the origin, or an absolute threshold: no translation equivariance.
NOT_TRANSLATION_EQUIVARIANT = {"clipping", "arc"}
# An absolute threshold (tau, the clipping threshold): no scale equivariance.
NOT_SCALE_EQUIVARIANT = {"clipping", "centered_clipping"}
PLACEMENTS = ["inside", "edge", "far"]


@dataclass
class Cloud:
    """n rows: the honest ones first, then f identical colluders."""

    x: np.ndarray
    f: int
    scale: float

    @property
    def honest(self) -> np.ndarray:
        return self.x[: len(self.x) - self.f]

    @property
    def mean(self) -> np.ndarray:
        return self.honest.mean(axis=0)

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self.honest - self.mean, axis=1).max())

    @property
    def diameter(self) -> float:
        h = self.honest
        return float(np.linalg.norm(h[:, None] - h[None], axis=2).max())


def params_for(name: str, cloud: Cloud) -> dict:
    """The shared parameters, with the thresholds that depend on the cloud's scale set for it."""
    params = dict(RULES[name])
    if name == "centered_clipping":
        params["tau"] = cloud.scale
    if name == "clipping":
        params["threshold"] = 2.0 * float(np.linalg.norm(cloud.honest, axis=1).max()) + 1.0
    return params


def rule(name: str, f: int, cloud: Cloud):
    """A fresh rule (bucketing's generator advances per call; equal seeds give equal shuffles)."""
    return make_aggregator(name, f=f, **params_for(name, cloud))


@st.composite
def clouds(draw, name: str, placements: list[str] = PLACEMENTS) -> Cloud:
    f = draw(st.integers(1, 2))
    n = max(smallest_n(name, f), 2 * f + 1) + draw(st.integers(0, 2))
    d = draw(st.integers(1, 5))
    scale = 10.0 ** draw(st.integers(-3, 3))
    offset_size = 10.0 ** draw(st.integers(-2, 4)) * draw(st.sampled_from([0.0, 1.0]))
    placement = draw(st.sampled_from(placements))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = offset_size * scale * rng.standard_normal(d)
    honest = offset + scale * rng.standard_normal((n - f, d))
    m = honest.mean(axis=0)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    if placement == "inside":
        spot = honest[rng.integers(n - f)] + 0.1 * scale * rng.standard_normal(d)
    elif placement == "edge":
        spot = m + direction * np.linalg.norm(honest - m, axis=1).max()
    else:
        spot = m + direction * scale * 10.0 ** draw(st.integers(2, 6))
    x = np.vstack([honest, np.repeat(spot[None], f, axis=0)])
    return Cloud(x, f, scale)


def bound_violation(name: str, out: np.ndarray, cloud: Cloud) -> float:
    """How far `out` is beyond the rule's bound (<= 0 within it), relative to the cloud's size."""
    h, m, r, big_d = cloud.honest, cloud.mean, cloud.radius, cloud.diameter
    n, f = len(cloud.x), cloud.f
    lo, hi = h.min(axis=0), h.max(axis=0)
    w = hi - lo
    box_pad = {
        "median": 0.0,
        "trimmed_mean": 0.0,
        "bucketing": 0.0,
        "clipping": 0.0,
        "meamed": w,
        "bulyan": w,
        "nnm": big_d,
        "arc": big_d,
    }
    if name in box_pad:
        pad = box_pad[name]
        excess = np.maximum(lo - pad - out, out - hi - pad).max()
    else:
        radius = {
            "mda": big_d + r,
            "krum": math.sqrt(n - f - 2) * big_d + r,
            "multikrum": math.sqrt(n - f - 2) * big_d + r,
            "geometric_median": r * (n - f) / math.sqrt(n * (n - 2 * f)),
            "centered_clipping": float(np.linalg.norm(w)) + 3 * cloud.scale,
            "ctma": 2 * float(np.linalg.norm(w + big_d)) + r,
        }[name]
        excess = float(np.linalg.norm(out - m)) - radius
    # Rounding: relative to the size of the numbers involved (offsets up to 1e4 scales).
    size = cloud.scale + float(np.abs(m).max())
    return float(excess) / size - 1e-7


# -- robustness bounds -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ROBUST)
@given(data=st.data())
def test_output_stays_within_the_rules_bound_of_the_honest_mean(name, data):
    cloud = data.draw(clouds(name))
    out = rule(name, cloud.f, cloud)(cloud.x)
    assert np.all(np.isfinite(out))
    assert bound_violation(name, out, cloud) <= 0


@given(cloud=clouds("mean", ["far"]))
def test_the_mean_breaks_the_bounds_so_they_are_not_vacuous(cloud):
    out = make_aggregator("mean", f=cloud.f)(cloud.x)
    assert bound_violation("median", out, cloud) > 0
    assert bound_violation("mda", out, cloud) > 0


# -- equivariance and invariance -------------------------------------------------------------


def close(a: np.ndarray, b: np.ndarray, size: float) -> bool:
    return bool(np.allclose(a, b, rtol=0, atol=1e-7 * size))


@pytest.mark.parametrize("name", sorted(set(RULES) - NOT_TRANSLATION_EQUIVARIANT))
@given(data=st.data())
def test_translating_the_inputs_translates_the_output(name, data):
    cloud = data.draw(clouds(name, ["inside", "edge"]))
    shift = (
        cloud.scale * 10.0 ** data.draw(st.integers(-1, 3)) * np.random.default_rng(1).standard_normal(cloud.x.shape[1])
    )
    out = rule(name, cloud.f, cloud)(cloud.x)
    moved = rule(name, cloud.f, cloud)(cloud.x + shift)
    assert close(moved, out + shift, cloud.scale + float(np.abs(cloud.x).max() + np.abs(shift).max()))


@pytest.mark.parametrize("name", sorted(set(RULES) - NOT_SCALE_EQUIVARIANT))
@given(data=st.data())
def test_scaling_the_inputs_scales_the_output(name, data):
    cloud = data.draw(clouds(name, ["inside", "edge"]))
    factor = 10.0 ** data.draw(st.integers(-3, 3)) * data.draw(st.sampled_from([1.0, 3.0]))
    out = rule(name, cloud.f, cloud)(cloud.x)
    scaled = rule(name, cloud.f, cloud)(factor * cloud.x)
    assert close(scaled / factor, out, cloud.scale + float(np.abs(cloud.x).max()))


# MDA and Bulyan break exact ties by index (MDA: the lexicographically first optimal subset),
# and ties are common, not rare: with f=1 every subset that keeps the farthest pair has the
# same diameter. They get their own tests below.
@pytest.mark.parametrize("name", sorted(set(RULES) - {"mda", "bulyan"}))
@given(data=st.data())
def test_the_order_of_the_inputs_does_not_matter(name, data):
    cloud = data.draw(clouds(name))
    order = data.draw(st.permutations(range(len(cloud.x))))
    out = rule(name, cloud.f, cloud)(cloud.x)
    shuffled = rule(name, cloud.f, cloud)(cloud.x[list(order)])
    assert close(shuffled, out, cloud.scale + float(np.abs(cloud.x).max()))


def optimal_subset_means(x: np.ndarray, f: int) -> list[np.ndarray]:
    """Brute force: the means of every (n-f)-subset of minimum diameter (ties within rounding)."""
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    subsets = [list(s) for s in itertools.combinations(range(len(x)), len(x) - f)]
    diameters = np.array([d[np.ix_(s, s)].max() for s in subsets])
    best = diameters.min()
    return [x[s].mean(axis=0) for s, dia in zip(subsets, diameters) if dia <= best * (1 + 1e-12) + 1e-300]


@given(data=st.data())
def test_mda_in_any_order_averages_a_minimum_diameter_subset(data):
    cloud = data.draw(clouds("mda"))
    order = list(data.draw(st.permutations(range(len(cloud.x)))))
    out = make_aggregator("mda", f=cloud.f)(cloud.x[order])
    size = cloud.scale + float(np.abs(cloud.x).max())
    assert any(close(out, mean, size) for mean in optimal_subset_means(cloud.x, cloud.f))


def test_bulyan_does_not_depend_on_the_order_of_the_inputs():
    # Its last Krum rounds (1 neighbour) give a mutually nearest pair equal scores: breaking the
    # tie by index let the order of the inputs change the picked set and the output.
    x = np.array([-2.55566503, 0.41809885, -0.56776961, -0.45264929, -0.21559716, -2.01998613, 0.11670279])[:, None]
    bulyan = make_aggregator("bulyan", f=1)
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(x)) for _ in range(300)]  # of 5040: enough to meet every tie-break
    outputs = {float(bulyan(x[order])[0]) for order in orders}
    assert max(outputs) - min(outputs) < 1e-12


# -- non-finite rows -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RULES))
@given(data=st.data())
def test_non_finite_rows_are_dropped_and_counted_against_f(name, data):
    cloud = data.draw(clouds(name))
    k = data.draw(st.integers(1, cloud.f))
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    x = cloud.x.copy()
    rows = data.draw(st.lists(st.integers(len(x) - cloud.f, len(x) - 1), min_size=k, max_size=k, unique=True))
    column = data.draw(st.integers(0, x.shape[1] - 1))
    x[rows, column] = bad
    out = rule(name, cloud.f, cloud)(x)
    assert np.all(np.isfinite(out))
    finite = np.delete(x, rows, axis=0)
    expected = rule(name, cloud.f - k, cloud)(finite)
    assert close(out, expected, cloud.scale + float(np.abs(finite).max()))
    if name != "mean":
        assert bound_violation(name, out, cloud) <= 0


# -- MDA's exact search against brute force --------------------------------------------------


@given(
    n=st.integers(15, 16),
    f=st.integers(4, 6),  # n=15, f=4 is past the brute-force size; f <= 3 would not be
    d=st.integers(1, 3),
    grid=st.sampled_from([2, 3, 1000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_mda_search_finds_the_first_minimum_diameter_subset(n, f, d, grid, seed):
    """Past the brute-force size, MDA runs a vertex-cover search; it must return the same
    subset as scoring every subset: minimum diameter, ties to the lexicographically first.
    Points on a coarse integer grid make exact ties (and duplicates) common."""
    f = min(f, (n - 1) // 2)
    x = np.random.default_rng(seed).integers(0, grid, size=(n, d)).astype(np.float64)
    d2 = ((x[:, None] - x[None]) ** 2).sum(axis=2)
    best, best_diameter = None, np.inf
    for subset in itertools.combinations(range(n), n - f):  # lexicographic order
        diameter = d2[np.ix_(subset, subset)].max()
        if diameter < best_diameter:
            best, best_diameter = subset, diameter
    np.testing.assert_array_equal(min_diameter_subset(d2, n - f), np.array(best))
    np.testing.assert_allclose(make_aggregator("mda", f=f)(x), x[list(best)].mean(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(RULES))
def test_the_stated_formula_gives_the_needed_count(name):
    for f in range(4):
        aggregator = make_aggregator(name, f=f, **params_for(name, Cloud(np.ones((1, 1)), 0, 1.0)))
        assert eval(aggregator.formula(), {"f": f, "max": max}) == aggregator.needed(f)  # noqa: S307
        message = rf"needs n >= {re.escape(aggregator.formula())} = {aggregator.needed(f)} inputs"
        with pytest.raises(ConfigError, match=message):
            aggregator(np.zeros((aggregator.needed(f) - 1, 2)))


def test_a_rule_with_bound_f_plus_b_states_it_so():
    class OnePlusTwo(Aggregator):
        bound = (1, 2)

    assert OnePlusTwo(3).formula() == "f+2" and OnePlusTwo(3).needed(3) == 5
    assert Mean(2).formula() == "1"


# -- parameter checks at their boundaries ----------------------------------------------------

PARAMETER_BOUNDARIES = [
    # (rule, params that are just valid, params that are just invalid, words the error must name)
    ("centered_clipping", {"tau": 1e-9, "iterations": 1}, {"tau": 0.0}, "tau > 0"),
    ("centered_clipping", {"tau": 1.0, "iterations": 1}, {"iterations": 0}, "iterations >= 1"),
    ("centered_clipping", {"tau": 1.0, "iterations": 2}, {"iterations": 1.5}, "iterations=1.5: expected an integer"),
    ("geometric_median", {"tol": 1e-12, "eps": 1e-12, "max_iter": 1}, {"tol": 0.0}, "tol > 0"),
    ("geometric_median", {"max_iter": 1}, {"max_iter": 0}, "max_iter >= 1"),
    ("geometric_median", {"eps": 1e-12}, {"eps": 0.0}, "eps > 0"),
    ("multikrum", {"m": 1, "neighbours": 1}, {"m": 0}, "m must be an integer >= 1"),
    ("multikrum", {"neighbours": 1}, {"neighbours": 0}, "neighbours must be an integer >= 1"),
    ("multikrum", {"m": 2}, {"m": True}, "m=True: expected an integer"),
    ("bucketing", {"base": "median", "s": 1}, {"base": "median", "s": 0}, "s must be >= 1"),
    ("clipping", {"base": "median", "threshold": 1e-9}, {"base": "median", "threshold": 0.0}, "threshold must be > 0"),
]


@pytest.mark.parametrize("name, valid, invalid, words", PARAMETER_BOUNDARIES)
def test_parameters_are_checked_at_their_boundary(name, valid, invalid, words):
    make_aggregator(name, f=1, **valid)
    with pytest.raises(ConfigError, match=re.escape(words)) as error:
        make_aggregator(name, f=1, **{**valid, **invalid})
    assert name in str(error.value)


def test_multikrum_counts_are_checked_against_n():
    rule = make_aggregator("multikrum", f=1, m=5, neighbours=4)
    rule.check(5)
    for m, neighbours in [(6, 4), (5, 5)]:
        with pytest.raises(ConfigError, match=r"must not exceed n=5 and n-1"):
            make_aggregator("multikrum", f=1, m=m, neighbours=neighbours).check(5)
