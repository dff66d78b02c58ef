"""aprender.metrics.ranking on hand-checked cases, and against scikit-learn where definitions coincide."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import MetricInputError
from aprender.metrics import dcg_at_k, hit_at_k, map_at_k, mean_reciprocal_rank, ndcg_at_k

FAST = settings(max_examples=60, deadline=None)

# Two queries used by the hand-checked cases.
RANKED = [["a", "b", "c", "d"], ["x", "y", "z"]]
RELEVANT = [{"b", "d"}, {"q"}]  # query 2 has no relevant item among its results
GRADED = [{"a": 3, "b": 0, "c": 2, "e": 3}, {"y": 1}]


def test_hit_at_k() -> None:
    # k=1: query 1 top "a" not relevant, query 2 no -> 0. k=2: query 1 has "b" -> 1/2.
    assert hit_at_k(RANKED, RELEVANT, 1) == 0.0
    assert hit_at_k(RANKED, RELEVANT, 2) == 0.5
    assert hit_at_k(RANKED, RELEVANT, 100) == 0.5  # k beyond the list length uses the whole list


def test_mean_reciprocal_rank() -> None:
    # Query 1: first relevant "b" at rank 2 -> 1/2; query 2: none -> 0. Mean = 1/4.
    assert mean_reciprocal_rank(RANKED, RELEVANT) == pytest.approx(0.25)
    # With k=1 neither query has a relevant item in its top 1.
    assert mean_reciprocal_rank(RANKED, RELEVANT, k=1) == 0.0
    # Graded judgements: grade 0 is not relevant, so query 1's first relevant item is "a" at rank 1.
    assert mean_reciprocal_rank(RANKED, GRADED) == pytest.approx((1 + 1 / 2) / 2)


def test_map_at_k() -> None:
    # Query 1, k=4: hits at ranks 2 and 4 -> P@2 = 1/2, P@4 = 2/4; AP = (1/2 + 1/2) / min(2, 4) = 1/2.
    # Query 2: no relevant item -> 0. MAP = 1/4.
    assert map_at_k(RANKED, RELEVANT, 4) == pytest.approx(0.25)
    # k=2: one hit at rank 2 -> P@2 = 1/2; AP = (1/2) / min(2, 2) = 1/4. MAP = 1/8.
    assert map_at_k(RANKED, RELEVANT, 2) == pytest.approx(0.125)
    # Three relevant items, k=2, both top items relevant: AP = (1 + 1) / min(3, 2) = 1.
    assert map_at_k([[1, 2, 3]], [{1, 2, 3}], 2) == 1.0


def test_dcg_and_ndcg_at_k() -> None:
    # Query 1 grades by rank: a=3, b=0, c=2, d=0. DCG@3 = 3/log2(2) + 0/log2(3) + 2/log2(4) = 3 + 1 = 4.
    # Ideal grades (e=3 is judged but not retrieved): 3, 3, 2 -> IDCG@3 = 3 + 3/log2(3) + 1.
    # Query 2: y=1 at rank 2 -> DCG@3 = 1/log2(3); ideal 1 at rank 1 -> IDCG = 1.
    dcg_1, dcg_2 = 4.0, 1 / math.log2(3)
    idcg_1 = 3 + 3 / math.log2(3) + 1
    assert dcg_at_k(RANKED, GRADED, 3) == pytest.approx((dcg_1 + dcg_2) / 2)
    assert ndcg_at_k(RANKED, GRADED, 3) == pytest.approx((dcg_1 / idcg_1 + dcg_2) / 2)
    # Exponential gain 2^g - 1: a=7, c=3 -> DCG@3 = 7 + 3/2; ideal 7, 7, 3 -> 7 + 7/log2(3) + 3/2.
    expected = ((7 + 1.5) / (7 + 7 / math.log2(3) + 1.5) + 1 / math.log2(3)) / 2
    assert ndcg_at_k(RANKED, GRADED, 3, gain="exponential") == pytest.approx(expected)


def test_ndcg_query_without_relevant_items_scores_zero() -> None:
    assert ndcg_at_k([[1, 2]], [{1: 0.0}], 2) == 0.0
    assert map_at_k([[1, 2]], [set()], 2) == 0.0


@st.composite
def scored_queries(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Relevance matrix and tie-free scores (a permutation per query), shape (Q, n_items)."""
    n_queries, n_items = draw(st.integers(1, 5)), draw(st.integers(2, 8))
    grades = draw(st.lists(st.integers(0, 3), min_size=n_queries * n_items, max_size=n_queries * n_items))
    scores = [draw(st.permutations(range(n_items))) for _ in range(n_queries)]
    return np.array(grades, dtype=float).reshape(n_queries, n_items), np.array(scores, dtype=float)


def _as_rankings(relevance: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, list[dict[int, float]]]:
    ranked = np.argsort(-scores, axis=1)  # item ids (column indices), best first
    judgements = [{item: grade for item, grade in enumerate(row)} for row in relevance]
    return ranked, judgements


@FAST
@given(data=scored_queries(), k=st.integers(1, 10))
def test_ndcg_and_dcg_match_sklearn(data, k) -> None:
    relevance, scores = data
    ranked, judgements = _as_rankings(relevance, scores)
    assert ndcg_at_k(ranked, judgements, k) == pytest.approx(skm.ndcg_score(relevance, scores, k=k))
    assert dcg_at_k(ranked, judgements, k) == pytest.approx(skm.dcg_score(relevance, scores, k=k))


@FAST
@given(data=scored_queries())
def test_map_over_full_ranking_matches_sklearn_average_precision(data) -> None:
    # With every item ranked, no ties and k = n_items >= |R|: AP@k = sum P@i rel_i / |R|, sklearn's AP.
    relevance, scores = data
    binary = relevance > 0
    ranked, _ = _as_rankings(relevance, scores)
    judgements = [set(np.flatnonzero(row).tolist()) for row in binary]
    expected = [
        skm.average_precision_score(row, s) if row.any() else 0.0 for row, s in zip(binary, scores, strict=True)
    ]
    assert map_at_k(ranked, judgements, relevance.shape[1]) == pytest.approx(np.mean(expected))


def test_accepts_tensors_arrays_and_ragged_lists() -> None:
    ranked = torch.tensor([[3, 1, 2], [0, 2, 1]])  # e.g. scores.topk(3).indices
    relevant = [torch.tensor([1]), np.array([2, 0])]
    # Query 1: hit at rank 2 -> RR 1/2; query 2: hit at rank 1 -> RR 1.
    assert mean_reciprocal_rank(ranked, relevant) == pytest.approx(0.75)
    assert mean_reciprocal_rank([torch.tensor([3, 1]), np.array([0])], relevant) == pytest.approx(0.75)
    assert hit_at_k(np.array([[3, 1], [2, 0]]), relevant, 1) == 0.5
    assert hit_at_k([(1,), [9, 8]], [[1], (8,)], 2) == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hit_at_k(RANKED, RELEVANT, 0), "k=0 must be >= 1"),
        (lambda: hit_at_k(RANKED, RELEVANT, 1.5), "k=1.5 must be an integer"),  # type: ignore[arg-type]
        (lambda: hit_at_k(RANKED, RELEVANT, True), "k=True must be an integer"),
        (lambda: mean_reciprocal_rank(RANKED, RELEVANT, k=-2), "k=-2 must be >= 1"),
        (lambda: map_at_k(RANKED, RELEVANT[:1], 2), "ranked has 2 queries but relevance has 1"),
        (lambda: map_at_k([], [], 2), "ranked is empty"),
        (lambda: hit_at_k("abc", RELEVANT, 1), "ranked: expected a sequence with one entry per query"),
        (lambda: hit_at_k(["abc"], [{"a"}], 1), r"ranked\[0\]: expected a sequence of item ids"),
        (lambda: hit_at_k([[1, 1]], [{1}], 1), r"ranked\[0\]: lists an item twice"),
        (lambda: hit_at_k([[[1], [2]]], [{1}], 1), r"ranked\[0\]: item ids must be hashable"),
        (lambda: hit_at_k(np.array([1, 2]), [{1}], 1), "must be 2-D"),
        (lambda: hit_at_k([[1]], ["a"], 1), r"relevance\[0\]: expected a set of item ids"),
        (lambda: hit_at_k([[1]], [5], 1), r"relevance\[0\]: expected a set of item ids"),
        (lambda: hit_at_k([[1]], [[[1]]], 1), r"relevance\[0\]: item ids must be hashable"),
        (lambda: ndcg_at_k([[1]], [{1: -1}], 1), r"relevance\[0\]\[1\]=-1: grades must be finite numbers >= 0"),
        (lambda: ndcg_at_k([[1]], [{1: math.inf}], 1), "grades must be finite"),
        (lambda: ndcg_at_k([[1]], [{1: "high"}], 1), "grades must be finite"),
        (lambda: ndcg_at_k([[1]], [{1: 1}], 1, gain="log"), "gain='log' is unknown"),  # type: ignore[arg-type]
        (lambda: dcg_at_k([[1]], [{1: 1}], 1, gain="cubic"), "gain='cubic' is unknown"),  # type: ignore[arg-type]
    ],
)
def test_errors_name_the_problem(call, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()
