"""aprender.metrics.probabilistic (ROC-AUC, average precision, log loss) against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aprender.errors import MetricInputError
from aprender.metrics import average_precision_score, log_loss, roc_auc_score

FAST = settings(max_examples=80, deadline=None)


@st.composite
def binary_scores(draw: st.DrawFn, min_size: int = 2) -> tuple[list[int], list[float]]:
    """Labels with both classes and scores from a small set, so ties are common."""
    n = draw(st.integers(min_size, 30))
    y_true = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    assume(0 < sum(y_true) < n)
    scores = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), min_size=n, max_size=n))
    return y_true, scores


@st.composite
def multiclass_probs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_classes = draw(st.integers(3, 5))
    n = draw(st.integers(n_classes, 30))
    y_true = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    assume(len(np.unique(y_true)) == n_classes)
    # Coarse weights produce tied probabilities; normalised rows are proper probabilities.
    weights = np.array(draw(st.lists(st.integers(1, 4), min_size=n * n_classes, max_size=n * n_classes)), float)
    prob = weights.reshape(n, n_classes)
    return y_true, prob / prob.sum(axis=1, keepdims=True)


@FAST
@given(data=binary_scores())
def test_binary_roc_auc_and_ap_match_sklearn_with_ties(data) -> None:
    y_true, scores = data
    assert roc_auc_score(y_true, scores) == pytest.approx(skm.roc_auc_score(y_true, scores))
    assert average_precision_score(y_true, scores) == pytest.approx(skm.average_precision_score(y_true, scores))


@FAST
@given(data=binary_scores())
def test_pos_label_selects_the_positive_class(data) -> None:
    y_true, scores = data
    names = np.where(np.array(y_true) == 1, "yes", "no")
    # "no" as the positive class is the binary task with flipped labels.
    flipped = [1 - y for y in y_true]
    assert roc_auc_score(names, scores, pos_label="no") == pytest.approx(skm.roc_auc_score(flipped, scores))
    assert average_precision_score(names, scores, pos_label="no") == pytest.approx(
        skm.average_precision_score(flipped, scores)
    )


@FAST
@given(data=multiclass_probs(), average=st.sampled_from(["macro", "weighted"]))
def test_multiclass_ovr_roc_auc_matches_sklearn(data, average) -> None:
    y_true, prob = data
    expected = skm.roc_auc_score(y_true, prob, multi_class="ovr", average=average)
    assert roc_auc_score(y_true, prob, average=average) == pytest.approx(expected)


def test_two_column_scores_equal_the_binary_auc() -> None:
    # One-vs-rest on [1 - p, p]: both columns give the binary AUC, so their mean does too.
    y_true, p = [0, 0, 1, 1, 0, 1], np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.5])
    assert roc_auc_score(y_true, np.column_stack([1 - p, p])) == pytest.approx(skm.roc_auc_score(y_true, p))


def test_hand_computed_auc_and_ap() -> None:
    # Scores: positives 0.8, 0.4; negatives 0.4, 0.1. Pairs (pos > neg): (0.8,0.4) (0.8,0.1) (0.4,0.1) = 3,
    # tie (0.4,0.4) = 1/2 -> AUC = 3.5 / 4 = 0.875.
    y_true, scores = [1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]
    assert roc_auc_score(y_true, scores) == pytest.approx(0.875)
    # Thresholds 0.8: P 1/1, R 1/2; 0.4: P 2/3, R 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert average_precision_score(y_true, scores) == pytest.approx(5 / 6)


def test_ap_with_only_positives_is_one() -> None:
    assert average_precision_score([1, 1], [0.2, 0.7]) == 1.0


@FAST
@given(data=binary_scores(), dtype=st.sampled_from([np.float64, np.float32]))
def test_binary_log_loss_matches_sklearn_including_clipping(data, dtype) -> None:
    y_true, scores = data  # scores contain exact 0 and 1: clipping to [eps, 1 - eps] matters
    prob = np.asarray(scores, dtype=dtype)
    assert log_loss(y_true, prob) == pytest.approx(skm.log_loss(y_true, prob), rel=1e-5)


@FAST
@given(data=multiclass_probs())
def test_multiclass_log_loss_matches_sklearn(data) -> None:
    y_true, prob = data
    assert log_loss(y_true, prob) == pytest.approx(skm.log_loss(y_true, prob))


def test_log_loss_labels_cover_missing_classes() -> None:
    # Class 2 has no sample: without labels there would be 2 classes for 3 columns.
    y_true, prob = [0, 1, 1], np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    expected = skm.log_loss(y_true, prob, labels=[0, 1, 2])
    # Hand check: -(ln 0.7 + ln 0.6 + ln 0.2) / 3.
    assert expected == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.2)) / 3)
    assert log_loss(y_true, prob, labels=[0, 1, 2]) == pytest.approx(expected)
    # labels give the column order: reversing both the labels and the columns changes nothing.
    assert log_loss(y_true, prob[:, ::-1], labels=[2, 1, 0]) == pytest.approx(expected)


def test_log_loss_eps_follows_the_dtype() -> None:
    # A zero probability for the true class is clipped to the dtype's machine epsilon.
    for dtype in (np.float64, np.float32, np.float16):
        eps = np.finfo(np.float32 if dtype == np.float16 else dtype).eps
        assert log_loss([1, 0], np.array([0.0, 0.0], dtype=dtype)) == pytest.approx(-math.log(eps) / 2, rel=1e-6)


def test_tensors_and_column_vectors_are_accepted() -> None:
    y_true, p = [0, 1, 1, 0], [0.2, 0.7, 0.6, 0.4]
    expected = skm.log_loss(y_true, p)
    assert log_loss(torch.tensor(y_true), torch.tensor(p)) == pytest.approx(expected, rel=1e-6)
    assert log_loss(y_true, np.array(p)[:, None]) == pytest.approx(expected)
    assert roc_auc_score(torch.tensor(y_true), torch.tensor(p, dtype=torch.bfloat16)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: roc_auc_score([0, 1], [0.1, 0.2], average="micro"), "average='micro' is unknown"),  # type: ignore[arg-type]
        (lambda: roc_auc_score([1, 1], [0.1, 0.2]), "only the class"),
        (lambda: roc_auc_score([0, 2], [0.1, 0.2]), "pos_label=1 is not one of the classes"),
        (lambda: roc_auc_score(["a", "b"], [0.1, 0.2]), "mix numeric and string"),
        (lambda: roc_auc_score([0, 1, 2], [0.1, 0.2, 0.3]), "pass an \\(N, C\\) score matrix"),
        (lambda: roc_auc_score([0, 1, 2], np.full((3, 2), 0.5)), "2 columns but y_true has 3 classes"),
        (lambda: roc_auc_score([0, 0], np.full((2, 2), 0.5)), "2 columns but y_true has 1 classes"),
        (lambda: roc_auc_score([0, 1], [0.1, math.nan]), "NaN or infinity"),
        (lambda: roc_auc_score([0, 1], [0.1]), "y_true has 2 entries but y_score has 1"),
        (lambda: roc_auc_score([0, 1], np.zeros((2, 2, 2))), "1-D or 2-D"),
        (lambda: roc_auc_score([0, 1], ["a", "b"]), "expected numbers"),
        (lambda: roc_auc_score([0, 1], []), "y_score: is empty"),
        (lambda: average_precision_score([0, 0], [0.1, 0.2]), "at least one positive sample"),
        (lambda: average_precision_score([0, 1], np.zeros((2, 2))), "must be 1-D"),
        (lambda: log_loss([0, 0], [0.1, 0.2]), "needs at least 2 classes"),
        (lambda: log_loss([0, 1], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]), "3 columns for 2 classes"),
        (lambda: log_loss([0, 1], [1.5, 0.2]), "outside \\[0, 1\\]"),
        (lambda: log_loss([0, 1], [[0.5, 0.6], [0.5, 0.5]]), "rows must sum to 1"),
        (lambda: log_loss([0, 3], [[0.5, 0.5], [0.5, 0.5]], labels=[0, 1]), "y_true holds 3, which is not in labels"),
        (lambda: log_loss([0, 1], [0.5, 0.5], labels=[1, 1]), "duplicates"),
    ],
)
def test_errors_name_the_problem(call, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()
