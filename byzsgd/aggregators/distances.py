"""Squared Euclidean distances, computed once per call and shared by the distance-based rules.

`pairwise_sq_distances` reads the rows in their own precision and never makes a float64 copy of
them: Gram products over column blocks in the input's precision (float32 for the payloads that
travel between nodes), each block's (n, n) product added into a float64 total. Products over
blocks of 2^14 columns keep float32's rounding near its input precision (measured: ~2e-7 of the
largest squared norm at d = 1.6M, against ~1e-4 for one product over all columns), at the speed
of one product.

The Gram identity ||a-b||^2 = ||a||^2 + ||b||^2 - 2<a, b> cancels when two rows are much closer
to each other than to the origin (models, gradients sharing a large mean), and it overflows for
rows whose squared norm leaves the working precision (a Byzantine row of 1e30s). So each pair is
checked: a distance smaller than a fraction of ||a||^2 + ||b||^2, or non-finite, is not trusted.
Untrusted pairs are recomputed from rows centred at a robust reference (the row of median norm,
never an extreme row such as an outlier); pairs still untrusted after that (near-duplicates,
overflowing rows) are computed directly, as the float64 sum of squared differences. Usually the
first pass is the only one; the distances of a Byzantine row at 1e30 are still exact, and
identical rows are at distance exactly 0, so rules comparing distances choose as they would with
exact arithmetic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from byzsgd.aggregators.base import Rows, as_tensor, on_numpy

# Columns per block of a Gram product (see the module docstring); on GPUs larger blocks win.
_BLOCK = 1 << 14
_GPU_BLOCK = 1 << 20
# Block products computed by one batched call: at most this many float32 results at once.
_BATCH_ENTRIES = 1 << 24
# Entries of host rows that `gram` copies together, so that the copy stays in cache.
_ROWS_CHUNK_ENTRIES = 1 << 20
# A distance below this fraction of ||a||^2 + ||b||^2 lost more than ~5 bits to cancellation; with
# block products accurate to ~2e-7 of the squared norms, trusted distances are accurate to ~1e-5.
_TRUSTED = 1.0 / 32


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU kernels on one thread: an (n, 2^14) x (2^14, n) product is far too small
    to share, and on a busy machine the thread hand-offs cost ten times the product (measured:
    ~12 ms of CPU per 5-row Gram at d = 1.6M on one thread, ~75 ms on two)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _block_size(x: torch.Tensor) -> int:
    return _BLOCK if x.device.type == "cpu" else _GPU_BLOCK


def gram(x: torch.Tensor | Rows, reference: torch.Tensor | None = None) -> np.ndarray:
    """The (n, n) Gram matrix of the rows of `x` (minus `reference`, when given), accumulated in
    float64 over column blocks whose products run in the input's precision (at least float32).
    Entries overflow to +-inf (or NaN) when a row's squared norm leaves that precision. `x` may
    be host rows (`byzsgd.aggregators.base.host_rows`), read in place."""
    if isinstance(x, np.ndarray) and min(x.strides) >= 0:
        x = torch.from_numpy(x)  # one matrix: the batched products read it in place
    if not isinstance(x, torch.Tensor):
        with _one_thread(torch.device("cpu")):
            return _rows_gram(x).numpy()
    n, d = x.shape
    work = _work_dtype(x)
    step = _block_size(x)
    if reference is None and work == x.dtype and x.stride(-1) == 1:
        with _one_thread(x.device):
            return _batched_gram(x, step).cpu().numpy()
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    buffer = None
    if reference is not None or work != x.dtype:
        buffer = torch.empty(n, min(d, step), dtype=work, device=x.device)
        if reference is not None:
            reference = reference.to(work)
    with _one_thread(x.device):
        for start in range(0, d, step):
            stop = min(start + step, d)
            block = x[:, start:stop]
            if buffer is not None:
                target = buffer[:, : stop - start]
                if reference is None:
                    block = target.copy_(block)
                else:
                    block = torch.sub(block, reference[start:stop], out=target)
            g += (block @ block.T).to(torch.float64)
    return g.cpu().numpy()


def _batched_gram(x: torch.Tensor, step: int) -> torch.Tensor:
    """`gram` of rows read in place: the same block products, but many full blocks per batched
    product (a view of the rows, no copy) instead of one call each, then the ragged last block.
    Python's per-block calls were ~40% of the time at d = 1.6M (5 rows: 4.9 ms instead of 7.7);
    the sums are the same block products, added in float64."""
    n, d = x.shape
    full = d - d % step
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    blocks = x[:, :full].reshape(n, full // step, step).transpose(0, 1)  # (blocks, n, step)
    per_batch = max(1, _BATCH_ENTRIES // (n * n))
    for first in range(0, len(blocks), per_batch):
        batch = blocks[first : first + per_batch]
        g += torch.bmm(batch, batch.transpose(1, 2)).sum(0, dtype=torch.float64)
    if full < d:
        tail = x[:, full:]
        g += (tail @ tail.T).to(torch.float64)
    return g


def _rows_gram(rows: Rows) -> torch.Tensor:
    """`gram` of host rows without stacking them: a chunk of whole blocks of columns at a time is
    copied into one buffer that stays in cache and goes through `_batched_gram`, so the block
    products are the same (measured: 5 rows of 1.63M in ~9.5 ms, against ~5.7 ms to stack them and
    ~7-9 ms for the stack's Gram matrix)."""
    n, d = len(rows), rows[0].shape[0]
    width = _BLOCK * max(1, _ROWS_CHUNK_ENTRIES // (n * _BLOCK))
    buffer = np.empty((n, min(width, d)), rows[0].dtype)
    g = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, d, width):
        stop = min(start + width, d)
        block = buffer[:, : stop - start]
        for target, row in zip(block, rows, strict=True):
            target[...] = row[start:stop]
        g += _batched_gram(torch.from_numpy(block), _BLOCK)
    return g


def finite_row_distances(rows: Rows) -> np.ndarray | None:
    """`pairwise_sq_distances` of host rows read in place, or None when a row's squared norm is
    not finite: a finite one bounds every entry of its row and the row's sum (as in
    `finite_rows`), so the Gram product the distances need is the rules' finite check too."""
    g = gram(rows)
    if not np.isfinite(np.diag(g)).all():
        return None
    return pairwise_sq_distances(rows, g)


def direct_sq_distance(x: torch.Tensor, i: int, j: int) -> float:
    """||x_i - x_j||^2 as a float64 sum of float64 squared differences, block by block."""
    d = x.shape[1]
    step = _block_size(x)
    total = 0.0
    with _one_thread(x.device):
        for start in range(0, d, step):
            stop = min(start + step, d)
            diff = x[i, start:stop].to(torch.float64) - x[j, start:stop].to(torch.float64)
            total += float(diff @ diff)
    return total


def _distances_from_gram(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances from a Gram matrix, and which off-diagonal pairs can be trusted."""
    sq = np.diag(g)
    total = sq[:, None] + sq[None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        d2 = total - 2.0 * g
        trusted = np.isfinite(d2) & (d2 >= _TRUSTED * total)
    trusted &= trusted.T  # a product's two halves may round apart: trust a pair only both ways
    np.fill_diagonal(trusted, True)
    return d2, trusted


def pairwise_sq_distances(x: torch.Tensor | Rows, g: np.ndarray | None = None) -> np.ndarray:
    """(n, n) float64 squared distances: symmetric, zero diagonal, >= 0 (see the module docstring).
    `x` may be host rows, stacked only when a pair needs a second pass; `g`: `gram(x)`, when the
    caller has it already."""
    n = len(x)
    if g is None:
        g = gram(x)
    d2, trusted = _distances_from_gram(g)
    if not trusted.all():
        x = as_tensor(x)
        # Centre at the row of median norm (overflowing norms sort last), chosen without looking
        # at row order; then recompute only the pairs the first pass could not vouch for.
        sq = np.diag(g).copy()
        sq[~np.isfinite(sq)] = np.inf
        reference = x[int(np.argsort(sq, kind="stable")[(n - 1) // 2])]
        centred, centred_trusted = _distances_from_gram(gram(x, reference))
        redo = ~trusted & centred_trusted
        d2[redo] = centred[redo]
        trusted |= redo
        for i, j in zip(*np.nonzero(np.triu(~trusted, 1)), strict=True):
            d2[i, j] = d2[j, i] = direct_sq_distance(x, int(i), int(j))
    d2 = np.maximum(d2, 0.0)
    d2 = (d2 + d2.T) / 2  # exact symmetry, so ties compare equal both ways
    np.fill_diagonal(d2, 0.0)
    d2[np.isnan(d2)] = np.inf
    return d2


def exact_gram(x: torch.Tensor) -> np.ndarray:
    """The (n, n) float64 Gram matrix of the rows of `x` shifted by the row of median norm, each
    block of columns converted to float64 first: exact, and finite for any finite input (rows at
    1e30 included), at the price of a float64 pass. For iterative rules that work on the Gram
    matrix alone (the geometric median)."""
    if on_numpy(x):
        return _exact_gram_numpy(x.numpy())
    n, d = x.shape
    norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
    reference = x[int(torch.argsort(norms.cpu(), stable=True)[(n - 1) // 2])].to(torch.float64)
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    step = _block_size(x)
    buffer = torch.empty(n, min(d, step), dtype=torch.float64, device=x.device)
    for start in range(0, d, step):
        stop = min(start + step, d)
        block = buffer[:, : stop - start]
        block.copy_(x[:, start:stop])
        block -= reference[start:stop]
        g.addmm_(block, block.T)
    return g.cpu().numpy()


def _exact_gram_numpy(a: np.ndarray) -> np.ndarray:
    n, d = a.shape
    norms = np.einsum("ij,ij->i", a, a, dtype=np.float64)
    reference = a[np.argsort(norms, kind="stable")[(n - 1) // 2]].astype(np.float64)
    g = np.zeros((n, n))
    buffer = np.empty((n, min(d, _BLOCK)))
    for start in range(0, d, _BLOCK):
        stop = min(start + _BLOCK, d)
        # One fused pass reads the input block and writes the float64 shifted block.
        block = np.subtract(a[:, start:stop], reference[start:stop], out=buffer[:, : stop - start])
        g += block @ block.T
    return g


def sq_distances_to(x: torch.Tensor, center: torch.Tensor) -> np.ndarray:
    """(n,) float64 squared distances from each row of `x` to `center`, computed directly."""
    return sq_norms(x - center.to(x.dtype))


def sq_norms(x: torch.Tensor) -> np.ndarray:
    """(n,) squared row norms, accumulated in float64."""
    if on_numpy(x):
        a = x.numpy()
        return np.einsum("ij,ij->i", a, a, dtype=np.float64)
    return (torch.linalg.vector_norm(x, dim=1, dtype=torch.float64) ** 2).cpu().numpy()
