"""Krum, Multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from byzsgd.aggregators.base import Aggregator, Rows, mean_of, mean_of_rows, register
from byzsgd.aggregators.classic import mean_around_median
from byzsgd.aggregators.distances import finite_row_distances, pairwise_sq_distances
from byzsgd.registry import ConfigError


def krum_scores(d2: np.ndarray, neighbours: int) -> np.ndarray:
    """Each point's sum of squared distances to its `neighbours` nearest other points."""
    # Column 0 of each sorted row is a zero: the point itself (or an exact duplicate, same sum).
    return np.sort(d2, axis=1)[:, 1 : neighbours + 1].sum(axis=1)


def ranked(scores: np.ndarray, rows: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Indices by increasing score; equal scores ordered by the rows' contents (first differing
    coordinate), not by position. A mutually nearest pair always scores alike, so breaking that
    tie by index would let the order of arrival pick the output."""
    order = [int(i) for i in np.argsort(scores, kind="stable")]
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and scores[order[end]] == scores[order[start]]:
            end += 1
        if end - start > 1:
            by_content = functools.cmp_to_key(lambda a, b: _compare(rows[a], rows[b]))
            order[start:end] = sorted(order[start:end], key=by_content)
        start = end
    return np.array(order, dtype=np.int64)


def _compare(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> int:
    differ = np.flatnonzero(a != b) if isinstance(a, np.ndarray) else torch.nonzero(a != b).flatten()
    if len(differ) == 0:
        return 0
    k = int(differ[0])
    return -1 if a[k] < b[k] else 1


def _positive_int(rule: str, name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise ConfigError(f"aggregator {rule!r}: {name} must be an integer >= 1, got {value!r}")
    return None if value is None else int(value)


@register("multikrum")
class MultiKrum(Aggregator):
    """Multi-Krum: average the m inputs with the lowest Krum scores.

    A point's score is the sum of its squared distances to its `neighbours` nearest other
    points; Blanchard et al. use n-f-2 neighbours (the default), which needs n >= 2f+3. `m`
    defaults to n-f. Equal scores are ordered by the inputs' contents (see :func:`ranked`), so the
    output does not depend on the order of the inputs."""

    bound = (2, 3)

    def __init__(self, f: int, m: int | None = None, neighbours: int | None = None) -> None:
        super().__init__(f)
        self.m = _positive_int(self.name, "m", m)
        self.neighbours = _positive_int(self.name, "neighbours", neighbours)

    def check(self, n: int) -> None:
        super().check(n)
        if (self.m or 0) > n or (self.neighbours or 0) > n - 1:
            raise ConfigError(
                f"aggregator {self.name!r}: m={self.m} and neighbours={self.neighbours}"
                f" must not exceed n={n} and n-1"
            )

    def _counts(self, n: int, f: int) -> tuple[int, int]:
        # Explicit counts were checked against the full n; dropped non-finite rows shrink it.
        m = n - f if self.m is None else min(self.m, n)
        k = n - f - 2 if self.neighbours is None else min(self.neighbours, n - 1)
        return m, k

    def selection(self, x: torch.Tensor, f: int) -> np.ndarray:
        """Indices of the averaged inputs, best score first."""
        m, k = self._counts(x.shape[0], f)
        scores = krum_scores(pairwise_sq_distances(x), k)
        return ranked(scores, list(x))[:m]

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        return mean_of(x, self.selection(x, f))

    def _aggregate_rows(self, rows: Rows, f: int) -> np.ndarray | None:
        """As MDA's row path: the distances of the rows read in place (their Gram product the
        finite check), then the average of the selected rows chunk by chunk."""
        d2 = finite_row_distances(rows)
        if d2 is None:
            return None
        m, k = self._counts(len(rows), f)
        return mean_of_rows(rows, ranked(krum_scores(d2, k), rows)[:m])


@register("krum")
class Krum(MultiKrum):
    """Krum: the single input with the lowest score (Multi-Krum with m=1); see MultiKrum."""

    def __init__(self, f: int, neighbours: int | None = None) -> None:
        super().__init__(f, m=1, neighbours=neighbours)


@register("bulyan")
class Bulyan(Aggregator):
    """Bulyan: pick theta = n-2f inputs by repeated Krum, then per coordinate average the
    beta = theta-2f picked values closest to their median. Needs n >= 4f+3.

    Each round scores the inputs not yet picked, among themselves, with Krum's neighbour count
    for that round's size r: r-f-2, but at least 1 (the last rounds would otherwise score
    everything zero). Equal scores are ordered by the inputs' contents, not their positions (a
    mutually nearest pair scores alike). One distance matrix serves every round."""

    bound = (4, 3)

    def selection(self, x: torch.Tensor, f: int) -> np.ndarray:
        d2 = pairwise_sq_distances(x)
        n = x.shape[0]
        remaining = list(range(n))
        picked: list[int] = []
        for _ in range(n - 2 * f):
            sub = d2[np.ix_(remaining, remaining)]
            scores = krum_scores(sub, max(len(remaining) - f - 2, 1))
            picked.append(remaining.pop(int(ranked(scores, [x[i] for i in remaining])[0])))
        return np.array(sorted(picked), dtype=np.int64)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        chosen = torch.from_numpy(self.selection(x, f)).to(x.device)
        return mean_around_median(x.index_select(0, chosen), x.shape[0] - 4 * f)
