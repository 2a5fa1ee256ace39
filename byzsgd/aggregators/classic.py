"""Coordinate-wise and geometric rules: mean, median, trimmed mean, MeaMed, geometric median,
centered clipping."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from byzsgd.aggregators.base import (
    CHUNK,
    Aggregator,
    Rows,
    Vectors,
    as_tensor,
    finite_mean_of_rows,
    like_input,
    mean,
    on_numpy,
    register,
    squares_finite,
)
from byzsgd.aggregators.distances import exact_gram
from byzsgd.registry import ConfigError


def _network_median(a: Rows, finite: bool, verify: bool = False) -> np.ndarray | None:
    """The column-wise median of the 2..12 rows of `a` by whole-row minimum/maximum, chunk by
    chunk: a selection network for 3 and 4 rows (4 and 6 compare-exchanges), odd-even
    transposition otherwise. None when a NaN is present (minimum/maximum spread it to the middle
    rows: the 3- and 4-row networks take every input into them, n rounds of transposition reach
    every row), unless `finite` rules that out; the caller then partitions, which sorts NaN last.
    The rows of `a` may be stored apart (a list of 1-D arrays): each chunk is read in place.

    `verify`: also None unless every row is finite as `finite_rows` defines it, checked while
    its chunk is in cache: a finite dot product of each chunk with itself bounds the chunk's
    entries, and all of them bound the row's sum (|sum| <= sqrt(d * sum of squares))."""
    n, d, dtype = len(a), a[0].shape[0], a[0].dtype
    lo, hi = (n - 1) // 2, n // 2
    out = np.empty(d, dtype)
    width = min(CHUNK, d)
    work = np.empty((n, width), dtype) if n > 4 else None
    other, spare = np.empty(width, dtype), np.empty(width, dtype)
    for start in range(0, d, CHUNK):
        stop = min(start + CHUNK, d)
        rows = [row[start:stop] for row in a]
        low, high, t = out[start:stop], other[: stop - start], spare[: stop - start]
        if verify and not squares_finite(rows).all():
            return None
        if n == 2:
            low[...], high[...] = rows[0], rows[1]
        elif n == 3:
            np.minimum(rows[0], rows[1], out=low)
            np.maximum(rows[0], rows[1], out=high)
            np.minimum(high, rows[2], out=high)
            np.maximum(low, high, out=low)
            if not finite and np.isnan(low).any():
                return None
            continue
        elif n == 4:
            # The middle two of {a, b, c, d} are max(min(a, b), min(c, d)) and min(max(a, b), max(c, d)).
            np.minimum(rows[0], rows[1], out=low)
            np.maximum(rows[0], rows[1], out=high)
            np.minimum(rows[2], rows[3], out=t)
            np.maximum(low, t, out=low)
            np.maximum(rows[2], rows[3], out=t)
            np.minimum(high, t, out=high)
        else:
            ordered = list(work[:, : stop - start])
            for target, row in zip(ordered, rows, strict=True):
                target[...] = row
            for r in range(n):
                for i in range(r % 2, n - 1, 2):
                    first, second = ordered[i], ordered[i + 1]
                    np.minimum(first, second, out=t)
                    np.maximum(first, second, out=second)
                    ordered[i], t = t, first
            low[...] = ordered[lo]
            if lo == hi:
                if not finite and np.isnan(low).any():
                    return None
                continue
            high[...] = ordered[hi]
        if not finite and (np.isnan(low).any() or np.isnan(high).any()):
            return None
        # Halving each middle value first cannot overflow, unlike (low + high) / 2.
        np.multiply(low, 0.5, out=low)
        np.multiply(high, 0.5, out=high)
        np.add(low, high, out=low)
    return out


def _middle_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (n-1)//2 and n//2 of `a` sorted column-wise, NaN sorting above +Inf."""
    n, d = a.shape
    lo, hi = (n - 1) // 2, n // 2
    # One kth: numpy's multi-kth partition is several times slower. Everything left of the
    # upper middle value is no larger, so the lower middle value is their maximum.
    part = np.partition(a, hi, axis=0)
    return (part[hi] if lo == hi else part[:hi].max(axis=0)), part[hi]


def _median(x: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """Coordinate-wise median; NaN sorts above +Inf, so a NaN entry counts as the largest.
    `finite`: the rows are known to hold no NaN (the rules' rows: non-finite ones are dropped)."""
    n, d = x.shape
    lo, hi = (n - 1) // 2, n // 2
    if on_numpy(x):
        a = x.numpy()
        if _network_wins(n, d):
            median = _network_median(a, finite)
            if median is not None:
                return torch.from_numpy(median)
        low, high = _middle_rows(a)
        return torch.from_numpy(low if lo == hi else low / 2 + high / 2)
    ordered = torch.sort(x, dim=0).values
    low, high = ordered[lo], ordered[hi]
    return low if lo == hi else low / 2 + high / 2


def _network_wins(n: int, d: int) -> bool:
    """Whether `_network_median` beats a partition: the transposition network's Python steps
    grow as n^2, so it wins for n <= 12 once rows are long enough; the 2-4 row networks always do."""
    return 1 < n and (n <= 4 or (n <= 12 and d >= 32 * n * (n - 1)))


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """At least float32, for sums that half precision would round away."""
    return torch.promote_types(x.dtype, torch.float32)


def mean_around_median(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Per coordinate, the mean of the `keep` values closest to the median, a tie in distance
    going to the lower value (so the result does not depend on input order).

    Rank values by the key (|v - median|, v) and let K be the keep-th smallest key. In sorted
    order the `keep` best values form a window, so K is the smallest over the n-keep+1 windows
    of the window's worst key; distance to the median is unimodal along sorted values, so that
    worst key sits at one of the window's ends. The answer is then every value with key < K
    plus copies of K's value (all values with key K are equal) up to `keep`: no argsort."""
    n = x.shape[0]
    lo, hi = (n - 1) // 2, n // 2
    if on_numpy(x):
        ordered = np.sort(x.numpy(), axis=0)
        work = np.promote_types(ordered.dtype, np.float32)
        median = ordered[lo] / 2 + ordered[hi] / 2
        distance = np.abs(ordered - median)
        first, last = distance[: n - keep + 1], distance[keep - 1 :]
        worst = np.maximum(first, last)
        # On equal distances the right end holds the larger value, so the worse key.
        worst_value = np.where(last >= first, ordered[keep - 1 :], ordered[: n - keep + 1])
        k_distance = worst.min(axis=0)
        k_value = np.where(worst == k_distance, worst_value, np.inf).min(axis=0)
        below = (distance < k_distance) | ((distance == k_distance) & (ordered < k_value))
        total = np.where(below, ordered, 0).sum(axis=0, dtype=work)
        total += (keep - below.sum(axis=0)) * k_value.astype(work)
        return torch.from_numpy((total / keep).astype(ordered.dtype))
    ordered = torch.sort(x, dim=0).values
    work = torch.promote_types(ordered.dtype, torch.float32)
    median = ordered[lo] / 2 + ordered[hi] / 2
    distance = (ordered - median).abs()
    first, last = distance[: n - keep + 1], distance[keep - 1 :]
    worst = torch.maximum(first, last)
    worst_value = torch.where(last >= first, ordered[keep - 1 :], ordered[: n - keep + 1])
    k_distance = worst.min(dim=0).values
    k_value = torch.where(worst == k_distance, worst_value, torch.inf).min(dim=0).values
    below = (distance < k_distance) | ((distance == k_distance) & (ordered < k_value))
    total = torch.where(below, ordered, 0).sum(dim=0, dtype=work)
    total += (keep - below.sum(dim=0)) * k_value.to(work)
    return (total / keep).to(ordered.dtype)


def coordinate_median(vectors: Vectors) -> Vectors:
    """The coordinate-wise median of (n, d) vectors (mean of the two middle values for even n).

    Returns (d,) of the input's kind, dtype and device. Plain median of all rows: a NaN entry
    sorts as the largest value, so fewer than n/2 non-finite rows cannot reach the output."""
    x = as_tensor(vectors)
    if x.shape[0] == 0:
        raise ValueError("coordinate_median of zero vectors")
    return like_input(_median(x), vectors, x)


@register("mean")
class Mean(Aggregator):
    """The average: no robustness, the baseline (non-finite rows are still dropped)."""

    bound = (0, 1)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        return mean(x)

    def _aggregate_rows(self, rows: Rows, f: int) -> np.ndarray | None:
        return finite_mean_of_rows(rows)


@register("median")
class Median(Aggregator):
    """Coordinate-wise median (Yin et al. 2018)."""

    bound = (2, 1)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        return _median(x, finite=True)

    def _aggregate_rows(self, rows: Rows, f: int) -> np.ndarray | None:
        """The network reads the rows in place and checks each chunk while it is in cache
        (measured: 4 rows of 1.63M in ~8 ms, against ~13 ms to stack, check and aggregate them)."""
        if not _network_wins(len(rows), rows[0].shape[0]):
            return None
        return _network_median(rows, finite=True, verify=True)


@register("trimmed_mean")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values, average the rest."""

    bound = (2, 1)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        n = x.shape[0]
        if f == 0:
            return mean(x)
        if on_numpy(x):
            # Keep the n-f smallest values, then drop the f smallest of those (two single-kth
            # partitions beat one with two kth values).
            lower = np.partition(x.numpy(), n - f - 1, axis=0)[: n - f]
            return mean(torch.from_numpy(np.partition(lower, f, axis=0)[f:]))
        return mean(torch.sort(x, dim=0).values[f : n - f])


@register("meamed")
class MeaMed(Aggregator):
    """Mean around the median (Xie et al. 2018): per coordinate, the mean of the n-f values
    closest to the median."""

    bound = (2, 1)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        return mean_around_median(x, x.shape[0] - f)


@register("geometric_median")
class GeometricMedian(Aggregator):
    """Geometric median by smoothed Weiszfeld (Pillutla et al., RFA), run to convergence.

    Iterates z <- sum_i w_i x_i / sum_i w_i with w_i = 1 / max(eps * s, ||x_i - z||). Every
    iterate is an affine combination of the inputs, so the loop runs on the n x n Gram matrix
    alone (O(n^2) per iteration, whatever d): the vectors are read twice in total. Stops when
    an iterate moves less than `tol * s`, or after `max_iter` iterations.

    Start and scale are robust (our choice; RFA starts from the mean with an absolute smoothing
    floor): the start row is the one whose (n-f-1)-th nearest other row is nearest, s is that
    distance, and the first iterate is the mean of its n-f nearest rows. With at most f
    Byzantine rows among n >= 2f+1, s is bounded by the honest rows' diameter whatever the
    Byzantine rows hold, so they cannot inflate the smoothing floor or the stopping tolerance:
    moving them further out (1e6 -> 1e30) leaves the result where it was."""

    bound = (2, 1)

    def __init__(self, f: int, tol: float = 1e-10, max_iter: int = 10_000, eps: float = 1e-8) -> None:
        super().__init__(f)
        if not tol > 0 or not eps > 0 or int(max_iter) != max_iter or max_iter < 1:
            raise ConfigError(
                f"aggregator 'geometric_median': needs tol > 0, eps > 0 and max_iter >= 1, "
                f"got tol={tol}, eps={eps}, max_iter={max_iter}"
            )
        self.tol, self.max_iter, self.eps = float(tol), int(max_iter), float(eps)

    def weights(self, x: torch.Tensor, f: int | None = None) -> np.ndarray:
        """The convex weights alpha with geometric median = alpha @ x (`f`: the rule's f)."""
        n = x.shape[0]
        f = self.f if f is None else min(f, (n - 1) // 2)
        g = exact_gram(x)
        sq = np.diag(g)
        pairwise = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
        # Column n-f-1 of each sorted row (column 0 is the row itself): every row has n-f-1
        # honest others, so for an honest row this is at most the honest diameter.
        reach = np.sort(pairwise, axis=1)[:, n - f - 1]
        start = int(np.argmin(reach))
        spread = float(np.sqrt(reach[start]))
        alpha = np.zeros(n)
        alpha[np.argsort(pairwise[start], kind="stable")[: n - f]] = 1.0 / (n - f)
        if spread == 0.0:
            return alpha  # n-f rows coincide: that point is the geometric median

        def sq_dist(a: np.ndarray) -> np.ndarray:
            # ||x_i - a @ x||^2 from the Gram matrix alone.
            return np.maximum(sq - 2.0 * (g @ a) + a @ g @ a, 0.0)

        floor = self.eps * spread
        for _ in range(self.max_iter):
            w = 1.0 / np.maximum(np.sqrt(sq_dist(alpha)), floor)
            step = w / w.sum()
            delta = step - alpha
            alpha = step
            if np.sqrt(max(delta @ g @ delta, 0.0)) <= self.tol * spread:
                break
        return alpha

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        work = _work_dtype(x)
        alpha = torch.from_numpy(self.weights(x, f)).to(device=x.device, dtype=work)
        return alpha @ x.to(work)


@register("centered_clipping")
class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy et al. 2021), stateless by default.

    v <- v + mean_i (x_i - v) * min(1, tau / ||x_i - v||), `iterations` times. The start v is
    the `center` given to the constructor or to the call (e.g. the previous aggregate, as in
    the paper), else the coordinate-wise median of the inputs. Defaults follow ByzFL
    (tau=100, one iteration); tau is in the units of the vectors, so tune it to their scale."""

    bound = (2, 1)

    def __init__(self, f: int, tau: float = 100.0, iterations: int = 1, center: Any | None = None) -> None:
        super().__init__(f)
        if not tau > 0 or int(iterations) != iterations or iterations < 1:
            raise ConfigError(
                f"aggregator 'centered_clipping': needs tau > 0 and iterations >= 1, "
                f"got tau={tau}, iterations={iterations}"
            )
        self.tau, self.iterations = float(tau), int(iterations)
        self.center = center

    def _aggregate(self, x: torch.Tensor, f: int, center: Any | None = None) -> torch.Tensor:
        work = _work_dtype(x)
        start = self.center if center is None else center
        v = None
        if start is not None:
            v = torch.as_tensor(start).to(device=x.device, dtype=work).reshape(-1)
            if v.shape[0] != x.shape[1]:
                raise ValueError(f"center has {v.shape[0]} entries, vectors have {x.shape[1]}")
            if not torch.isfinite(v).all():
                v = None  # a corrupted center must not poison the output either
        if v is None:
            v = _median(x, finite=True).to(work)
        xw = x.to(work)
        for _ in range(self.iterations):
            diff = xw - v
            norms = torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64)
            scale = (self.tau / norms).clamp(max=1.0).to(work)  # tau / 0 = inf -> 1
            v = v + (diff * scale[:, None]).mean(dim=0)
        return v
