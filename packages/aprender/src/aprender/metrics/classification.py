"""Classification metrics on predicted labels: accuracy, precision, recall, F-beta, confusion matrix.

The definitions, option names and edge-case conventions follow scikit-learn's ``sklearn.metrics``
(the tests use it as the oracle), so numbers are comparable with published results:

- ``average``: ``"binary"`` reports ``pos_label`` only (at most two classes may occur); ``"micro"``
  pools the counts of all labels; ``"macro"`` is the unweighted mean over labels; ``"weighted"``
  weights each label by its support (true count); ``None`` returns one value per label.
- ``labels``: which labels to score and in what order. Labels absent from the data are scored with
  zero counts (so they can lower a macro average); present labels left out are ignored.
- ``zero_division``: the value used where a ratio is 0/0 (precision with no predicted positives,
  recall with no true positives, F-beta with neither). The default 0.0 equals scikit-learn's
  default ``"warn"`` without the warning; ``float("nan")`` excludes such labels from averages.

Reference: Sokolova & Lapalme, "A systematic analysis of performance measures for classification
tasks", Information Processing & Management 45(4), 2009, https://doi.org/10.1016/j.ipm.2009.03.002.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from aprender.errors import MetricInputError
from aprender.metrics._arrays import (
    ArrayLike,
    as_label_array,
    as_label_set,
    check_label_types,
    check_same_length,
    encode_labels,
)

Average = Literal["binary", "micro", "macro", "weighted"] | None
Normalize = Literal["true", "pred", "all"] | None
FloatArray = npt.NDArray[np.float64]
Score = float | FloatArray

_AVERAGES = ("binary", "micro", "macro", "weighted", None)
_NORMALIZE = ("true", "pred", "all", None)


def accuracy_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of samples whose predicted label equals the true label.

    Args:
        y_true: true labels, shape ``(N,)``.
        y_pred: predicted labels, shape ``(N,)``.

    Returns:
        The accuracy in [0, 1].

    Raises:
        MetricInputError: empty or mismatched inputs, or numeric labels compared with strings.
    """
    truth, pred = _label_pair(y_true, y_pred)
    return float(np.mean(truth == pred))


def precision_score(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    average: Average = "binary",
    pos_label: Any = 1,
    labels: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> Score:
    """Precision ``tp / (tp + fp)``; options as in the module docstring.

    Args:
        y_true: true labels, shape ``(N,)``.
        y_pred: predicted labels, shape ``(N,)``.
        average: ``"binary"``, ``"micro"``, ``"macro"``, ``"weighted"`` or ``None``.
        pos_label: the positive class for ``average="binary"`` (unused otherwise).
        labels: labels to score, shape ``(L,)``; default: every label in ``y_true`` or ``y_pred``, sorted.
        zero_division: 0.0, 1.0 or NaN, returned where ``tp + fp == 0``.

    Returns:
        A float, or an array of shape ``(L,)`` when ``average`` is None.

    Raises:
        MetricInputError: see :func:`fbeta_score`.
    """
    return _precision_recall_fscore(y_true, y_pred, 1.0, average, pos_label, labels, zero_division)[0]


def recall_score(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    average: Average = "binary",
    pos_label: Any = 1,
    labels: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> Score:
    """Recall ``tp / (tp + fn)``; arguments as in :func:`precision_score`.

    Returns:
        A float, or an array of shape ``(L,)`` when ``average`` is None.

    Raises:
        MetricInputError: see :func:`fbeta_score`.
    """
    return _precision_recall_fscore(y_true, y_pred, 1.0, average, pos_label, labels, zero_division)[1]


def f1_score(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    average: Average = "binary",
    pos_label: Any = 1,
    labels: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> Score:
    """F1, the harmonic mean of precision and recall (:func:`fbeta_score` with ``beta=1``).

    Returns:
        A float, or an array of shape ``(L,)`` when ``average`` is None.

    Raises:
        MetricInputError: see :func:`fbeta_score`.
    """
    return fbeta_score(
        y_true, y_pred, beta=1.0, average=average, pos_label=pos_label, labels=labels, zero_division=zero_division
    )


def fbeta_score(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    beta: float,
    average: Average = "binary",
    pos_label: Any = 1,
    labels: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> Score:
    """F-beta ``(1 + b²) tp / ((1 + b²) tp + b² fn + fp)`` (van Rijsbergen, "Information Retrieval", 1979).

    ``beta=0`` gives precision and ``beta=inf`` recall. Other arguments as in :func:`precision_score`.

    Returns:
        A float, or an array of shape ``(L,)`` when ``average`` is None.

    Raises:
        MetricInputError: empty or mismatched inputs; an unknown ``average``; ``beta`` negative or NaN;
            ``zero_division`` not 0, 1 or NaN; duplicate or empty ``labels``; ``labels`` with
            ``average="binary"``; more than two classes, or a ``pos_label`` absent from two classes,
            with ``average="binary"``.
    """
    return _precision_recall_fscore(y_true, y_pred, beta, average, pos_label, labels, zero_division)[2]


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, *, labels: ArrayLike | None = None, normalize: Normalize = None
) -> npt.NDArray[Any]:
    """Counts ``C[i, j]`` of samples with true label ``labels[i]`` predicted as ``labels[j]``.

    Samples whose true or predicted label is not in ``labels`` are left out. With ``normalize``,
    rows (``"true"``), columns (``"pred"``) or the whole matrix (``"all"``) sum to 1; an all-zero
    row or column stays 0.

    Args:
        y_true: true labels, shape ``(N,)``.
        y_pred: predicted labels, shape ``(N,)``.
        labels: row/column order, shape ``(L,)``; default: every label in the data, sorted.
        normalize: None (integer counts), ``"true"``, ``"pred"`` or ``"all"``.

    Returns:
        An ``(L, L)`` int64 array, or float64 when normalized.

    Raises:
        MetricInputError: empty or mismatched inputs, an unknown ``normalize``, duplicate or empty
            ``labels``, or ``labels`` of which none occurs in ``y_true``.
    """
    if normalize not in _NORMALIZE:
        raise MetricInputError(f"normalize={normalize!r} is unknown; use one of {_NORMALIZE}")
    truth, pred = _label_pair(y_true, y_pred)
    label_array = _present_labels(truth, pred) if labels is None else as_label_set(labels, truth)
    if labels is not None and not np.isin(truth, label_array).any():
        raise MetricInputError("labels: none of them occurs in y_true; pass the labels your data uses")
    n = len(label_array)
    true_index, pred_index = encode_labels(truth, label_array), encode_labels(pred, label_array)
    keep = (true_index >= 0) & (pred_index >= 0)
    counts = np.bincount(true_index[keep] * n + pred_index[keep], minlength=n * n).reshape(n, n).astype(np.int64)
    if normalize is None:
        return counts
    axis = {"true": 1, "pred": 0, "all": None}[normalize]
    totals = counts.sum(axis=axis, keepdims=axis is not None)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(counts / totals)


def classification_report(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    target_names: list[str] | None = None,
    zero_division: float = 0.0,
) -> dict[str, Any]:
    """Per-label precision, recall, F1 and support plus averages, like scikit-learn's ``output_dict=True``.

    Keys: one per label (``target_names`` or ``str(label)``), each ``{"precision", "recall",
    "f1-score", "support"}``; then ``"accuracy"`` (a float) when the labels cover every class in the
    data, else a ``"micro avg"`` entry; then ``"macro avg"`` and ``"weighted avg"``. Average supports
    are the total support.

    Args:
        y_true: true labels, shape ``(N,)``.
        y_pred: predicted labels, shape ``(N,)``.
        labels: labels to report, shape ``(L,)``; default: every label in the data, sorted.
        target_names: display names, one per label.
        zero_division: as in :func:`precision_score`.

    Returns:
        The report dictionary.

    Raises:
        MetricInputError: as :func:`fbeta_score`, or ``target_names`` of the wrong length.
    """
    truth, pred = _label_pair(y_true, y_pred)
    label_array = _present_labels(truth, pred) if labels is None else as_label_set(labels, truth)
    names = [str(label) for label in label_array] if target_names is None else list(target_names)
    if len(names) != len(label_array):
        raise MetricInputError(
            f"target_names has {len(names)} names for {len(label_array)} labels; pass one name per label"
        )
    _check_zero_division(zero_division)
    tp, pred_sum, support = _label_counts(truth, pred, label_array)
    precision, recall, fscore = _ratios(tp, pred_sum, support, 1.0, zero_division)
    report: dict[str, Any] = {
        name: {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, fscore, support, strict=True)
    }
    micro_is_accuracy = labels is None or set(_present_labels(truth, pred).tolist()) <= set(label_array.tolist())
    for average in ("micro", "macro", "weighted"):
        avg_p, avg_r, avg_f = _precision_recall_fscore(truth, pred, 1.0, average, 1, label_array, zero_division)
        if average == "micro" and micro_is_accuracy:
            report["accuracy"] = avg_p
            continue
        entry = {"precision": avg_p, "recall": avg_r, "f1-score": avg_f, "support": int(support.sum())}
        report[f"{average} avg"] = entry
    return report


def _label_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    truth = as_label_array(y_true, "y_true")
    pred = as_label_array(y_pred, "y_pred")
    check_same_length(truth, pred, ("y_true", "y_pred"))
    check_label_types(truth, pred, ("y_true", "y_pred"))
    return truth, pred


def _present_labels(truth: npt.NDArray[Any], pred: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return np.unique(np.concatenate([truth, pred]))


def _scored_labels(
    truth: npt.NDArray[Any], pred: npt.NDArray[Any], labels: ArrayLike | None, average: Average, pos_label: Any
) -> npt.NDArray[Any]:
    """The labels to score: ``[pos_label]`` for binary averaging, else ``labels`` or all present."""
    if average != "binary":
        return _present_labels(truth, pred) if labels is None else as_label_set(labels, truth)
    if labels is not None:
        raise MetricInputError("labels is not used with average='binary'; drop it or pick another average")
    present = _present_labels(truth, pred)
    if len(present) > 2:
        raise MetricInputError(
            f"average='binary' needs at most 2 classes but the data has {len(present)}; "
            "use average='micro', 'macro', 'weighted' or None"
        )
    positive = np.asarray([pos_label])
    check_label_types(truth, positive, ("y_true", "pos_label"))
    if len(present) == 2 and not np.isin(positive, present).all():
        raise MetricInputError(f"pos_label={pos_label!r} is not one of the classes {present.tolist()}; pass one")
    return positive


def _check_options(average: object, beta: float, zero_division: float) -> None:
    if average not in _AVERAGES:
        raise MetricInputError(f"average={average!r} is unknown; use one of {_AVERAGES}")
    if isinstance(beta, bool) or not isinstance(beta, int | float | np.number) or math.isnan(beta) or beta < 0:
        raise MetricInputError(f"beta={beta!r} must be a number >= 0 (0 = precision, inf = recall)")
    _check_zero_division(zero_division)


def _check_zero_division(zero_division: float) -> None:
    if not (zero_division in (0.0, 1.0) or (isinstance(zero_division, float) and math.isnan(zero_division))):
        raise MetricInputError(f"zero_division={zero_division!r} must be 0.0, 1.0 or float('nan')")


def _precision_recall_fscore(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    beta: float,
    average: Average,
    pos_label: Any,
    labels: ArrayLike | None,
    zero_division: float,
) -> tuple[Score, Score, Score]:
    """Precision, recall and F-beta, averaged or (``average=None``) one per label."""
    _check_options(average, beta, zero_division)
    truth, pred = _label_pair(y_true, y_pred)
    tp, pred_sum, true_sum = _label_counts(truth, pred, _scored_labels(truth, pred, labels, average, pos_label))
    if average == "micro":
        tp, pred_sum, true_sum = tp.sum(keepdims=True), pred_sum.sum(keepdims=True), true_sum.sum(keepdims=True)
    precision, recall, fscore = _ratios(tp, pred_sum, true_sum, beta, zero_division)
    if average is None:
        return precision, recall, fscore
    weights = true_sum if average == "weighted" else None
    return _nan_average(precision, weights), _nan_average(recall, weights), _nan_average(fscore, weights)


def _label_counts(
    truth: npt.NDArray[Any], pred: npt.NDArray[Any], labels: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per label: true positives, predicted count and true count (the support)."""
    n = len(labels)
    true_index, pred_index = encode_labels(truth, labels), encode_labels(pred, labels)
    hits = (true_index == pred_index) & (true_index >= 0)
    tp = np.bincount(true_index[hits], minlength=n)
    pred_sum = np.bincount(pred_index[pred_index >= 0], minlength=n)
    true_sum = np.bincount(true_index[true_index >= 0], minlength=n)
    return tp.astype(np.int64), pred_sum.astype(np.int64), true_sum.astype(np.int64)


def _ratios(
    tp: npt.NDArray[np.int64],
    pred_sum: npt.NDArray[np.int64],
    true_sum: npt.NDArray[np.int64],
    beta: float,
    zero_division: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Precision, recall and F-beta per entry; F-beta from counts so precision=recall=0 needs no special case."""
    precision = _divide(tp, pred_sum, zero_division)
    recall = _divide(tp, true_sum, zero_division)
    if math.isinf(beta):
        return precision, recall, recall
    return precision, recall, _divide((1 + beta**2) * tp, beta**2 * true_sum + pred_sum, zero_division)


def _divide(numerator: npt.NDArray[Any], denominator: npt.NDArray[Any], zero_division: float) -> FloatArray:
    """Element-wise ratio with ``zero_division`` where the denominator is 0."""
    zero = denominator == 0
    ratio = numerator / np.where(zero, 1, denominator)
    return np.where(zero, zero_division, ratio).astype(np.float64)


def _nan_average(values: FloatArray, weights: npt.NDArray[Any] | None) -> float:
    """Mean ignoring NaN entries; all-zero weights fall back to the plain mean (as scikit-learn does)."""
    keep = ~np.isnan(values)
    if not keep.any():
        return math.nan
    if weights is None or weights[keep].sum() == 0:
        return float(values[keep].mean())
    return float(np.average(values[keep], weights=weights[keep]))
