"""Minimum-Diameter Averaging (El Mhamdi et al., ByzSGD), exact and without subset enumeration.

MDA averages a subset S of n-f inputs minimising max_{i,j in S} ||x_i - x_j||. A subset has
diameter <= t exactly when its complement covers every edge of the "conflict graph" G_t that
joins the pairs farther apart than t. So the optimal diameter is the smallest pairwise distance
t at which G_t has a vertex cover of size <= f, which we binary-search over the sorted distinct
distances (from a counting lower bound; each success jumps to the diameter actually found).
Deciding "vertex cover of size <= f" is exponential only in f, and only in the worst case: the
classic bounded search tree (a vertex of degree > budget must be removed; a degree-1 vertex's
neighbour may be; else branch on a vertex v of maximum degree: remove v, or keep it and remove
all its neighbours) with an edge-count bound for pruning. Adjacency rows are bitmasks in Python
ints (any n), so each step is a few integer operations: the whole search takes well under a
millisecond at n=31, f=10, next to the O(n^2 d) distance matrix.

Among subsets of optimal diameter we return the lexicographically smallest index set (decided
greedily, index by index, with the same cover search), so the output is deterministic and is
permutation invariant except when distinct subsets tie exactly on diameter.

For small instances (n=7, f=2: 21 subsets) that search's Python steps cost more than scoring
every subset at once: when the subsets' pairs number at most _BRUTE_FORCE_ENTRIES, numpy takes
the max of d2 over each subset's pairs and the first minimum over the subsets, listed in
lexicographic order, which is the same answer.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from byzsgd.aggregators.base import Aggregator, Rows, finite_mean_of_rows, mean, mean_of, mean_of_rows, register
from byzsgd.aggregators.distances import finite_row_distances, pairwise_sq_distances


def _adjacency(d2: np.ndarray, t: float) -> list[int]:
    """Bitmask rows of the conflict graph: bit u of row v is set when d2[v, u] > t."""
    bits = np.packbits(d2 > t, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in bits]


def _cover(adj: list[int], alive: int, budget: int) -> int | None:
    """A vertex cover of at most `budget` vertices of the graph induced on `alive`, or None."""
    cover = 0
    while True:
        best, best_degree, edges, pendant = -1, 0, 0, -1
        rest = alive
        while rest:
            low = rest & -rest
            rest ^= low
            v = low.bit_length() - 1
            degree = (adj[v] & alive).bit_count()
            edges += degree
            if degree > best_degree:
                best, best_degree = v, degree
            if degree == 1 and pendant < 0:
                pendant = v
        if best_degree == 0:
            return cover
        if budget <= 0 or edges // 2 > budget * best_degree:
            # Each cover vertex removes at most best_degree edges.
            return None
        if best_degree > budget:
            # Keeping `best` would need more removals than allowed.
            take = 1 << best
        elif pendant >= 0:
            # Removing the only neighbour of a degree-1 vertex is never worse than removing it.
            take = adj[pendant] & alive
        else:
            break
        cover |= take
        alive &= ~take
        budget -= 1
    bit = 1 << best
    found = _cover(adj, alive & ~bit, budget - 1)
    if found is not None:
        return cover | bit | found
    neighbours = adj[best] & alive
    found = _cover(adj, alive & ~bit & ~neighbours, budget - best_degree)
    if found is not None:
        return cover | neighbours | found
    return None


def _pad(removed: int, kept: int, n: int, f: int) -> int:
    """Extend `removed` to exactly f vertices outside `kept`, taking the largest indices."""
    count = removed.bit_count()
    for v in range(n - 1, -1, -1):
        if count >= f:
            break
        bit = 1 << v
        if not (removed | kept) & bit:
            removed |= bit
            count += 1
    return removed


def _members(mask: int, n: int) -> np.ndarray:
    return np.array([v for v in range(n) if mask >> v & 1], dtype=np.int64)


def _lexicographic(adj: list[int], n: int, f: int, witness: int) -> int:
    """The lexicographically smallest kept set whose complement (f vertices) covers `adj`.

    `witness` is some valid removal set of size f. Index by index we keep v when some cover of
    size <= f avoids every kept vertex; v is kept for free when the current witness already
    keeps it, so the cover search only runs for vertices the witness removes."""
    everyone = (1 << n) - 1
    kept = removed = 0
    for v in range(n):
        bit = 1 << v
        if removed.bit_count() == f:
            return everyone & ~removed
        if kept.bit_count() == n - f:
            return kept
        if not witness & bit:
            kept |= bit
            continue
        trial = kept | bit
        forced = 0  # every conflicting neighbour of a kept vertex must go
        for u in _members(trial, n):
            forced |= adj[u]
        found = None
        if not forced & trial:
            base = removed | forced
            budget = f - base.bit_count()
            if budget >= 0:
                found = _cover(adj, everyone & ~trial & ~base, budget)
                if found is not None:
                    found |= base
        if found is None:
            removed |= bit
        else:
            kept = trial
            witness = _pad(found, kept, n, f)
    return everyone & ~removed


# Scoring every subset beats the search while it gathers at most this many distances (measured:
# about 60 us at this size against the search's 150-300 us; they break even near 1e5).
_BRUTE_FORCE_ENTRIES = 50_000


@functools.lru_cache(maxsize=64)
def _subsets(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `size`-subset of range(n) in lexicographic order, and each one's pairs i < j as flat
    indices into an (n, n) matrix (both read-only: they are shared between calls)."""
    subsets = np.array(list(itertools.combinations(range(n), size)), dtype=np.intp).reshape(-1, size)
    i, j = np.triu_indices(size, 1)
    pairs = subsets[:, i] * n + subsets[:, j]
    subsets.setflags(write=False)
    pairs.setflags(write=False)
    return subsets, pairs


def min_diameter_subset(d2: np.ndarray, size: int) -> np.ndarray:
    """Sorted indices of the lexicographically smallest subset of `size` points whose largest
    pairwise (squared) distance in the symmetric matrix `d2` is minimal.

    Scores every subset when they are few, else runs `search_min_diameter_subset`."""
    n = d2.shape[0]
    if 1 < size < n and math.comb(n, size) * (size * (size - 1) // 2) <= _BRUTE_FORCE_ENTRIES:
        subsets, pairs = _subsets(n, size)
        # argmin returns the first minimum: the lexicographically smallest optimal subset (as a
        # copy: astype never hands out the cached table).
        return subsets[np.argmin(np.ravel(d2)[pairs].max(axis=1))].astype(np.int64)
    return search_min_diameter_subset(d2, size)


def search_min_diameter_subset(d2: np.ndarray, size: int) -> np.ndarray:
    """`min_diameter_subset` by binary search over thresholds and vertex-cover search (see the
    module docstring): exponential in n - size only in the worst case."""
    n = d2.shape[0]
    f = n - size
    if f <= 0:
        return np.arange(n)
    if size == 1:
        return np.zeros(1, dtype=np.int64)
    # A point of S has size-1 others within the diameter, and S has `size` points: a lower bound.
    per_point = np.sort(d2, axis=1)[:, size - 1]
    lower = np.sort(per_point)[size - 1]
    candidates = np.unique(d2[np.triu_indices(n, 1)])
    candidates = candidates[candidates >= lower]
    everyone = (1 << n) - 1

    def solve(t: float) -> int | None:
        cover = _cover(_adjacency(d2, t), everyone, f)
        return None if cover is None else _pad(cover, 0, n, f)

    lo, hi = 0, len(candidates) - 1
    best = solve(candidates[hi])  # the full set's diameter always works
    while lo < hi:
        mid = (lo + hi) // 2
        removal = solve(candidates[mid])
        if removal is None:
            lo = mid + 1
            continue
        # The subset found may beat the threshold: jump straight to its actual diameter.
        kept = _members(everyone & ~removal, n)
        hi = int(np.searchsorted(candidates, d2[np.ix_(kept, kept)].max()))
        best = removal
    adj = _adjacency(d2, candidates[hi])
    return _members(_lexicographic(adj, n, f, best), n)


@register("mda")
class MDA(Aggregator):
    """Minimum-Diameter Averaging: the mean of the n-f inputs with the smallest diameter.

    Needs n >= 2f+1. Exact; one Gram product for the distances, then a search exponential in
    f only in the worst case (see the module docstring)."""

    bound = (2, 1)

    def selection(self, x: torch.Tensor, f: int) -> np.ndarray:
        """Indices of the averaged subset."""
        return min_diameter_subset(pairwise_sq_distances(x), x.shape[0] - f)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        if f == 0:
            return mean(x)
        return mean_of(x, self.selection(x, f))

    def _aggregate_rows(self, rows: Rows, f: int) -> np.ndarray | None:
        """The distances of the rows read in place, their Gram product the finite check (measured:
        5 rows of 1.63M in ~15 ms, against ~22 ms to stack, check and aggregate them)."""
        if f == 0:
            return finite_mean_of_rows(rows)
        d2 = finite_row_distances(rows)
        return None if d2 is None else mean_of_rows(rows, min_diameter_subset(d2, len(rows) - f))
