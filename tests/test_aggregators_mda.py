"""MDA's subset search against brute force over every subset, including inputs full of ties, and
the dispatcher (which scores every subset itself on small instances) against the search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from byzsgd.aggregators import make_aggregator, mda, min_diameter_subset, pairwise_sq_distances
from byzsgd.aggregators.mda import search_min_diameter_subset

SOLVERS = [min_diameter_subset, search_min_diameter_subset]


def brute_force(d2: np.ndarray, size: int) -> np.ndarray:
    """The lexicographically first subset of minimum diameter, scoring every subset."""
    subsets = np.array(list(itertools.combinations(range(len(d2)), size)))
    diameters = d2[subsets[:, :, None], subsets[:, None, :]].max(axis=(1, 2))
    return subsets[np.argmin(diameters)]  # combinations come in lexicographic order


def direct_sq_distances(x: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("n", range(3, 13))
@pytest.mark.parametrize("dim", [1, 2, 50])
def test_every_f_on_random_points(n, dim):
    x = np.random.default_rng(100 * n + dim).standard_normal((n, dim))
    d2 = pairwise_sq_distances(torch.from_numpy(x))
    for f in range((n - 1) // 2 + 1):
        expected = brute_force(direct_sq_distances(x), n - f)
        for solve in SOLVERS:
            np.testing.assert_array_equal(solve(d2, n - f), expected)
        np.testing.assert_allclose(make_aggregator("mda", f=f)(x), x[expected].mean(0), atol=1e-12)


@pytest.mark.parametrize("n,f", [(16, 5), (18, 6), (24, 4)])
def test_larger_inputs(n, f):
    x = np.random.default_rng(n).standard_normal((n, 2))
    d2 = direct_sq_distances(x)
    np.testing.assert_array_equal(min_diameter_subset(d2, n - f), brute_force(d2, n - f))


@pytest.mark.parametrize("seed", range(12))
def test_ties_break_to_the_lexicographically_smallest_subset(seed):
    # Points of a small integer grid: distances are exact integers with many ties.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 13))
    x = rng.integers(0, 2, size=(n, int(rng.integers(1, 5)))).astype(np.float64)
    d2 = pairwise_sq_distances(torch.from_numpy(x))
    np.testing.assert_array_equal(d2, direct_sq_distances(x))
    for f in range((n - 1) // 2 + 1):
        for solve in SOLVERS:
            np.testing.assert_array_equal(solve(d2, n - f), brute_force(d2, n - f))


@pytest.mark.parametrize("solve", SOLVERS)
def test_identical_points_keep_the_first_indices(solve):
    np.testing.assert_array_equal(solve(np.zeros((9, 9)), 5), np.arange(5))


def lattice(rng: np.random.Generator, n: int) -> np.ndarray:
    """Points of a small integer lattice, some repeated: exact distances, many exact ties."""
    points = rng.integers(-1, 2, size=(n, int(rng.integers(1, 4)))).astype(np.float64)
    copies = rng.integers(0, n, size=n // 3)
    points[rng.integers(0, n, size=len(copies))] = points[copies]
    return points


@pytest.mark.parametrize("n", range(2, 17))
def test_dispatcher_and_search_agree_on_exact_ties(n):
    rng = np.random.default_rng(n)
    for _ in range(4):
        x = lattice(rng, n)
        d2 = pairwise_sq_distances(torch.from_numpy(x))
        for size in range(1, n + 1):
            expected = search_min_diameter_subset(d2, size)
            chosen = min_diameter_subset(d2, size)
            assert chosen.dtype == expected.dtype == np.int64
            np.testing.assert_array_equal(chosen, expected)


def test_small_instances_score_every_subset(monkeypatch):
    def refuse(d2, size):
        raise AssertionError("the search ran")

    monkeypatch.setattr(mda, "search_min_diameter_subset", refuse)
    d2 = direct_sq_distances(np.random.default_rng(0).standard_normal((7, 3)))
    chosen = min_diameter_subset(d2, 5)  # ByzSGD's default n=7, f=2
    np.testing.assert_array_equal(chosen, brute_force(d2, 5))
    chosen[:] = 0  # the result is the caller's, not the cached table of subsets
    np.testing.assert_array_equal(min_diameter_subset(d2, 5), brute_force(d2, 5))
    with pytest.raises(AssertionError, match="the search ran"):
        min_diameter_subset(direct_sq_distances(np.zeros((20, 1))), 14)


def test_byzantine_cluster_is_left_out():
    rng = np.random.default_rng(0)
    honest = rng.standard_normal((14, 30))
    byzantine = 3.0 + 0.01 * rng.standard_normal((6, 30))  # tight, but far from the honest
    x = np.concatenate([byzantine, honest])
    out = make_aggregator("mda", f=6)(x)
    np.testing.assert_allclose(out, honest.mean(0))


def test_large_instance_is_permutation_invariant():
    x = np.random.default_rng(1).standard_normal((40, 100))
    perm = np.random.default_rng(2).permutation(40)
    rule = make_aggregator("mda", f=13)
    np.testing.assert_allclose(rule(x[perm]), rule(x), atol=1e-12)
    d2 = pairwise_sq_distances(torch.from_numpy(x))
    chosen = min_diameter_subset(d2, 27)
    chosen_permuted = np.sort(perm[min_diameter_subset(d2[np.ix_(perm, perm)], 27)])
    np.testing.assert_array_equal(chosen, chosen_permuted)
