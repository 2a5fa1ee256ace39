"""Rules over rows stored apart (received payloads, read in place): the same results as over the
stacked matrix, whatever the rows hold, and the fast paths' own finite checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from byzsgd.aggregators import base, classic, distances, make_aggregator
from byzsgd.aggregators.base import host_rows, mean_of_rows
from tests.test_aggregators import RULES, rule, smallest_n

FAST = ["mda", "median", "mean", "krum", "multikrum"]  # the rules with a row path


def rows_of(x: np.ndarray) -> list[np.ndarray]:
    """Each row as its own array, as payloads arrive."""
    return [row.copy() for row in x]


@pytest.fixture
def small_chunks(monkeypatch):
    """Several chunks and a ragged last one in every chunked pass, on short rows."""
    monkeypatch.setattr(base, "CHUNK", 8)
    monkeypatch.setattr(classic, "CHUNK", 8)
    monkeypatch.setattr(distances, "_BLOCK", 4)
    monkeypatch.setattr(distances, "_ROWS_CHUNK_ENTRIES", 24)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_rule_gives_the_same_over_rows_as_over_their_stack(name, dtype, small_chunks):
    f = 2
    x = np.random.default_rng(3).standard_normal((smallest_n(name, f) + 1, 37)).astype(dtype)
    out = rule(name, f)(rows_of(x))
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (37,)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, rule(name, f)(x), rtol=tolerance, atol=tolerance)
    as_tensors = rule(name, f)([torch.from_numpy(row) for row in x])
    assert isinstance(as_tensors, torch.Tensor)
    np.testing.assert_allclose(as_tensors.numpy(), out, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    "bad",
    [np.nan, np.inf, -np.inf, 1e20, 3e38],
    ids=["nan", "inf", "-inf", "squares-overflow", "sum-overflows"],
)
def test_rows_the_fast_paths_cannot_vouch_for_go_the_general_way(name, bad, small_chunks):
    # 1e20: squares overflow but the row's sum does not (the row is kept); 3e38: its sum
    # overflows (dropped, like a NaN row). Placed in the last chunk, after finite ones.
    f = 1
    x = np.random.default_rng(5).standard_normal((5, 37)).astype(np.float32)
    x[2, 30:] = bad
    stacked = x.copy()
    finite = base.finite_rows(torch.from_numpy(stacked)).numpy()
    assert finite[2] == (bad == 1e20)
    rest = stacked[finite]
    expected = make_aggregator(name, f=f - (not finite[2]))._aggregate(torch.from_numpy(rest), f - (not finite[2]))
    np.testing.assert_allclose(rule(name, f)(rows_of(x)), expected.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", FAST)
def test_rows_are_never_written_and_the_output_is_fresh(name):
    x = np.random.default_rng(1).standard_normal((5, 9)).astype(np.float32)
    rows = rows_of(x)
    for row in rows:
        row.setflags(write=False)  # like arrays received through Ray
    out = rule(name, 1)(rows)
    out += 1
    assert all(np.array_equal(row, original) for row, original in zip(rows, x, strict=True))


def test_a_list_of_vectors_of_different_lengths_is_refused_clearly():
    with pytest.raises(ValueError, match=r"list of 1-D vectors of one length, got shapes \[\(3,\), \(4,\)\]"):
        make_aggregator("median", f=0)([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="got shapes"):
        make_aggregator("krum", f=0)([])


def test_host_rows_takes_float_host_vectors_in_place_and_nothing_else():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert host_rows(x) is x
    first, second = x
    rows = host_rows((first, second))
    assert isinstance(rows, list) and rows[0] is first and rows[1] is second
    tensor_rows = host_rows(torch.from_numpy(x))
    assert np.shares_memory(tensor_rows, x)
    refused = [
        x.astype(np.float16),
        x.astype(">f4"),
        x[0],
        np.zeros((0, 3), np.float32),
        np.zeros((2, 0), np.float32),
        [x[0], x[1].astype(np.float64)],
        [x[0], x[1, :2]],
        [x],
        [],
        [x[0], torch.from_numpy(x[1])],
        torch.from_numpy(x).to(torch.bfloat16),
        torch.from_numpy(x[0]),
    ]
    assert [host_rows(v) for v in refused] == [None] * len(refused)


def test_mean_of_rows_scales_before_adding(small_chunks):
    rows = rows_of(np.random.default_rng(2).standard_normal((4, 21)))
    np.testing.assert_allclose(mean_of_rows(rows, [0, 2, 3]), np.mean([rows[0], rows[2], rows[3]], axis=0), rtol=1e-14)
    huge = [np.full(3, 3e38, np.float32), np.full(3, 3e38, np.float32)]
    np.testing.assert_array_equal(mean_of_rows(huge, [0, 1]), np.full(3, 3e38, np.float32))


def test_gram_of_rows_is_the_gram_of_their_stack(small_chunks):
    x = np.random.default_rng(4).standard_normal((5, 37)).astype(np.float32)
    expected = distances.gram(torch.from_numpy(x))
    np.testing.assert_allclose(distances.gram(rows_of(x)), expected, rtol=1e-12)
    np.testing.assert_array_equal(distances.gram(x), expected)  # one matrix: read in place
    reversed_columns = x[:, ::-1]  # negative strides: read as rows
    np.testing.assert_allclose(distances.gram(reversed_columns), distances.gram(reversed_columns.copy()), rtol=1e-12)


def test_distances_of_rows_take_the_second_pass_when_rows_nearly_coincide():
    # Rows far from the origin and close together: the Gram identity cancels, and the rows are
    # stacked for the centred pass.
    x = (1e3 + np.random.default_rng(6).standard_normal((4, 50)) * 1e-3).astype(np.float32)
    exact = x.astype(np.float64)
    expected = ((exact[:, None, :] - exact[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(distances.pairwise_sq_distances(rows_of(x)), expected, rtol=1e-9)


@pytest.mark.parametrize("n", range(2, 13))
def test_median_network_verify_refuses_a_row_it_cannot_bound_in_any_chunk(n, small_chunks):
    x = np.random.default_rng(n).standard_normal((n, 37)).astype(np.float32)
    np.testing.assert_array_equal(classic._network_median(rows_of(x), finite=True, verify=True), np.median(x, axis=0))
    for chunk_start in (0, 16, 32):
        y = x.copy()
        y[n - 1, chunk_start + 3] = 1e20  # its square overflows
        assert classic._network_median(rows_of(y), finite=True, verify=True) is None
        np.testing.assert_array_equal(classic._network_median(rows_of(y), finite=True), np.median(y, axis=0))


def test_a_subclass_that_changes_the_rule_does_not_inherit_its_row_path():
    from byzsgd.aggregators import Aggregator

    class Upper(classic.Median):  # a plugin's variant: the largest value, not the median
        def _aggregate(self, x, f):
            return x.max(dim=0).values

    class Tuned(classic.Median):  # a subclass that keeps the rule keeps the row path
        pass

    def lowest_of_rows(self, rows, f):
        return np.min(rows, axis=0)

    class Lower(classic.Median):  # a variant with a row path of its own keeps it
        def _aggregate(self, x, f):
            return x.min(dim=0).values

        _aggregate_rows = lowest_of_rows

    x = np.random.default_rng(7).standard_normal((5, 9)).astype(np.float32)
    np.testing.assert_array_equal(Upper(1)(rows_of(x)), x.max(axis=0))
    assert Upper._aggregate_rows is Aggregator._aggregate_rows
    assert Tuned._aggregate_rows is classic.Median._aggregate_rows
    assert Lower._aggregate_rows is lowest_of_rows


def test_a_subclass_that_picks_other_rows_does_not_inherit_the_row_path():
    from byzsgd.aggregators import Aggregator, krum

    class Farthest(krum.Krum):  # a plugin's variant: the input with the highest score, not the lowest
        def selection(self, x, f):
            scores = krum.krum_scores(distances.pairwise_sq_distances(x), x.shape[0] - f - 2)
            return np.array([int(np.argmax(scores))])

    x = np.random.default_rng(9).standard_normal((7, 9)).astype(np.float32)
    x[3] += 10  # far from the rest: the worst score
    np.testing.assert_array_equal(Farthest(2)(rows_of(x)), x[3])
    assert Farthest._aggregate_rows is Aggregator._aggregate_rows


def test_lists_of_plain_sequences_are_stacked_as_before():
    out = make_aggregator("mean", f=0)([[1.0, 2.0], [3.0, 4.0]])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.tolist() == [2.0, 3.0]
    assert make_aggregator("median", f=0)(([1.0, 2.0], [3.0, 6.0])).tolist() == [2.0, 4.0]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("as_list", [True, False], ids=["list", "matrix"])
@pytest.mark.parametrize("f", [0, 1])
def test_rules_with_a_row_path_never_stack_finite_rows(name, as_list, f, monkeypatch):
    def refuse(*args):
        raise AssertionError("stacked")

    monkeypatch.setattr(base, "_stacked", refuse)
    monkeypatch.setattr(base, "as_tensor", refuse)  # the general path's first step
    x = np.random.default_rng(8).standard_normal((5, 700)).astype(np.float32)  # wide: the median's network
    out = rule(name, f)(rows_of(x) if as_list else x)
    expected = np.mean(x, axis=0) if f == 0 and name in ("mda", "mean", "multikrum") else None  # all n rows kept
    if expected is not None:
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["mda", "median", "mean"])  # Krum needs 3 rows even with f = 0
def test_one_row_is_its_own_aggregate(name):
    row = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(rule(name, 0)([row]), row)


def test_a_mixed_list_takes_its_first_vectors_kind():
    rows = [np.ones(3, np.float32), torch.full((3,), 2.0), torch.full((3,), 3.0)]
    out = make_aggregator("median", f=1)(rows)
    assert isinstance(out, np.ndarray) and out.tolist() == [2.0, 2.0, 2.0]
    out = make_aggregator("median", f=1)(rows[::-1])
    assert isinstance(out, torch.Tensor) and out.tolist() == [2.0, 2.0, 2.0]


def test_tensors_that_require_grad_are_aggregated_detached():
    rows = [torch.full((3,), float(v), requires_grad=True) for v in (1, 2, 9)]
    out = make_aggregator("median", f=1)(rows)
    assert isinstance(out, torch.Tensor) and not out.requires_grad and out.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("name", FAST)
def test_an_option_a_rule_does_not_take_is_refused_on_the_row_path_too(name):
    with pytest.raises(TypeError, match="center"):
        rule(name, 1)(rows_of(np.ones((5, 3), np.float32)), center=np.zeros(3))


def test_median_network_verify_raises_no_warning_on_overflowing_squares():
    rows = rows_of(np.full((4, 8), 1e20, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert classic._network_median(rows, finite=True, verify=True) is None
        np.testing.assert_array_equal(rule("median", 1)(rows), np.full(8, 1e20, np.float32))


@pytest.mark.parametrize("name,expected", [("krum", 0.0), ("multikrum", -0.75)])
def test_krum_over_rows_breaks_equal_scores_by_content_not_position(name, expected):
    # On a line at -3, -1, 0, 1, 3 (f = 1, 2 neighbours): -1 and 1 score alike, and so do -3 and
    # 3, which tie for Multi-Krum's fourth place: the smaller content wins, whatever the order.
    points = np.array([-3.0, -1.0, 0.0, 1.0, 3.0], np.float32)
    for order in np.random.default_rng(2).permuted(np.tile(np.arange(5), (6, 1)), axis=1):
        rows = [np.array([points[i], 0.0], np.float32) for i in order]
        np.testing.assert_array_equal(rule(name, 1)(rows), [expected, 0.0])
