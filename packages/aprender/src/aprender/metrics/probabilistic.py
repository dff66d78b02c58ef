"""Classification metrics on scores and probabilities: ROC-AUC, average precision, log loss.

Values match scikit-learn's ``roc_auc_score``, ``average_precision_score`` and ``log_loss`` (the
tests use them as oracles). Where scikit-learn warns and returns NaN (a single class for ROC-AUC, no
positive sample for AP) or warns and goes on (log-loss rows that do not sum to 1), these functions
raise :class:`~aprender.errors.MetricInputError`: the number would be meaningless.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from aprender.errors import MetricInputError
from aprender.metrics._arrays import (
    ArrayLike,
    as_float_array,
    as_label_array,
    as_label_set,
    check_label_types,
    check_same_length,
    encode_labels,
)

_ROC_AVERAGES = ("macro", "weighted")


def roc_auc_score(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    average: Literal["macro", "weighted"] = "macro",
    pos_label: Any = 1,
) -> float:
    """Area under the ROC curve: the chance that a positive scores above a negative (ties count half).

    With 1-D scores the task is binary and ``pos_label`` names the positive class. With an
    ``(N, C)`` score matrix the task is multi-class one-vs-rest: column ``c`` scores the ``c``-th
    class of ``sorted(set(y_true))`` (every class must occur), and the per-class AUCs are averaged
    unweighted (``"macro"``) or by class prevalence (``"weighted"``). Computed exactly from
    tie-averaged ranks (Mann-Whitney U), which equals the trapezoidal area under the ROC curve.
    Reference: Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27(8), 2006,
    https://doi.org/10.1016/j.patrec.2005.10.010; Hand & Till, Machine Learning 45, 2001 (multi-class).

    Args:
        y_true: true labels, shape ``(N,)``.
        y_score: scores, shape ``(N,)`` (binary) or ``(N, C)`` (multi-class); higher = more likely.
        average: multi-class averaging, ``"macro"`` or ``"weighted"``.
        pos_label: the positive class for 1-D scores.

    Returns:
        The AUC in [0, 1].

    Raises:
        MetricInputError: empty, non-finite or mismatched inputs; an unknown ``average``; a single
            class in ``y_true``; a ``pos_label`` that is not one of two classes; more than two classes
            with 1-D scores; a column count that differs from the number of classes.
    """
    if average not in _ROC_AVERAGES:
        raise MetricInputError(f"average={average!r} is unknown for roc_auc_score; use one of {_ROC_AVERAGES}")
    truth, scores = _score_pair(y_true, y_score)
    if scores.ndim == 1:
        return _binary_auc(_positives(truth, pos_label, need_both=True), scores)
    classes = np.unique(truth)
    if len(classes) < 2 or scores.shape[1] != len(classes):
        raise MetricInputError(
            f"y_score has {scores.shape[1]} columns but y_true has {len(classes)} classes {classes.tolist()}; "
            "pass one score column per class (at least 2), in sorted class order"
        )
    index = encode_labels(truth, classes)
    aucs = np.array([_binary_auc(index == column, scores[:, column]) for column in range(len(classes))])
    weights = np.bincount(index, minlength=len(classes)) if average == "weighted" else None
    return float(np.average(aucs, weights=weights))


def average_precision_score(y_true: ArrayLike, y_score: ArrayLike, *, pos_label: Any = 1) -> float:
    """Average precision ``AP = sum_n (R_n - R_(n-1)) P_n`` over the distinct score thresholds.

    This is scikit-learn's step-wise (non-interpolated) definition: tied scores form one threshold.
    Reference: Zhu, "Recall, precision and average precision", University of Waterloo, 2004;
    https://scikit-learn.org/stable/modules/model_evaluation.html#precision-recall-and-f-measures.

    Args:
        y_true: true labels of a binary task, shape ``(N,)``.
        y_score: scores, shape ``(N,)``; higher = more likely positive.
        pos_label: the positive class.

    Returns:
        The AP in [0, 1].

    Raises:
        MetricInputError: empty, non-finite or mismatched inputs, more than two classes, a
            ``pos_label`` that is not one of two classes, or no positive sample.
    """
    truth, scores = _score_pair(y_true, y_score)
    if scores.ndim != 1:
        raise MetricInputError(f"y_score must be 1-D (one score per sample), got shape {scores.shape}")
    positive = _positives(truth, pos_label, need_both=False)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    # The last index of each run of equal scores: one threshold per distinct score.
    thresholds = np.append(np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1)
    true_pos = np.cumsum(sorted_positive)[thresholds]
    precision = true_pos / (thresholds + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def log_loss(y_true: ArrayLike, y_prob: ArrayLike, *, labels: ArrayLike | None = None) -> float:
    """Mean negative log-likelihood ``-mean_i log p_i[y_i]`` of the true classes (natural log).

    Probabilities are clipped to ``[eps, 1 - eps]`` with ``eps`` the machine epsilon of their dtype
    (float64, or float32 for float32/float16 input), as scikit-learn >= 1.5 does. Rows must sum to 1
    (relative tolerance ``sqrt(eps)``). Reference: Bishop, "Pattern Recognition and Machine
    Learning", Springer 2006, section 4.3.4.

    Args:
        y_true: true labels, shape ``(N,)``.
        y_prob: class probabilities, shape ``(N, C)``; or shape ``(N,)`` with the probability of the
            second class of a binary task.
        labels: the classes of the columns, in column order, shape ``(C,)``; needed when a class has
            no sample. Default: ``sorted(set(y_true))``. (scikit-learn instead sorts ``labels`` and
            warns when they are not sorted.)

    Returns:
        The mean log loss (>= 0).

    Raises:
        MetricInputError: empty, non-finite or mismatched inputs; probabilities outside [0, 1] or rows
            not summing to 1; fewer than two classes; duplicate ``labels`` or a ``y_true`` label not in
            them; a column count that differs from the number of classes.
    """
    truth, prob = _score_pair(y_true, y_prob)
    classes = np.unique(truth) if labels is None else as_label_set(labels, truth)
    if len(classes) < 2:
        raise MetricInputError(
            f"log_loss needs at least 2 classes, got {classes.tolist()}; pass labels= with every class"
        )
    if prob.ndim == 1 or prob.shape[1] == 1:
        prob = np.column_stack([1 - prob.ravel(), prob.ravel()])
    if prob.shape[1] != len(classes):
        raise MetricInputError(
            f"y_prob has {prob.shape[1]} columns for {len(classes)} classes {classes.tolist()}; "
            "pass labels= naming the class of each column"
        )
    _check_probabilities(prob)
    index = encode_labels(truth, classes)
    if (index < 0).any():
        raise MetricInputError(
            f"y_true holds {truth[index < 0].tolist()[0]!r}, which is not in labels; add it to labels"
        )
    eps = np.finfo(prob.dtype).eps
    picked = np.clip(prob[np.arange(len(truth)), index], eps, 1 - eps).astype(np.float64)
    return float(-np.mean(np.log(picked)))


def _score_pair(y_true: ArrayLike, y_score: ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    truth = as_label_array(y_true, "y_true")
    scores = as_float_array(y_score, "y_score")
    if scores.ndim not in (1, 2):
        raise MetricInputError(f"y_score must be 1-D or 2-D, got shape {scores.shape}")
    check_same_length(truth, scores, ("y_true", "y_score"))
    return truth, scores


def _positives(truth: npt.NDArray[Any], pos_label: Any, *, need_both: bool) -> npt.NDArray[np.bool_]:
    """Boolean mask of positive samples of a binary task, after checking ``pos_label``."""
    classes = np.unique(truth)
    check_label_types(truth, np.asarray([pos_label]), ("y_true", "pos_label"))
    if len(classes) > 2:
        raise MetricInputError(
            f"y_true has {len(classes)} classes but y_score is 1-D; pass an (N, C) score matrix for multi-class"
        )
    positive = truth == pos_label
    if len(classes) == 2 and not positive.any():
        raise MetricInputError(f"pos_label={pos_label!r} is not one of the classes {classes.tolist()}; pass one")
    if not positive.any() or (need_both and positive.all()):
        raise MetricInputError(
            f"y_true has only the class(es) {classes.tolist()} (pos_label={pos_label!r}); the metric needs "
            + ("positive and negative samples" if need_both else "at least one positive sample")
        )
    return positive


def _binary_auc(positive: npt.NDArray[np.bool_], scores: npt.NDArray[Any]) -> float:
    """Mann-Whitney AUC from tie-averaged ranks; ``positive`` must hold both classes."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_scores)) + 1])
    ends = np.append(starts[1:], len(scores))
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks starts+1 .. ends
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _check_probabilities(prob: npt.NDArray[Any]) -> None:
    if prob.min() < 0 or prob.max() > 1:
        raise MetricInputError(
            f"y_prob holds values outside [0, 1] (min {prob.min():.4g}, max {prob.max():.4g}); pass probabilities"
        )
    sums = prob.sum(axis=1)
    if not np.isclose(sums, 1.0, rtol=math.sqrt(np.finfo(prob.dtype).eps), atol=1e-8).all():
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise MetricInputError(f"y_prob rows must sum to 1 (one row sums to {worst:.6g}); apply softmax first")
