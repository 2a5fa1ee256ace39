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


def random_graph(rng: np.random.Generator, n: int, density: float) -> list[int]:
    """Bitmask adjacency rows (bit u of row v: edge v-u) of a random undirected graph."""
    edges = np.triu(rng.random((n, n)) < density, 1)
    edges = edges | edges.T
    return [sum(1 << u for u in range(n) if edges[v, u]) for v in range(n)]


def smallest_cover_size(adj: list[int], alive: int) -> int:
    """The size of a minimum vertex cover of the graph induced on `alive`, trying every subset."""
    members = [v for v in range(len(adj)) if alive >> v & 1]
    for size in range(len(members) + 1):
        for chosen in itertools.combinations(members, size):
            cover = sum(1 << v for v in chosen)
            if all(not adj[v] & alive & ~cover for v in members if not cover >> v & 1):
                return size
    raise AssertionError("unreachable: every vertex is a cover")


@pytest.mark.parametrize("seed", range(30))
def test_cover_search_agrees_with_every_subset(seed):
    # Sparse graphs have degree-1 vertices (the pendant rule), dense ones vertices of degree above
    # the budget (forced removal), medium ones need branching; alive masks drop random vertices.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 11))
    adj = random_graph(rng, n, float(rng.choice([0.15, 0.3, 0.5, 0.8])))
    alive = int(rng.integers(0, 1 << n)) if seed % 3 == 0 else (1 << n) - 1
    smallest = smallest_cover_size(adj, alive)
    for budget in range(n + 1):
        cover = mda._cover(adj, alive, budget)
        if budget < smallest:
            assert cover is None, (budget, smallest)
            continue
        assert cover is not None, (budget, smallest)
        assert cover & ~alive == 0, "the cover uses only alive vertices"
        assert cover.bit_count() <= budget
        for v in range(n):
            if alive >> v & 1 and not cover >> v & 1:
                assert adj[v] & alive & ~cover == 0, f"edge at {v} left uncovered"


def graph(n: int, edges: list[tuple[int, int]]) -> list[int]:
    adj = [0] * n
    for u, v in edges:
        adj[u] |= 1 << v
        adj[v] |= 1 << u
    return adj


# Vertex 0 joins 1, 2, 3; each of those sits in a triangle (1, 4, 7), (2, 5, 8), (3, 6, 9). A
# triangle needs two cover vertices, and taking 1, 2, 3 among them covers vertex 0's edges: the
# only covers of size 6 leave out vertex 0, the first vertex of maximum degree, so the search
# must take its second branch (keep it, remove its neighbours).
TRIANGLES = [e for i in (1, 2, 3) for e in [(i, i + 3), (i, i + 6), (i + 3, i + 6)]]
KEEP_THE_HUB = graph(10, [(0, 1), (0, 2), (0, 3), *TRIANGLES])


@pytest.mark.parametrize(
    "adj,smallest",
    [
        (graph(4, [(0, 1), (2, 3)]), 2),  # two disjoint edges: two pendant steps
        (graph(4, [(0, 1), (0, 2), (0, 3)]), 1),  # a star: its centre
        (graph(3, [(0, 1), (1, 2), (0, 2)]), 2),  # a triangle: branching, no pendant
        (graph(5, [(0, 1), (0, 2), (0, 3), (0, 4)]), 1),  # a star, also with no budget at all
        (KEEP_THE_HUB, 6),
    ],
)
def test_cover_search_on_small_graphs(adj, smallest):
    alive = (1 << len(adj)) - 1
    assert smallest_cover_size(adj, alive) == smallest
    for budget in range(smallest + 3):
        cover = mda._cover(adj, alive, budget)
        assert (cover is not None) == (budget >= smallest), budget
        if cover is not None:
            assert cover.bit_count() <= budget
            assert all(adj[v] & ~cover == 0 for v in range(len(adj)) if not cover >> v & 1), "an edge is uncovered"


@pytest.mark.parametrize("seed", range(10))
def test_pad_fills_the_removal_set_with_the_largest_free_indices(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    flags = rng.integers(0, 3, size=n)  # 0 free, 1 removed, 2 kept
    removed = sum(1 << v for v in range(n) if flags[v] == 1)
    kept = sum(1 << v for v in range(n) if flags[v] == 2)
    free = [v for v in range(n) if flags[v] == 0]
    for f in range(n + 1):
        padded = mda._pad(removed, kept, n, f)
        missing = max(0, f - removed.bit_count())
        expected = removed | sum(1 << v for v in sorted(free, reverse=True)[:missing])
        assert padded == expected, (f, bin(removed), bin(kept))


@pytest.mark.parametrize("solve", SOLVERS)
def test_one_point_and_every_point(solve):
    d2 = direct_sq_distances(np.random.default_rng(4).standard_normal((6, 2)))
    np.testing.assert_array_equal(solve(d2, 1), [0])  # every single point has diameter 0
    np.testing.assert_array_equal(solve(d2, 6), np.arange(6))
