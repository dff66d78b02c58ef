"""Importance scores: magnitude (L1, L2) and WANDA, checked on hand-computed values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import PruningError
from aprender.pruning import magnitude_scores, nm_mask, row_mask, unstructured_mask, wanda_scores

W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])


def test_magnitude_l1_and_l2_hand_values() -> None:
    assert torch.equal(magnitude_scores(W), torch.tensor([[1.0, 2.0], [3.0, 0.5]]))
    assert torch.equal(magnitude_scores(W, "l1"), magnitude_scores(W))
    assert torch.equal(magnitude_scores(W, "l2"), torch.tensor([[1.0, 4.0], [9.0, 0.25]]))


def test_l1_and_l2_rank_rows_differently() -> None:
    weight = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # Row L1 norms 3 vs 4 prune row 0; squared L2 norms 9 vs 4 prune row 1.
    assert row_mask(magnitude_scores(weight, "l1"), 0.5)[:, 0].tolist() == [False, True]
    assert row_mask(magnitude_scores(weight, "l2"), 0.5)[:, 0].tolist() == [True, False]


def test_magnitude_score_dtypes() -> None:
    assert magnitude_scores(W.half()).dtype == torch.float32
    assert magnitude_scores(W.bfloat16()).dtype == torch.float32
    assert magnitude_scores(W.double()).dtype == torch.float64


def test_magnitude_rejects_bad_input() -> None:
    with pytest.raises(PruningError, match="norm='l0'"):
        magnitude_scores(W, "l0")  # type: ignore[arg-type]
    with pytest.raises(PruningError, match=r"weight has shape \(3,\)"):
        magnitude_scores(torch.ones(3))
    with pytest.raises(PruningError, match="floating-point"):
        magnitude_scores(torch.ones(2, 2, dtype=torch.int32))


def test_wanda_hand_values() -> None:
    # |W| * sqrt([4, 9]) = [[1*2, 2*3], [3*2, 0.5*3]].
    assert torch.equal(wanda_scores(W, torch.tensor([4.0, 9.0])), torch.tensor([[2.0, 6.0], [6.0, 1.5]]))


def test_wanda_equals_paper_formula_from_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7)
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64)
    # Sun et al. 2023, eq. 1: |W_ij| * ||X_j||_2 with X_j the j-th input channel over all tokens.
    expected = weight.abs() * x.norm(dim=0)[None, :]
    torch.testing.assert_close(wanda_scores(weight, x.square().sum(dim=0)), expected)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_wanda_masks_ignore_statistic_scale(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 8, generator=g)
    sq = torch.rand(8, generator=g) * 10
    a, b = wanda_scores(weight, sq), wanda_scores(weight, sq * scale)
    assert torch.equal(unstructured_mask(a, 0.5, scope="row"), unstructured_mask(b, 0.5, scope="row"))
    assert torch.equal(nm_mask(a, 2, 4), nm_mask(b, 2, 4))


def test_wanda_channel_scale_changes_the_mask() -> None:
    weight = torch.tensor([[1.0, 2.0]])
    # Magnitude keeps the 2; an input channel 0 with 100x the energy makes WANDA keep the 1.
    assert unstructured_mask(magnitude_scores(weight), 0.5, scope="row").tolist() == [[False, True]]
    wanda = wanda_scores(weight, torch.tensor([100.0**2, 1.0]))
    assert unstructured_mask(wanda, 0.5, scope="row").tolist() == [[True, False]]


def test_wanda_rejects_bad_statistics() -> None:
    with pytest.raises(PruningError, match=r"input_sq_sum has shape \(3,\) but weight has in_features=2"):
        wanda_scores(W, torch.ones(3))
    with pytest.raises(PruningError, match="negative or NaN"):
        wanda_scores(W, torch.tensor([1.0, -1.0]))
    with pytest.raises(PruningError, match="negative or NaN"):
        wanda_scores(W, torch.tensor([1.0, float("nan")]))
    with pytest.raises(PruningError, match="2-D"):
        wanda_scores(torch.ones(2), torch.ones(2))
