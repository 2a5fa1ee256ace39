"""Aggregation rules against straightforward numpy references, and the properties every rule
promises: validation, no input mutation, permutation invariance, non-finite rows ignored,
robustness to far outliers."""

from __future__ import annotations

import itertools
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from byzsgd.aggregators import AGGREGATORS, coordinate_median, make_aggregator
from byzsgd.registry import ConfigError

WRAPPERS = {"nnm", "bucketing", "clipping", "arc", "ctma"}

# Each registered rule with parameters that make it robust, for the shared property tests.
RULES: dict[str, dict] = {
    "mean": {},
    "median": {},
    "trimmed_mean": {},
    "meamed": {},
    "geometric_median": {},
    "krum": {},
    "multikrum": {},
    "bulyan": {},
    "mda": {},
    "centered_clipping": {"tau": 1.0, "iterations": 3},
    "nnm": {"base": "median"},
    "bucketing": {"base": "median", "s": 2, "seed": 3},
    "clipping": {"base": "median", "threshold": 5.0},
    "arc": {"base": "trimmed_mean"},
    "ctma": {"base": {"name": "nnm", "params": {"base": "median"}}},
}
ROBUST = sorted(set(RULES) - {"mean"})


def test_every_registered_rule_is_covered():
    assert sorted(RULES) == AGGREGATORS.names()


def rule(name: str, f: int, **extra):
    return make_aggregator(name, f=f, **{**RULES[name], **extra})


def smallest_n(name: str, f: int) -> int:
    return AGGREGATORS[name].min_inputs(f, **RULES[name])


def sample(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


# -- independent references ------------------------------------------------------------------


def ref_sq_distances(x: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def ref_trimmed_mean(x, f):
    return np.sort(x, axis=0)[f : len(x) - f].mean(0)


def ref_meamed(x, f):
    out = []
    for column in x.T:
        med = np.median(column)
        closest = sorted(column, key=lambda v: (abs(v - med), v))[: len(x) - f]
        out.append(np.mean(closest))
    return np.array(out)


def ref_krum_scores(x, neighbours):
    d2 = ref_sq_distances(x)
    return np.array([sum(sorted(d2[i, j] for j in range(len(x)) if j != i)[:neighbours]) for i in range(len(x))])


def ref_multikrum(x, f, m=None, neighbours=None):
    n = len(x)
    scores = ref_krum_scores(x, n - f - 2 if neighbours is None else neighbours)
    order = sorted(range(n), key=lambda i: (scores[i], tuple(x[i])))  # ties: by content, not position
    return x[order[: n - f if m is None else m]].mean(0)


def ref_bulyan(x, f):
    n = len(x)
    remaining, picked = list(range(n)), []
    while len(picked) < n - 2 * f:
        sub = x[remaining]
        scores = ref_krum_scores(sub, max(len(sub) - f - 2, 1))
        best = min(range(len(sub)), key=lambda i: (scores[i], tuple(sub[i])))  # ties: by content
        picked.append(remaining.pop(best))
    return ref_meamed(x[sorted(picked)], 2 * f)  # keep beta = theta - 2f values


def ref_mda_subset(x, f, d2=None):
    d2 = ref_sq_distances(x) if d2 is None else d2
    n = len(x)

    def diameter(subset):
        return max((d2[i, j] for i, j in itertools.combinations(subset, 2)), default=0.0)

    return min(itertools.combinations(range(n), n - f), key=lambda s: (diameter(s), s))


def ref_geometric_median_objective(x):
    def objective(z):
        return np.linalg.norm(x - z, axis=1).sum()

    best = minimize(
        objective,
        np.median(x, axis=0),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
    )
    return best.fun


def ref_centered_clipping(x, tau, iterations, center):
    v = center.copy()
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        v = v + np.mean(diff * np.minimum(1, tau / norms)[:, None], axis=0)
    return v


def ref_nnm(x, f):
    d2 = ref_sq_distances(x)
    return np.stack([x[np.argsort(d2[i], kind="stable")[: len(x) - f]].mean(0) for i in range(len(x))])


def ref_clip(x, limit):
    norms = np.linalg.norm(x, axis=1)
    return x * np.minimum(1, limit / norms)[:, None]


REFERENCES = {
    "mean": lambda x, f: x.mean(0),
    "median": lambda x, f: np.median(x, axis=0),
    "trimmed_mean": ref_trimmed_mean,
    "meamed": ref_meamed,
    "krum": lambda x, f: ref_multikrum(x, f, m=1),
    "multikrum": ref_multikrum,
    "bulyan": ref_bulyan,
    "mda": lambda x, f: x[list(ref_mda_subset(x, f))].mean(0),
    "nnm": lambda x, f: np.median(ref_nnm(x, f), axis=0),
    "clipping": lambda x, f: np.median(ref_clip(x, 5.0), axis=0),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("seed", range(4))
def test_matches_reference(name, seed):
    rng = np.random.default_rng(seed)
    f = int(rng.integers(0, 4))
    n = smallest_n(name, f) + int(rng.integers(0, 4))
    if name == "mda":
        n = min(n, 12)
    x = sample(n, 7, seed)
    np.testing.assert_allclose(rule(name, f)(x), REFERENCES[name](x, f), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("neighbours,m", [(1, 1), (3, 2), (9, 5)])
def test_multikrum_parameters(neighbours, m):
    x = sample(10, 5, neighbours)
    out = make_aggregator("multikrum", f=2, m=m, neighbours=neighbours)(x)
    np.testing.assert_allclose(out, ref_multikrum(x, 2, m=m, neighbours=neighbours), atol=1e-12)
    krum = make_aggregator("krum", f=2, neighbours=neighbours)(x)
    np.testing.assert_allclose(krum, ref_multikrum(x, 2, m=1, neighbours=neighbours), atol=1e-12)


@pytest.mark.parametrize("n,f", [(5, 0), (7, 2), (9, 3), (12, 2)])
def test_geometric_median_minimises_sum_of_distances(n, f):
    x = sample(n, 3, n)
    out = make_aggregator("geometric_median", f=f)(x)
    ours = np.linalg.norm(x - out, axis=1).sum()
    assert ours <= ref_geometric_median_objective(x) * (1 + 1e-9)


def test_geometric_median_of_points_with_duplicates_and_a_line():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(make_aggregator("geometric_median", f=1)(x), [0.0, 0.0], atol=1e-6)
    same = np.ones((4, 3))
    np.testing.assert_allclose(make_aggregator("geometric_median", f=1)(same), np.ones(3))


def test_geometric_median_weights_start_from_the_first_row_that_n_f_rows_coincide_with():
    # Rows 1, 2, 4 coincide: with f=2 of n=5 they are n-f rows at distance 0, so s = 0 and the
    # weights are exactly 1/3 on them (a Weiszfeld run would leave ~1e-9 on the far rows).
    x = np.array([[9.0, 1.0], [1.0, 2.0], [1.0, 2.0], [-7.0, 4.0], [1.0, 2.0]])
    expected = [0.0, 1 / 3, 1 / 3, 0.0, 1 / 3]
    rule_ = make_aggregator("geometric_median", f=2)
    np.testing.assert_array_equal(rule_.weights(torch.from_numpy(x)), expected)  # f: the rule's own
    # A larger f is cut down to the most a rule over n rows tolerates, (n-1)//2 = 2.
    np.testing.assert_array_equal(rule_.weights(torch.from_numpy(x), f=99), expected)
    np.testing.assert_array_equal(make_aggregator("geometric_median", f=0).weights(torch.from_numpy(x), 99), expected)


def test_geometric_median_weights_break_ties_by_index():
    # Six of seven rows coincide, one more than n-f = 5: the first five of them get the weight,
    # whichever sort algorithm numpy picks for this machine (its default one is not stable).
    x = np.zeros((7, 3))
    x[3] = 1.0
    np.testing.assert_array_equal(
        make_aggregator("geometric_median", f=2).weights(torch.from_numpy(x)), [0.2, 0.2, 0.2, 0.0, 0.2, 0.2, 0.0]
    )


def test_geometric_median_defaults_are_the_readmes():
    rule_ = make_aggregator("geometric_median", f=1)
    assert (rule_.tol, rule_.max_iter, rule_.eps) == (1e-10, 10_000, 1e-8)


def test_centered_clipping_reference_and_explicit_center():
    x = sample(9, 4, 0)
    rule_ = make_aggregator("centered_clipping", f=2, tau=0.5, iterations=4)
    expected = ref_centered_clipping(x, 0.5, 4, np.median(x, axis=0))
    np.testing.assert_allclose(rule_(x), expected, atol=1e-12)
    center = np.full(4, 0.3)
    np.testing.assert_allclose(rule_(x, center=center), ref_centered_clipping(x, 0.5, 4, center))
    stored = make_aggregator("centered_clipping", f=2, tau=0.5, iterations=4, center=center)
    np.testing.assert_allclose(stored(x), ref_centered_clipping(x, 0.5, 4, center))
    # A non-finite center (a corrupted previous aggregate) falls back to the median.
    np.testing.assert_allclose(rule_(x, center=np.full(4, np.nan)), expected, atol=1e-12)


def test_centered_clipping_defaults_are_byzfls_tau_100_one_iteration():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 20, (5, 6)), rng.normal(0, 20, (2, 6)) + 1000.0])  # two far rows
    start = np.median(x, axis=0)
    out = make_aggregator("centered_clipping", f=2)(x)
    np.testing.assert_allclose(out, ref_centered_clipping(x, 100.0, 1, start), atol=1e-9)
    for tau, iterations in [(101.0, 1), (100.0, 2)]:  # the far rows are clipped: tau and the count matter
        assert np.abs(out - ref_centered_clipping(x, tau, iterations, start)).max() > 1e-3


def test_centered_clipping_of_half_precision_works_in_float32_and_rounds_once():
    # bfloat16 keeps 8 bits: every difference, step and sum rounded to it would drift; the rule
    # computes in float32 and rounds only its result, so it equals the float32 result, rounded.
    x = (torch.randn(7, 3000, generator=torch.Generator().manual_seed(0)) * 3 + 1).to(torch.bfloat16)
    center = torch.randn(3000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rule_ = make_aggregator("centered_clipping", f=2, tau=20.0, iterations=2)
    for options in [{}, {"center": center}]:
        out = rule_(x, **options)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, rule_(x.float(), **options).to(torch.bfloat16), rtol=0, atol=0)


def test_centered_clipping_refuses_a_center_of_the_wrong_size():
    rule_ = make_aggregator("centered_clipping", f=1)
    with pytest.raises(ValueError, match="center has 3 entries, vectors have 4"):
        rule_(np.ones((5, 4)), center=np.zeros(3))


def test_coordinate_median_needs_a_vector_but_not_a_coordinate():
    with pytest.raises(ValueError, match="^coordinate_median of zero vectors$"):
        coordinate_median(np.zeros((0, 3)))
    assert coordinate_median(np.zeros((3, 0))).shape == (0,)


def test_arc_clips_the_largest_to_the_next_norm():
    x = sample(10, 4, 1) * np.arange(1, 11)[:, None]
    f = 3
    k = int(2 * f * (10 - f) / 10)  # 4
    limit = np.sort(np.linalg.norm(x, axis=1))[::-1][k]
    out = make_aggregator("arc", f=f, base="mean")(x)
    np.testing.assert_allclose(out, ref_clip(x, limit).mean(0), atol=1e-12)


def test_arc_clips_the_single_largest_when_k_is_1():
    x = sample(3, 4, 5) * np.array([1.0, 2.0, 3.0])[:, None]
    # f=1, n=3: k = floor(2*1*2/3) = 1, so the largest row is clipped to the second largest norm.
    limit = np.sort(np.linalg.norm(x, axis=1))[::-1][1]
    out = make_aggregator("arc", f=1, base="mean")(x)
    np.testing.assert_allclose(out, ref_clip(x, limit).mean(0), atol=1e-12)
    assert np.abs(out - x.mean(0)).max() > 1e-3


def test_wrappers_hand_their_f_to_the_base_rule():
    x = sample(11, 4, 6)
    f = 2
    clipped = make_aggregator("clipping", f=f, base="trimmed_mean", threshold=0.5)(x)
    np.testing.assert_allclose(clipped, ref_trimmed_mean(ref_clip(x, 0.5), f), atol=1e-12)
    # s=1: each bucket is one row, and Multi-Krum does not depend on their order.
    bucketed = make_aggregator("bucketing", f=f, base="multikrum", s=1)(x)
    np.testing.assert_allclose(bucketed, ref_multikrum(x, f), atol=1e-12)


def test_nnm_mixes_with_ties_broken_by_index_and_hands_f_to_its_base():
    # Lattice points: many distinct rows at exactly equal distances, so which neighbours fill the
    # last of the n-f places is decided by the index order (a stable sort), as in the reference.
    x = np.random.default_rng(8).integers(0, 3, size=(40, 2)).astype(np.float64)
    f = 10
    np.testing.assert_allclose(make_aggregator("nnm", f=f, base="mean")(x), ref_nnm(x, f).mean(0), atol=1e-12)
    np.testing.assert_allclose(
        make_aggregator("nnm", f=f, base="trimmed_mean")(x), ref_trimmed_mean(ref_nnm(x, f), f), atol=1e-12
    )


def test_nnm_of_bfloat16_mixes_in_float32():
    # bfloat16 takes the torch path (numpy has no bfloat16): mix in float32, round, apply the base.
    x = torch.randn(9, 300, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    rule_ = make_aggregator("nnm", f=2, base="trimmed_mean")
    out = rule_(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    mixed = torch.from_numpy(ref_nnm(x.to(torch.bfloat16).double().numpy(), 2))
    expected = torch.from_numpy(ref_trimmed_mean(mixed.to(torch.bfloat16).double().numpy(), 2))
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def test_trimmed_mean_on_many_rows_and_in_bfloat16():
    # 101 rows: past the sizes that numpy's partition happens to sort completely, so a partition
    # at the wrong rank would show.
    for n, f in [(31, 5), (101, 25), (101, 50)]:
        x = sample(n, 200, n)
        np.testing.assert_allclose(make_aggregator("trimmed_mean", f=f)(x), ref_trimmed_mean(x, f), atol=1e-12)
    x = sample(31, 200, 10)
    x[:5] += 100.0  # far rows: keeping any of them would show
    half = torch.from_numpy(x).to(torch.bfloat16)  # the torch path: numpy has no bfloat16
    expected = torch.from_numpy(ref_trimmed_mean(half.double().numpy(), 5))
    torch.testing.assert_close(make_aggregator("trimmed_mean", f=5)(half).double(), expected, rtol=1e-2, atol=1e-2)


def test_norm_based_rules_in_bfloat16():
    # bfloat16 norms take the torch path of sq_norms; the clipped rows must match float64 clipping.
    x = torch.randn(9, 50, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x[:3] *= 10
    half = x.to(torch.bfloat16)
    exact = half.double().numpy()
    out = make_aggregator("clipping", f=1, base="mean", threshold=2.0)(half)
    torch.testing.assert_close(out.double(), torch.from_numpy(ref_clip(exact, 2.0).mean(0)), rtol=2e-2, atol=2e-2)


def test_ctma_keeps_the_lower_index_on_distance_ties():
    # Lattice points around a median centre: many rows at exactly equal distances.
    x = np.random.default_rng(12).integers(0, 3, size=(40, 2)).astype(np.float64)
    f = 10
    center = np.median(x, axis=0)
    d2 = ((x - center) ** 2).sum(1)
    expected = x[np.argsort(d2, kind="stable")[: 40 - f]].mean(0)
    np.testing.assert_allclose(make_aggregator("ctma", f=f, base="median")(x), expected, atol=1e-12)


def test_krum_counts_shrink_with_the_dropped_rows():
    # Explicit neighbours were checked against the full n; a dropped non-finite row leaves
    # n-1 rows, and each row then has n-2 others: the count shrinks to that.
    for seed in range(20):
        x = sample(6, 3, seed)
        x[:2] *= 4
        finite = x[1:]
        expected = ref_multikrum(finite, 0, m=1, neighbours=4)
        if not np.allclose(expected, ref_multikrum(finite, 0, m=1, neighbours=3)):
            break
    else:
        raise AssertionError("no sample tells 3 neighbours from 4")
    x[0] = np.nan
    out = make_aggregator("multikrum", f=1, m=1, neighbours=5)(x)
    np.testing.assert_allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("value", [True, 1.5, 0])
def test_krum_counts_must_be_positive_integers(value):
    for name in ("m", "neighbours"):
        with pytest.raises(ConfigError, match=f"{name} must be an integer >= 1"):
            AGGREGATORS["multikrum"](1, **{name: value})


def test_bfloat16_takes_the_torch_paths_with_float64_results():
    # numpy has no bfloat16: the Gram matrix, the mean and the mean of selected rows then run in
    # torch. Their results must match float64 arithmetic on the same (exactly representable) values.
    from byzsgd.aggregators.distances import exact_gram

    x = torch.randn(7, 40, generator=torch.Generator().manual_seed(13), dtype=torch.float64) + 3.0
    half = x.to(torch.bfloat16)
    exact = half.double()
    g = exact_gram(half)  # of the rows centred at a reference row: distances are what it must keep
    np.testing.assert_allclose(g, exact_gram(exact), rtol=1e-12, atol=1e-9)  # the numpy path's answer
    d2 = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
    np.testing.assert_allclose(d2, ((exact[:, None] - exact[None]) ** 2).sum(-1).numpy(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(make_aggregator("mean", f=0)(half), exact.mean(0).to(torch.bfloat16))
    chosen = make_aggregator("mda", f=2).selection(exact, 2)
    torch.testing.assert_close(make_aggregator("mda", f=2)(half), exact[chosen].mean(0).to(torch.bfloat16))
    ref = make_aggregator("geometric_median", f=2)(exact)
    torch.testing.assert_close(make_aggregator("geometric_median", f=2)(half), ref.to(torch.bfloat16))


def test_wrapper_defaults_threshold_1_and_seed_0():
    x = sample(9, 4, 7) * 5
    np.testing.assert_allclose(
        make_aggregator("clipping", f=1, base="mean")(x), ref_clip(x, 1.0).mean(0), atol=1e-12
    )
    default = make_aggregator("bucketing", f=1, base="median")
    seeded = [make_aggregator("bucketing", f=1, base="median", seed=seed) for seed in (0, 1)]
    outputs = [[rule_(x) for _ in range(3)] for rule_ in [default, *seeded]]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])  # the seed matters, so 0 is the default


@pytest.mark.parametrize("s", [True, 1.5, 0])
def test_bucket_size_must_be_a_positive_integer(s):
    # The registry refuses a non-integer s first; built directly, the class checks it itself.
    with pytest.raises(ConfigError, match="'bucketing'.*s"):
        make_aggregator("bucketing", f=1, base="median", s=s)
    with pytest.raises(ConfigError, match="bucket size s must be >= 1"):
        AGGREGATORS["bucketing"](1, base="median", s=s)


def test_majority_wrappers_name_their_bound():
    # NNM and CTMA need a majority and what the base needs: the message says which formula.
    for wrapper in ("nnm", "ctma"):
        with pytest.raises(ConfigError, match=re.escape("needs n >= 2*f+1 = 5 inputs, got 4")):
            make_aggregator(wrapper, f=2, base="median").check(4)
        with pytest.raises(ConfigError, match=re.escape("needs n >= max(2*f+1, 2*f+3) = 7 inputs, got 6")):
            make_aggregator(wrapper, f=2, base="krum").check(6)
        with pytest.raises(ConfigError, match=re.escape("needs n >= max(2*f+1, 1) = 5 inputs, got 4")):
            make_aggregator(wrapper, f=2, base="mean").check(4)


def test_rules_print_their_f_and_base():
    assert repr(make_aggregator("mda", f=2)) == "MDA(f=2)"
    assert repr(make_aggregator("nnm", f=1, base="krum")) == "NNM(f=1, base=Krum(f=1))"


def test_bucketing_is_seeded_and_averages_buckets():
    x = sample(12, 5, 2)
    # Equal buckets: the mean of bucket means is the mean, whatever the shuffle.
    np.testing.assert_allclose(make_aggregator("bucketing", f=2, base="mean", s=3)(x), x.mean(0))
    np.testing.assert_allclose(make_aggregator("bucketing", f=2, base="median", s=1)(x), np.median(x, axis=0))
    a = make_aggregator("bucketing", f=2, base="median", seed=7)
    b = make_aggregator("bucketing", f=2, base="median", seed=7)
    first = [a(x) for _ in range(3)]
    assert all(np.array_equal(u, b(x)) for u in first)
    assert not np.array_equal(first[0], first[1]) or not np.array_equal(first[1], first[2])


@pytest.mark.parametrize("values,expected", [([0, 1, 2, 100, -100], 1.0), ([0, 0, 3, 100, 100], 1.0)])
def test_ctma_examples(values, expected):
    x = np.array(values, dtype=np.float64)[:, None]
    assert make_aggregator("ctma", f=2, base="median")(x)[0] == pytest.approx(expected)


def test_ctma_reference():
    x = sample(11, 4, 5)
    x0 = np.median(x, axis=0)
    kept = np.argsort(np.linalg.norm(x - x0, axis=1))[: 11 - 3]
    expected = x0 + (x[kept] - x0).sum(0) / len(kept)
    np.testing.assert_allclose(make_aggregator("ctma", f=3, base="median")(x), expected)


# -- coordinate_median -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_coordinate_median(n):
    x = sample(n, 50, n).astype(np.float32)
    out = coordinate_median(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (50,)
    np.testing.assert_allclose(out, np.median(x, axis=0), rtol=1e-6)
    t = torch.from_numpy(x).to(torch.float64)
    assert coordinate_median(t).dtype == torch.float64
    np.testing.assert_allclose(coordinate_median(t).numpy(), np.median(x, axis=0), rtol=1e-6)
    bf = coordinate_median(t.to(torch.bfloat16))  # torch path: numpy has no bfloat16
    assert bf.dtype == torch.bfloat16
    np.testing.assert_allclose(bf.float().numpy(), np.median(x, axis=0), atol=0.05)


@pytest.mark.parametrize("n,d", [(3, 4), (5, 4), (13, 4), (5, 32 * 5 * 4 + 7)])  # 3 and wide 5: networks
def test_median_of_an_odd_count_is_one_of_the_inputs_even_a_subnormal_one(n, d):
    # Halving a subnormal loses its last bit (the smallest one halves to 0): the middle value of
    # an odd count must be returned as it is, not as half of it plus half of it.
    rng = np.random.default_rng(n + d)
    for dtype in [np.float32, np.float64]:
        tiny = np.finfo(dtype).smallest_subnormal
        x = (rng.integers(1, 8, size=(n, d)) * 2 - 1).astype(dtype) * tiny  # odd multiples of it
        expected = np.sort(x, axis=0)[n // 2]
        np.testing.assert_array_equal(coordinate_median(x), expected)
    tiny = torch.tensor(2.0**-133, dtype=torch.bfloat16)  # bfloat16's smallest subnormal: the torch path
    x = torch.from_numpy(rng.integers(1, 8, size=(n, d)) * 2 - 1).to(torch.bfloat16) * tiny
    assert torch.equal(coordinate_median(x), x.sort(dim=0).values[n // 2])


def partition_median(x: np.ndarray) -> np.ndarray:
    """The median as computed before the sorting network (one np.partition): NaN sorts last."""
    n = len(x)
    lo, hi = (n - 1) // 2, n // 2
    part = np.partition(x, hi, axis=0)
    return part[hi] if lo == hi else part[:hi].max(axis=0) / 2 + part[hi] / 2


def awkward(n: int, d: int, dtype, seed: int, nan: bool = False) -> np.ndarray:
    """Ties (small integers), distinct values, +-inf, signed zeros and optionally NaN."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, d)).astype(dtype)
    x[:, : d // 2] = rng.standard_normal((n, d // 2))
    mask = rng.random((n, d)) < 0.1
    x[mask] = rng.choice([np.inf, -np.inf, -0.0, 0.0] + [np.nan] * nan, size=mask.sum())
    return x


def network_sized(n: int) -> int:
    return 32 * n * max(n - 1, 1) + 7  # wide enough for coordinate_median to take the sorting network


@pytest.fixture
def partition_calls(monkeypatch):
    """Counts np.partition calls, to tell which path coordinate_median took."""
    calls = []
    original = np.partition

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(np, "partition", counted)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", range(1, 17))
def test_median_network_is_exact(n, dtype, partition_calls):
    x = awkward(n, network_sized(n), dtype, seed=n)
    x.setflags(write=False)
    expected = np.median(x, axis=0)  # +inf and -inf in the middle give NaN here too
    old = partition_median(x)
    partition_calls.clear()
    out = coordinate_median(x)
    assert len(partition_calls) == (0 if 1 < n <= 12 else 1)
    assert out.dtype == dtype and out.shape == (x.shape[1],)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, old)  # equal up to the sign of a zero
    perm = np.random.default_rng(n).permutation(n)
    np.testing.assert_array_equal(coordinate_median(x[perm]), out)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 4, 6, 12])
def test_median_network_halves_as_the_partition_path_does_near_zero(n, dtype):
    # Halving a subnormal middle value rounds it: the network must round as the partition path
    # does (each middle value halved in the input's precision), or a column's median would depend
    # on how many columns come with it.
    tiny = np.finfo(dtype).smallest_normal
    x = (np.random.default_rng(n).standard_normal((n, network_sized(n))) * 2 * tiny).astype(dtype)
    assert (np.abs(x) < tiny).mean() > 0.2  # many subnormals, of both signs
    np.testing.assert_array_equal(coordinate_median(x), partition_median(x))


@pytest.mark.parametrize("n", range(1, 17))
def test_median_with_nan_matches_the_partition_path(n):
    for dtype in [np.float32, np.float64]:
        x = awkward(n, network_sized(n), dtype, seed=100 + n, nan=True)
        x[:, :40] = 1.0
        x[: (n - 1) // 2, 0] = np.nan  # as many as the median tolerates: it stays finite
        x[: (n - 1) // 2 + 1, 1] = np.nan  # one more, and it is NaN
        x[:, 2] = np.nan
        if n > 1:
            x[-1, 3] = np.nan  # a lone NaN in the last row: the largest
            x[-1, 4] = -np.inf
        old = partition_median(x)
        assert np.isfinite(old[0]) and np.isnan(old[1:3]).all()
        np.testing.assert_array_equal(coordinate_median(x), old)
        perm = np.random.default_rng(n).permutation(n)
        np.testing.assert_array_equal(coordinate_median(x[perm]), old)


@pytest.mark.parametrize("n", range(2, 13))
def test_median_network_notices_a_nan_in_any_row(n):
    # _median relies on the middle rows alone to notice NaN input.
    from byzsgd.aggregators import classic

    x = np.zeros((n, n))
    np.fill_diagonal(x, np.nan)  # column j: one NaN, in row j
    for j in range(n):
        assert classic._network_median(np.ascontiguousarray(x[:, j : j + 1]), finite=False) is None
    assert classic._network_median(np.zeros((n, 3)), finite=False) is not None


@pytest.mark.parametrize("n", range(2, 13))
def test_median_network_across_chunks(n, monkeypatch):
    from byzsgd.aggregators import classic

    monkeypatch.setattr(classic, "CHUNK", 7)  # several chunks and a ragged last one
    x = np.random.default_rng(n).standard_normal((n, 45)).astype(np.float32)
    np.testing.assert_array_equal(classic._network_median(x, finite=True), np.median(x, axis=0))


# -- properties of every rule ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RULES))
def test_no_mutation_and_output_kind(name):
    f = 2
    x = sample(smallest_n(name, f) + 1, 6, 0).astype(np.float32)
    copy = x.copy()
    x.setflags(write=False)  # like arrays received through Ray
    out = rule(name, f)(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (6,)
    assert np.array_equal(x, copy)
    t = torch.from_numpy(copy.astype(np.float64))
    t_copy = t.clone()
    out_t = rule(name, f)(t)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    assert torch.equal(t, t_copy)
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-4, atol=1e-5)
    out_t += 1  # the output never aliases the input
    assert torch.equal(t, t_copy)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("seed", range(2))
def test_permutation_invariance(name, seed):
    f = 2
    x = sample(smallest_n(name, f) + 2, 8, seed)
    perm = np.random.default_rng(seed).permutation(len(x))
    np.testing.assert_allclose(rule(name, f)(x[perm]), rule(name, f)(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_dropped_and_counted_against_f(name, bad):
    f = 2
    n = smallest_n(name, f) + 1
    x = sample(n, 5, 1)
    x[1, 3] = bad
    x[n - 1, :] = bad
    out = rule(name, f)(x)
    assert np.isfinite(out).all()
    # Same as the rule on the finite rows with the non-finite senders counted as Byzantine.
    np.testing.assert_allclose(out, rule(name, f - 2)(np.delete(x, [1, n - 1], axis=0)))
    assert np.array_equal(out, rule(name, f)(x))


@pytest.mark.parametrize("name", sorted(RULES))
def test_more_non_finite_rows_than_f_never_poison(name):
    x = sample(smallest_n(name, 1) + 2, 4, 2)
    x[:3] = np.nan
    assert np.isfinite(rule(name, 1)(x)).all()
    x[:] = np.inf
    assert np.array_equal(rule(name, 1)(x), np.zeros(4))


@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("f", [1, 3])
def test_far_outliers_do_not_move_the_output(name, f):
    n = smallest_n(name, f) + 1
    x = sample(n, 10, f)
    honest = x[f:]
    x[:f] = 1e6 + np.random.default_rng(f).standard_normal((f, 10))
    out = rule(name, f)(x)
    center = honest.mean(0)
    radius = np.linalg.norm(honest - center, axis=1).max()
    assert np.linalg.norm(out - center) <= 2 * radius


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "meamed", "bulyan", "mda", "multikrum"])
def test_coordinate_wise_output_stays_in_the_honest_box(name):
    f = 2
    n = smallest_n(name, f)
    x = sample(n, 10, 3)
    x[:f] = -1e6
    out = rule(name, f)(x)
    assert (out >= x[f:].min(0) - 1e-12).all() and (out <= x[f:].max(0) + 1e-12).all()


def test_krum_picks_an_honest_vector():
    x = sample(9, 6, 4)
    x[:3] = 1e6
    out = make_aggregator("krum", f=3)(x)
    assert any(np.array_equal(out, row) for row in x[3:])


# -- validation ------------------------------------------------------------------------------


def test_error_names_rule_and_bound():
    bulyan = make_aggregator("bulyan", f=2)
    assert AGGREGATORS["bulyan"].min_inputs(2) == 11
    with pytest.raises(ConfigError) as error:
        bulyan.check(9)
    assert str(error.value) == "aggregator 'bulyan' with f=2 needs n >= 4*f+3 = 11 inputs, got 9"
    with pytest.raises(ConfigError, match="4\\*f\\+3 = 11"):
        bulyan(np.zeros((9, 3)))


@pytest.mark.parametrize(
    "name,f,expected",
    [
        ("mean", 5, 1),
        ("median", 2, 5),
        ("krum", 2, 7),
        ("multikrum", 1, 5),
        ("mda", 3, 7),
        ("geometric_median", 1, 3),
        ("bulyan", 1, 7),
    ],
)
def test_min_inputs(name, f, expected):
    assert AGGREGATORS[name].min_inputs(f) == expected
    rule_ = make_aggregator(name, f=f)
    rule_.check(expected)
    if expected > 1:
        with pytest.raises(ConfigError, match=repr(name)):
            rule_.check(expected - 1)


def test_wrapper_bounds_come_from_the_base():
    assert AGGREGATORS["ctma"].min_inputs(2, base="bulyan") == 11
    assert AGGREGATORS["nnm"].min_inputs(2, base="mean") == 5
    assert AGGREGATORS["bucketing"].min_inputs(1, base="median", s=2) == 5
    nested = make_aggregator("ctma", f=2, base={"name": "nnm", "params": {"base": "krum"}})
    with pytest.raises(ConfigError, match="'ctma' \\(base 'nnm' \\(base 'krum'\\)\\)"):
        nested.check(6)


@pytest.mark.parametrize(
    "name,f,params",
    [
        ("mda", -1, {}),
        ("mda", True, {}),
        ("mda", 1.5, {}),
        ("nosuchrule", 1, {}),
        ("median", 1, {"tau": 3}),
        ("krum", 1, {"neighbours": 0}),
        ("multikrum", 1, {"m": -2}),
        ("geometric_median", 1, {"tol": 0}),
        ("centered_clipping", 1, {"tau": -1}),
        ("ctma", 1, {}),
        ("ctma", 1, {"base": "nosuchrule"}),
        ("ctma", 1, {"base": {"name": "median", "param": {}}}),
        ("ctma", 1, {"base": {"name": "median", "params": {"f": 3}}}),
        ("bucketing", 1, {"base": "median", "s": 0}),
        ("clipping", 1, {"base": "median", "threshold": 0}),
    ],
)
def test_bad_configuration_is_a_config_error(name, f, params):
    with pytest.raises(ConfigError):
        make_aggregator(name, f=f, **params)


def test_krum_neighbours_larger_than_inputs():
    with pytest.raises(ConfigError, match="neighbours"):
        make_aggregator("krum", f=1, neighbours=8)(np.zeros((6, 2)))


def test_input_shape_is_checked():
    with pytest.raises(ValueError, match="\\(n, d\\)"):
        make_aggregator("mean", f=0)(np.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(RULES))
def test_cuda_matches_cpu(name):
    x = torch.from_numpy(sample(smallest_n(name, 2) + 1, 32, 0)).float()
    out = rule(name, 2)(x.cuda())
    assert out.is_cuda and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), rule(name, 2)(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rules_survive_pickling(name):
    # Ray ships nodes, and the rules they hold, to actors by pickling.
    x = sample(smallest_n(name, 2) + 1, 5, 0)
    built = rule(name, 2)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(built))(x), built(x))


def test_half_precision_inputs():
    x = sample(9, 16, 0).astype(np.float16)
    for name in ["median", "trimmed_mean", "meamed", "mda", "krum", "ctma"]:
        out = rule(name, 2)(x)
        assert out.dtype == np.float16 and np.isfinite(out).all()


def test_coordinate_median_sorts_nan_as_largest():
    x = np.array([[0.0, 1.0], [np.nan, 2.0], [5.0, np.nan]])
    np.testing.assert_array_equal(coordinate_median(x), [5.0, 2.0])


@pytest.mark.parametrize("seed", range(6))
def test_mean_around_median_with_ties_and_small_windows(seed):
    from byzsgd.aggregators.classic import mean_around_median

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    x = rng.integers(-3, 4, size=(n, 40)).astype(np.float64)  # many ties in distance
    for keep in range(1, n + 1):
        expected = ref_meamed(x, n - keep)
        np.testing.assert_allclose(mean_around_median(torch.from_numpy(x), keep), expected)
        x32 = torch.from_numpy(x).to(torch.bfloat16)  # the torch path (numpy has no bfloat16)
        np.testing.assert_allclose(mean_around_median(x32, keep).double(), expected, atol=0.02)


@pytest.mark.parametrize("dtype,top", [(torch.float16, 2048), (torch.bfloat16, 256)])  # numpy's path, torch's
def test_mean_around_median_of_half_precision_sums_in_float32_and_rounds_once(dtype, top):
    # Integers up to `top` are exact in the format (11 and 8 bits), and so are an odd count's
    # median and the distances to it; their sums are not. Summed in float32 and rounded once,
    # the result is the exact mean rounded to the input's precision.
    from byzsgd.aggregators.classic import mean_around_median

    rng = np.random.default_rng(4)
    n = 7
    x = rng.integers(top - 56, top + 1, size=(n, 400)).astype(np.float64)
    x[:, :200] = rng.integers(top - 16, top - 6, size=(n, 200))  # many equal values: copies of the keep-th key
    for keep in range(1, n + 1):
        out = mean_around_median(torch.from_numpy(x).to(dtype), keep)
        assert out.dtype == dtype
        expected = torch.from_numpy(ref_meamed(x, n - keep)).float().to(dtype)
        assert torch.equal(out, expected), keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_around_median_sums_only_the_values_it_keeps(dtype):
    # Five equal rows of 2^126: three of them sum to below float32's largest value, five do not.
    from byzsgd.aggregators.classic import mean_around_median

    x = torch.full((5, 2), 2.0**126, dtype=dtype)
    assert torch.equal(mean_around_median(x, 3), x[0])
    assert torch.equal(make_aggregator("meamed", f=2)(x), x[0])


def test_wrapper_base_errors_name_the_wrapper_and_the_rule():
    cases = [
        ({}, "aggregator 'nnm' wraps another rule: give it a 'base'"),
        ({"base": make_aggregator("krum", f=1)}, "aggregator 'nnm': base rule has f=1, expected 2"),
        ({"base": {"name": "krum", "params": {"f": 2}}}, "aggregator 'nnm': the base rule takes f from the wrapper"),
        ({"base": {"name": "krum", "extra": 1}}, "aggregator 'nnm': base must look like {name: ..., params: {...}}"),
        ({"base": 3}, "aggregator 'nnm': base must be a rule name or mapping, got 3"),
    ]
    for params, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            AGGREGATORS["nnm"](2, **params)
    assert make_aggregator("nnm", f=2, base={"name": "krum"}).base.f == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_gram_over_several_column_blocks_keeps_every_distance(dtype):
    # numpy (float32) and torch (bfloat16) paths, over two full column blocks and a ragged third.
    from byzsgd.aggregators.distances import exact_gram

    d = 2 * (1 << 14) + 3
    x = (torch.randn(5, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2.0).to(dtype)
    exact = x.double()
    g = exact_gram(x)
    assert g.dtype == np.float64 and g.shape == (5, 5)
    d2 = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
    np.testing.assert_allclose(d2, ((exact[:, None] - exact[None]) ** 2).sum(-1).numpy(), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_mean_of_chosen_half_precision_rows_is_rounded_once(dtype):
    # accumulated in float32 and rounded once to the input precision, not weighted in half precision
    from byzsgd.aggregators.base import mean_of

    x = (torch.randn(9, 1000, generator=torch.Generator().manual_seed(5)) * 3).to(dtype)
    rows = np.array([0, 2, 4, 5, 8])
    out = mean_of(x, rows)
    assert out.dtype == dtype
    assert torch.equal(out, x[torch.from_numpy(rows)].float().mean(0).to(dtype))


def test_too_few_finite_rows_for_the_rule_fall_back_to_their_mean():
    # krum needs 2f+3 rows: 3 of 5 non-finite leave 2 finite ones (f drops to 0, still 3 needed)
    x = np.arange(10, dtype=np.float64).reshape(5, 2)
    x[[0, 2, 4]] = np.nan
    np.testing.assert_array_equal(make_aggregator("krum", f=1)(x), (x[1] + x[3]) / 2)


def test_a_rule_built_with_bad_params_names_the_aggregator_field():
    with pytest.raises(ConfigError, match=r"^aggregator: unknown parameter 'foo' for aggregator 'mda'"):
        make_aggregator("mda", f=1, foo=1)


def test_big_endian_and_reversed_arrays_are_read_as_they_are():
    rows = np.arange(6, dtype=np.float64).reshape(3, 2)
    expected = rows.mean(0)
    np.testing.assert_array_equal(make_aggregator("mean", f=0)(rows.astype(">f8")), expected)  # non-native order
    np.testing.assert_array_equal(make_aggregator("mean", f=0)(rows[::-1]), expected)  # a negative stride


def test_a_result_that_is_a_row_of_the_input_is_returned_as_a_copy():
    # like_input guards every rule (a plugin's too) that returns a view of its input
    from byzsgd.aggregators.base import like_input

    x = torch.tensor([[0.0, 0.0], [0.1, 0.0]])
    out = like_input(x[1], x, x)
    out += 100.0
    assert torch.equal(x, torch.tensor([[0.0, 0.0], [0.1, 0.0]]))
    fresh = x.sum(0)
    assert like_input(fresh, x, x) is fresh  # not a view: no copy


@pytest.mark.parametrize("f", [True, 1.5, -1])
def test_f_must_be_a_non_negative_integer(f):
    with pytest.raises(ConfigError, match=rf"^aggregator 'mean': f must be an integer >= 0, got {re.escape(repr(f))}$"):
        AGGREGATORS["mean"](f)


def test_integer_and_read_only_inputs_are_read_as_float64_without_warnings():
    rows = np.arange(6).reshape(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = make_aggregator("median", f=0)(rows)
        assert out.dtype == np.float64 and out.tolist() == [2.0, 3.0]
        frozen = rows.astype(np.float32)
        frozen.flags.writeable = False  # as arrays arrive through Ray
        np.testing.assert_array_equal(make_aggregator("mean", f=0)(frozen), [2.0, 3.0])
    out = make_aggregator("median", f=0)(torch.from_numpy(rows))
    assert out.dtype == torch.float64 and out.tolist() == [2.0, 3.0]


def test_krum_ranking_orders_equal_scores_by_content_and_keeps_score_order_first():
    from byzsgd.aggregators.krum import ranked

    rows = [torch.tensor([6.0, 0.0]), torch.tensor([5.0, 9.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])]
    # the tie {0, 1} is ordered by content (row 1 first); rows 2 and 3 score more, so they come
    # after it however small their contents
    assert ranked(np.array([1.0, 1.0, 2.0, 3.0]), rows).tolist() == [1, 0, 2, 3]
    assert ranked(np.array([2.0, 1.0, 1.0, 1.0]), rows).tolist() == [2, 3, 1, 0]
