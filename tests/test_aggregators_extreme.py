"""Rules under extreme but finite Byzantine inputs, and the Gram distances they rely on.

Every robust rule's output must stay put when its f Byzantine rows (identical copies) move from
1e6 to 1e12 and 1e30 in every coordinate (float32's largest finite value is ~3.4e38), and the
distances the selection rules compare must match a direct float64 computation even where the
Gram identity cancels (rows far from the origin, duplicates, rows whose squares overflow
float32)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from byzsgd.aggregators import make_aggregator, pairwise_sq_distances
from byzsgd.aggregators.distances import gram
from tests.test_aggregators import ROBUST, RULES, smallest_n

SCALES = (1e6, 1e12, 1e30)


def attacked(name: str, f: int, scale: float, sign: float = 1.0, d: int = 40) -> np.ndarray:
    """n honest float32 rows around 3.0 (the rule's smallest n plus two), then f identical rows
    holding `sign * scale` in every coordinate."""
    n = smallest_n(name, f) + 2
    rng = np.random.default_rng(7)
    honest = 3.0 + rng.standard_normal((n - f, d))
    byzantine = np.full((f, d), sign * scale)
    return np.concatenate([honest, byzantine]).astype(np.float32)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("name", ROBUST)
def test_output_stays_put_as_byzantine_rows_move_out(name, sign):
    f = 2
    # A fresh rule per input: bucketing's shuffle advances at every call.
    outputs = [make_aggregator(name, f=f, **RULES[name])(attacked(name, f, s, sign)) for s in SCALES]
    honest = attacked(name, f, SCALES[0], sign)[:-f]
    for scale, out in zip(SCALES, outputs, strict=True):
        assert np.isfinite(out).all(), f"{name} at {scale:g}"
        # Within the honest rows' range per coordinate, give or take their spread...
        assert (out >= honest.min(0) - 3).all() and (out <= honest.max(0) + 3).all(), f"{name} at {scale:g}"
        # ... and where it was with the attacker at 1e6 (a pull of O(1/1e6) at most).
        np.testing.assert_allclose(out, outputs[0], atol=1e-4, err_msg=f"{name} at {scale:g}")


def test_geometric_median_ignores_a_huge_signflip():
    # The run that used to diverge: signflip with scale 1e22 against the geometric median.
    rng = np.random.default_rng(0)
    honest = (0.5 + 0.1 * rng.standard_normal((5, 1000))).astype(np.float32)
    results = []
    for scale in (1e2, 1e22):
        flipped = np.repeat(-scale * honest.mean(0, keepdims=True), 2, axis=0)
        results.append(make_aggregator("geometric_median", f=2)(np.concatenate([honest, flipped])))
    assert np.isfinite(results[1]).all()
    # Both pulls point the same way with the same unit force: the same result within rounding.
    np.testing.assert_allclose(results[1], results[0], atol=1e-3)
    assert np.abs(results[1] - np.median(honest, 0)).max() < 0.2


def direct(x: np.ndarray) -> np.ndarray:
    a = x.astype(np.float64)
    return ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize(
    "case",
    ["far-from-origin", "duplicates", "overflowing-rows", "plain"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_distances_match_direct_differences(case, dtype):
    rng = np.random.default_rng(1)
    d = 3 * (1 << 14) + 5  # several column blocks and a ragged last one
    x = rng.standard_normal((6, d))
    if case == "far-from-origin":
        x = 1e3 * rng.standard_normal(d) + 1e-2 * x  # models: a large common part, tiny spread
    elif case == "duplicates":
        x[4] = x[1]
        x[5] = x[1]
    elif case == "overflowing-rows":
        x[4] = x[5] = 1e30  # squares overflow float32: must still be exact
        x[3] = -1e30
    x = x.astype(dtype)
    d2 = pairwise_sq_distances(torch.from_numpy(x))
    expected = direct(x)
    np.testing.assert_allclose(d2, expected, rtol=1e-5, atol=0)
    assert (d2 == d2.T).all() and (np.diag(d2) == 0).all()
    if case != "plain":
        # Exact zeros for identical rows, whatever their magnitude.
        same = expected == 0
        assert (d2[same] == 0).all()


def test_gram_blocks_keep_float32_rounding_small():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 200_000)).astype(np.float32)
    exact = x.astype(np.float64) @ x.astype(np.float64).T
    assert np.abs(gram(torch.from_numpy(x)) - exact).max() <= 1e-6 * np.diag(exact).max()


def test_distance_rules_choose_as_with_exact_distances_when_rows_are_far_out():
    # MDA and Krum on models far from the origin: the same choice as from direct distances.
    from tests.test_aggregators_mda import brute_force

    rng = np.random.default_rng(3)
    base = 1e4 * rng.standard_normal(5000)
    x = (base + 1e-2 * rng.standard_normal((7, 5000))).astype(np.float32)
    chosen = make_aggregator("mda", f=2).selection(torch.from_numpy(x), 2)
    np.testing.assert_array_equal(chosen, brute_force(direct(x), 5))


def test_torch_thread_count_is_restored():
    threads = torch.get_num_threads()
    pairwise_sq_distances(torch.ones(3, 10))
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("centred", [False, True])
def test_gram_is_the_float64_gram_of_the_rows_minus_the_reference(dtype, centred):
    # two column blocks and a ragged third; products in at least float32, sums in float64
    d = 2 * (1 << 14) + 3
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype) + 1
    reference = x[2] if centred else None
    rows = x.double() - (x[2].double() if centred else 0.0)
    expected = (rows @ rows.T).numpy()
    g = gram(x, reference)
    assert g.dtype == np.float64
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5  # float32 products: ~1e-6 of the norms
    assert np.abs(g - expected).max() <= tolerance * np.abs(expected).max()


def test_large_but_finite_half_precision_rows_count_as_finite():
    from byzsgd.aggregators.base import finite_rows

    x = torch.full((3, 1000), 100.0, dtype=torch.float16)  # each row sums to 1e5, beyond float16's 65504
    x[1, 0] = float("nan")
    assert finite_rows(x).tolist() == [True, False, True]


def test_a_row_with_a_nan_is_infinitely_far_from_every_other():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [float("nan"), 0.0]], dtype=torch.float64)
    d2 = pairwise_sq_distances(x)
    assert d2[0, 1] == d2[1, 0] == 1.0
    assert d2[0, 2] == d2[2, 1] == np.inf and d2[2, 2] == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_rows_fast_path_gives_the_row_sum_verdict(dtype):
    # The dot-product pass decides rows whose squares stay finite; the others are summed. Rows
    # whose squares overflow but whose sum does not (1e20s in float32, 1e160s in float64) stay
    # finite, as the row sum says; rows whose sum overflows or that hold NaN/inf do not.
    from byzsgd.aggregators.base import finite_rows

    big = 1e20 if dtype == torch.float32 else 1e160  # squares overflow, the sum of 1000 does not
    huge = 1e36 if dtype == torch.float32 else 1e306  # the sum of 1000 overflows
    x = torch.ones(7, 1000, dtype=dtype)
    x[1] = big
    x[2] = huge
    x[3, 5] = float("nan")
    x[4, 7] = float("-inf")
    x[5, ::2], x[5, 1::2] = huge, -huge  # squares overflow, the sum cancels
    x[6, :500], x[6, 500:] = huge, -huge  # halves overflow to +inf and -inf: a NaN sum
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.isfinite(x.numpy().sum(axis=1)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Byzantine rows must not make the check warn
        assert finite_rows(x).tolist() == exact == [True, True, False, False, False, True, False]


@pytest.mark.parametrize("batch_entries", [1, 50, 1 << 24])
def test_gram_in_batches_of_blocks_matches_the_float64_gram(monkeypatch, batch_entries):
    # Full blocks go through batched products (one block per batch, several, or all at once),
    # the ragged last block on its own; a row with an infinity still overflows its entries.
    import byzsgd.aggregators.distances as distances

    monkeypatch.setattr(distances, "_BATCH_ENTRIES", batch_entries)
    d = 3 * (1 << 14) + 5
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(3)) + 2
    expected = (x.double() @ x.double().T).numpy()
    g = gram(x)
    assert np.abs(g - expected).max() <= 1e-5 * np.abs(expected).max()
    x[4, 1 << 14] = float("inf")  # in the second full block
    g = gram(x)
    assert np.isinf(g[4, 4]) and np.isfinite(g[:4, :4]).all()


def test_gram_adds_block_products_in_float64():
    # Each block product is exact in float32 (2^14 ones, then 2^14 values of 2^-12); their sum,
    # 16384 + 2^-10, is not a float32 (it rounds to 16384) but is exact in float64.
    x = torch.ones(1, 2 << 14)
    x[0, 1 << 14 :] = 2.0**-12
    assert gram(x)[0, 0] == 16384 + 2.0**-10


def test_gram_of_rows_that_are_not_contiguous_is_the_same():
    # Rows with a stride (a column-major tensor) take the block-by-block path: the same Gram.
    x = torch.randn(4, 2 * (1 << 14) + 7, generator=torch.Generator().manual_seed(5)) + 1
    strided = x.T.contiguous().T
    assert strided.stride(-1) != 1
    expected = (x.double() @ x.double().T).numpy()
    assert np.abs(gram(strided) - expected).max() <= 1e-5 * np.abs(expected).max()
