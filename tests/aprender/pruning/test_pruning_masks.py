"""Masks: exact pruned counts and deterministic tie-breaking, against a plain-Python sort oracle.

The oracle ranks entries by the tuple (score, index) with `sorted`, which is exactly the rule the
module documents (lowest score first, lower row-major index first among equal scores).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import AprenderError, PruningError
from aprender.pruning import column_mask, mask_lowest, nm_mask, pruned_count, row_mask, unstructured_mask

SPARSITY = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)


def _scores(rows: int, cols: int, seed: int, levels: int) -> torch.Tensor:
    """Random scores with few distinct levels, so that ties are common."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (rows, cols), generator=g).float()


def _oracle_prune(values: list[float], k: int) -> list[bool]:
    """Keep-list pruning the k lowest values, lower index first among ties."""
    pruned = set(sorted(range(len(values)), key=lambda i: (values[i], i))[:k])
    return [i not in pruned for i in range(len(values))]


@pytest.mark.parametrize(
    ("sparsity", "count", "expected"),
    # floor(sparsity * count); 0.29 * 100 is 28.999999999999996 in floats and must give 29.
    [(0.5, 10, 5), (0.5, 5, 2), (0.29, 100, 29), (0.0, 7, 0), (0.99, 3, 2), (0.7, 10, 7), (0.3, 0, 0)],
)
def test_pruned_count_is_the_floor_of_the_target(sparsity: float, count: int, expected: int) -> None:
    assert pruned_count(sparsity, count) == expected


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5, True, "0.5"])
def test_sparsity_outside_unit_interval_is_rejected(bad: object) -> None:
    with pytest.raises(PruningError, match=r"sparsity=.*outside \[0, 1\)"):
        pruned_count(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(PruningError, match="sparsity"):
        unstructured_mask(torch.ones(2, 2), bad)  # type: ignore[arg-type]


def test_pruning_error_is_an_aprender_value_error() -> None:
    assert issubclass(PruningError, AprenderError)
    assert issubclass(PruningError, ValueError)


def test_pruned_count_rejects_negative_count() -> None:
    with pytest.raises(PruningError, match="count=-1"):
        pruned_count(0.5, -1)


def test_mask_lowest_prunes_lower_index_first_on_ties() -> None:
    scores = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.0, 3.0]])
    # Ranking (score, index): (0,4) (1,1) (1,2) (1,3) (2,0) (3,5); the three lowest are 4, 1, 2.
    expected = torch.tensor([[True, False, False], [True, False, True]])
    assert torch.equal(mask_lowest(scores, 3), expected)


def test_mask_lowest_rejects_bad_count_and_nan() -> None:
    with pytest.raises(PruningError, match=r"count=5 is outside \[0, 4\]"):
        mask_lowest(torch.ones(4), 5)
    with pytest.raises(PruningError, match="NaN"):
        mask_lowest(torch.tensor([1.0, float("nan")]), 1)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    sparsity=SPARSITY,
    seed=st.integers(0, 2**16),
    levels=st.integers(1, 9),
)
def test_unstructured_tensor_scope_matches_oracle(
    rows: int, cols: int, sparsity: float, seed: int, levels: int
) -> None:
    scores = _scores(rows, cols, seed, levels)
    mask = unstructured_mask(scores, sparsity)
    k = pruned_count(sparsity, rows * cols)
    assert int((~mask).sum()) == k == math.floor(round(sparsity * rows * cols, 6))
    expected = _oracle_prune(scores.flatten().tolist(), k)
    assert mask.flatten().tolist() == expected


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    sparsity=SPARSITY,
    seed=st.integers(0, 2**16),
    levels=st.integers(1, 9),
)
def test_unstructured_row_scope_matches_oracle(rows: int, cols: int, sparsity: float, seed: int, levels: int) -> None:
    scores = _scores(rows, cols, seed, levels)
    mask = unstructured_mask(scores, sparsity, scope="row")
    k = pruned_count(sparsity, cols)
    assert (~mask).sum(dim=1).tolist() == [k] * rows
    for r in range(rows):
        assert mask[r].tolist() == _oracle_prune(scores[r].tolist(), k)


def test_row_scope_and_tensor_scope_differ() -> None:
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # Tensor scope prunes the two lowest overall (1, 2); row scope the lowest of each row (1, 3).
    assert unstructured_mask(scores, 0.5).tolist() == [[False, False], [True, True]]
    assert unstructured_mask(scores, 0.5, scope="row").tolist() == [[False, True], [False, True]]


def test_unknown_scope_is_rejected() -> None:
    with pytest.raises(PruningError, match="scope='column'"):
        unstructured_mask(torch.ones(2, 2), 0.5, scope="column")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 8),
    groups=st.integers(1, 6),
    m=st.integers(1, 8),
    n_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    levels=st.integers(1, 9),
)
def test_nm_mask_keeps_exactly_n_per_group(
    rows: int, groups: int, m: int, n_frac: float, seed: int, levels: int
) -> None:
    n = max(1, round(n_frac * m))
    scores = _scores(rows, groups * m, seed, levels)
    mask = nm_mask(scores, n, m)
    per_group = mask.reshape(rows, groups, m).sum(dim=-1)
    assert torch.equal(per_group, torch.full((rows, groups), n))
    for r in range(rows):
        for gi in range(groups):
            chunk = slice(gi * m, (gi + 1) * m)
            assert mask[r, chunk].tolist() == _oracle_prune(scores[r, chunk].tolist(), m - n)


def test_two_four_hand_case() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    # Group 1 keeps 4 and 3; group 2 is all ties, so indices 4, 5 are pruned first and 6, 7 kept.
    assert nm_mask(scores, 2, 4).tolist() == [[True, False, True, False, False, False, True, True]]
    # 4:8 on the same row keeps the four largest of eight: the four zeros go.
    assert nm_mask(scores, 4, 8).tolist() == [[True, True, True, True, False, False, False, False]]


@pytest.mark.parametrize(
    ("n", "m", "cols", "message"),
    [(3, 2, 4, "need 1 <= N <= M"), (0, 4, 4, "need 1 <= N <= M"), (2, 4, 6, "M=4 does not divide in_features=6")],
)
def test_nm_mask_rejects_bad_patterns(n: int, m: int, cols: int, message: str) -> None:
    with pytest.raises(PruningError, match=message):
        nm_mask(torch.ones(2, cols), n, m)


def test_nm_mask_rejects_non_integer_pattern() -> None:
    with pytest.raises(PruningError, match="must use integers"):
        nm_mask(torch.ones(2, 4), 2.0, 4)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    sparsity=SPARSITY,
    seed=st.integers(0, 2**16),
    levels=st.integers(1, 4),
)
def test_structured_masks_match_oracle(rows: int, cols: int, sparsity: float, seed: int, levels: int) -> None:
    scores = _scores(rows, cols, seed, levels)
    rmask = row_mask(scores, sparsity)
    keep_rows = _oracle_prune(scores.sum(dim=1).tolist(), pruned_count(sparsity, rows))
    assert rmask.tolist() == [[keep] * cols for keep in keep_rows]
    assert int((~rmask[:, 0]).sum()) == pruned_count(sparsity, rows)
    cmask = column_mask(scores, sparsity)
    keep_cols = _oracle_prune(scores.sum(dim=0).tolist(), pruned_count(sparsity, cols))
    assert cmask.tolist() == [keep_cols] * rows
    assert int((~cmask[0]).sum()) == pruned_count(sparsity, cols)


def test_structured_hand_case() -> None:
    scores = torch.tensor([[1.0, 5.0, 0.0], [2.0, 2.0, 2.0], [0.0, 1.0, 0.0]])
    # Row sums 6, 6, 1: one third of rows is one row, the last. Column sums 3, 8, 2: the last column.
    assert row_mask(scores, 0.34).tolist() == [[True] * 3, [True] * 3, [False] * 3]
    assert column_mask(scores, 0.34).tolist() == [[True, True, False]] * 3
    # Two of three rows: 1 first, then the tie between rows 0 and 1 prunes row 0.
    assert row_mask(scores, 0.67).tolist() == [[False] * 3, [True] * 3, [False] * 3]


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (torch.ones(4), r"shape \(4,\); pass a 2-D"),
        (torch.ones(2, 2, 2), r"shape \(2, 2, 2\)"),
        (torch.ones(2, 2, dtype=torch.int64), "floating-point"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
    ],
)
def test_masks_reject_bad_scores(scores: torch.Tensor, message: str) -> None:
    for make in (
        lambda s: unstructured_mask(s, 0.5),
        lambda s: nm_mask(s, 1, 1),
        lambda s: row_mask(s, 0.5),
        lambda s: column_mask(s, 0.5),
    ):
        with pytest.raises(PruningError, match=message):
            make(scores)
