"""aprender.metrics.classification against scikit-learn (oracle) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import MetricInputError
from aprender.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    fbeta_score,
    precision_score,
    recall_score,
)

AVERAGES = ["micro", "macro", "weighted", None]
ZERO_DIVISION = [0.0, 1.0, math.nan]
FAST = settings(max_examples=80, deadline=None)


@st.composite
def label_pairs(draw: st.DrawFn, n_classes: int = 5) -> tuple[list[int], list[int]]:
    n = draw(st.integers(1, 25))
    labels = st.integers(0, n_classes - 1)
    return draw(st.lists(labels, min_size=n, max_size=n)), draw(st.lists(labels, min_size=n, max_size=n))


# Labels 0..6 while the data uses 0..4: classes 5 and 6 never occur, which exercises missing labels.
label_subsets = st.none() | st.lists(st.integers(0, 6), min_size=1, max_size=6, unique=True)


def _close(ours: object, theirs: object) -> bool:
    return bool(np.allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float), equal_nan=True))


@FAST
@given(
    pair=label_pairs(),
    average=st.sampled_from(AVERAGES),
    zero_division=st.sampled_from(ZERO_DIVISION),
    labels=label_subsets,
    beta=st.sampled_from([0.0, 0.5, 1.0, 2.0, math.inf]),
)
def test_prf_match_sklearn_in_every_mode(pair, average, zero_division, labels, beta) -> None:
    y_true, y_pred = pair
    options = {"average": average, "labels": labels, "zero_division": zero_division}
    assert _close(precision_score(y_true, y_pred, **options), skm.precision_score(y_true, y_pred, **options))
    assert _close(recall_score(y_true, y_pred, **options), skm.recall_score(y_true, y_pred, **options))
    assert _close(f1_score(y_true, y_pred, **options), skm.f1_score(y_true, y_pred, **options))
    ours = fbeta_score(y_true, y_pred, beta=beta, **options)
    assert _close(ours, skm.fbeta_score(y_true, y_pred, beta=beta, **options))


@FAST
@given(pair=label_pairs(n_classes=2), pos_label=st.sampled_from([0, 1]), zero_division=st.sampled_from(ZERO_DIVISION))
def test_binary_average_matches_sklearn(pair, pos_label, zero_division) -> None:
    y_true, y_pred = pair
    options = {"pos_label": pos_label, "zero_division": zero_division}
    for ours, theirs in [(precision_score, skm.precision_score), (recall_score, skm.recall_score)]:
        assert _close(ours(y_true, y_pred, **options), theirs(y_true, y_pred, **options))
    assert _close(f1_score(y_true, y_pred, **options), skm.f1_score(y_true, y_pred, **options))


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
@FAST
@given(pair=label_pairs(), labels=label_subsets, normalize=st.sampled_from([None, "true", "pred", "all"]))
def test_confusion_matrix_matches_sklearn(pair, labels, normalize) -> None:
    y_true, y_pred = pair
    if labels is not None and not set(labels) & set(y_true):
        with pytest.raises(MetricInputError, match="none of them occurs in y_true"):
            confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize)
        return
    ours = confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize)
    expected = skm.confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize)
    assert ours.dtype == (np.int64 if normalize is None else np.float64)
    np.testing.assert_allclose(ours, expected)


@FAST
@given(pair=label_pairs(), labels=label_subsets, zero_division=st.sampled_from([0.0, 1.0]))
def test_classification_report_matches_sklearn_output_dict(pair, labels, zero_division) -> None:
    y_true, y_pred = pair
    ours = classification_report(y_true, y_pred, labels=labels, zero_division=zero_division)
    theirs = skm.classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=zero_division)
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value)


@FAST
@given(pair=label_pairs())
def test_accuracy_matches_sklearn(pair) -> None:
    y_true, y_pred = pair
    assert accuracy_score(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))


def test_hand_computed_multiclass_case() -> None:
    # true: a a b b c c ; pred: a b b c c a
    # a: tp 1, predicted 2, true 2 -> P 1/2, R 1/2 ; b: tp 1, pred 2, true 2 -> 1/2, 1/2 ; c: same.
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "b", "b", "c", "c", "a"]
    assert precision_score(y_true, y_pred, average="macro") == pytest.approx(0.5)
    assert accuracy_score(y_true, y_pred) == pytest.approx(0.5)
    # F2 per class with P = R = 1/2 is 1/2; with labels=["a", "z"] the missing "z" scores 0 -> macro 1/4.
    assert fbeta_score(y_true, y_pred, beta=2.0, average="macro", labels=["a", "z"]) == pytest.approx(0.25)
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, labels=["c", "b", "a"]), [[1, 0, 1], [1, 1, 0], [0, 1, 1]]
    )


def test_string_labels_and_pos_label_match_sklearn() -> None:
    y_true = ["spam", "ham", "spam", "spam", "ham"]
    y_pred = ["spam", "spam", "ham", "spam", "ham"]
    for pos_label in ["spam", "ham"]:
        assert f1_score(y_true, y_pred, pos_label=pos_label) == pytest.approx(
            skm.f1_score(y_true, y_pred, pos_label=pos_label)
        )


def test_zero_division_values() -> None:
    # Nothing predicted as class 1: precision is 0/0 -> zero_division; recall is 0/2 = 0.
    y_true, y_pred = [1, 1, 0], [0, 0, 0]
    assert precision_score(y_true, y_pred) == 0.0
    assert precision_score(y_true, y_pred, zero_division=1.0) == 1.0
    assert math.isnan(precision_score(y_true, y_pred, zero_division=math.nan))
    # F is (1 + b^2) tp / (b^2 true + pred) = 0 / 2 here: defined, so never zero_division.
    assert f1_score(y_true, y_pred, zero_division=1.0) == 0.0


def test_nan_zero_division_is_left_out_of_averages() -> None:
    # Class 2 is never predicted: its precision is NaN and the macro mean covers classes 0 and 1 only.
    y_true, y_pred = [0, 1, 2], [0, 1, 1]
    per_label = precision_score(y_true, y_pred, average=None, zero_division=math.nan)
    np.testing.assert_allclose(per_label, [1.0, 0.5, math.nan])
    assert precision_score(y_true, y_pred, average="macro", zero_division=math.nan) == pytest.approx(0.75)
    # Only label 5 (never seen): every value is NaN, so is the average.
    assert math.isnan(precision_score(y_true, y_pred, average="macro", labels=[5], zero_division=math.nan))


def test_weighted_average_with_zero_support_falls_back_to_plain_mean() -> None:
    # Labels 3 and 4 never occur in y_true (support 0): sklearn then averages unweighted.
    y_true, y_pred = [0, 1], [3, 3]
    ours = recall_score(y_true, y_pred, average="weighted", labels=[3, 4], zero_division=1.0)
    assert ours == skm.recall_score(y_true, y_pred, average="weighted", labels=[3, 4], zero_division=1.0) == 1.0


def test_report_with_target_names_and_micro_avg() -> None:
    report = classification_report([0, 1, 2, 2], [0, 2, 2, 2], labels=[0, 2], target_names=["zero", "two"])
    # labels leave class 1 out, so the micro average is not the accuracy: a "micro avg" entry appears.
    assert list(report) == ["zero", "two", "micro avg", "macro avg", "weighted avg"]
    # two: tp 2, predicted 3, true 2 -> P 2/3, R 1.
    assert report["two"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1-score": 0.8, "support": 2})
    assert report["micro avg"]["support"] == 3


@pytest.mark.parametrize("convert", [np.asarray, list, torch.tensor])
def test_accepts_arrays_lists_and_tensors(convert) -> None:
    y_true, y_pred = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    expected = skm.f1_score(y_true, y_pred, average="macro")
    assert f1_score(convert(y_true), convert(y_pred), average="macro") == pytest.approx(expected)
    np.testing.assert_array_equal(
        confusion_matrix(convert(y_true), convert(y_pred)), skm.confusion_matrix(y_true, y_pred)
    )


def test_float_labels_with_integral_values_are_labels() -> None:
    assert accuracy_score(np.array([0.0, 1.0, 2.0]), [0, 1, 1]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: accuracy_score([], []), "y_true: is empty"),
        (lambda: accuracy_score([0, 1], [0]), "y_true has 2 entries but y_pred has 1"),
        (lambda: accuracy_score([[0, 1]], [[0, 1]]), "expected a 1-D array"),
        (lambda: accuracy_score([0.5, 1.0], [0, 1]), "non-integral floats"),
        (lambda: accuracy_score([0, 1], ["a", "b"]), "mix numeric and string labels"),
        (lambda: accuracy_score([[0, 1], [2]], [0, 1]), "not a rectangular array"),
        (lambda: accuracy_score(np.array([1 + 1j]), [1]), "complex numbers"),
        (lambda: accuracy_score(torch.tensor([1 + 1j]), [1]), "complex tensors"),
        (lambda: accuracy_score(np.array(["2020-01-01"], dtype="datetime64[D]"), [1]), "cannot hold class labels"),
        (lambda: f1_score([0, 1], [0, 1], average="samples"), "average='samples' is unknown"),  # type: ignore[arg-type]
        (lambda: f1_score([0, 1, 2], [0, 1, 2]), "average='binary' needs at most 2 classes but the data has 3"),
        (lambda: f1_score([0, 2], [0, 2]), "pos_label=1 is not one of the classes"),
        (lambda: f1_score(["a", "b"], ["a", "b"]), "pos_label .* mix numeric and string"),
        (lambda: f1_score([0, 1], [0, 1], labels=[0, 1]), "labels is not used with average='binary'"),
        (lambda: f1_score([0, 1], [0, 1], average="macro", labels=[0, 0]), "duplicates"),
        (lambda: f1_score([0, 1], [0, 1], average="macro", labels=[]), "labels: is empty"),
        (lambda: fbeta_score([0, 1], [0, 1], beta=-1.0), "beta=-1.0 must be a number >= 0"),
        (lambda: fbeta_score([0, 1], [0, 1], beta=math.nan), "beta=nan"),
        (lambda: fbeta_score([0, 1], [0, 1], beta=True), "beta=True"),
        (lambda: precision_score([0, 1], [0, 1], zero_division=0.5), "zero_division=0.5 must be"),
        (lambda: confusion_matrix([0, 1], [0, 1], normalize="rows"), "normalize='rows' is unknown"),  # type: ignore[arg-type]
        (lambda: confusion_matrix([0, 1], [0, 1], labels=[7]), "none of them occurs in y_true"),
        (lambda: classification_report([0, 1], [0, 1], target_names=["a"]), "target_names has 1 names for 2"),
        (lambda: classification_report([0, 1], [0, 1], zero_division=2.0), "zero_division=2.0"),
    ],
)
def test_errors_name_the_problem(call, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()


def test_metric_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="is empty"):
        accuracy_score([], [])
