"""Evaluation metrics: classification, scores and probabilities, regression, ranking, language models.

Every function accepts numpy arrays, python lists or torch tensors and returns python floats (or
numpy arrays for per-label results and confusion matrices). torch is never imported by this
package: tensors are recognised because the caller already imported torch. Invalid input raises
:class:`aprender.errors.MetricInputError` (also a ``ValueError``) with a one-line message.

Modules: :mod:`~aprender.metrics.classification` (accuracy, precision/recall/F-beta, confusion
matrix, report), :mod:`~aprender.metrics.probabilistic` (ROC-AUC, average precision, log loss),
:mod:`~aprender.metrics.regression`, :mod:`~aprender.metrics.ranking`,
:mod:`~aprender.metrics.language` (perplexity, token accuracy) and
:mod:`~aprender.metrics.streaming` (accumulators for evaluation loops).
"""

from __future__ import annotations

from aprender.metrics.classification import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    fbeta_score,
    precision_score,
    recall_score,
)
from aprender.metrics.language import perplexity, token_accuracy
from aprender.metrics.probabilistic import average_precision_score, log_loss, roc_auc_score
from aprender.metrics.ranking import dcg_at_k, hit_at_k, map_at_k, mean_reciprocal_rank, ndcg_at_k
from aprender.metrics.regression import mean_absolute_error, mean_squared_error, r2_score, root_mean_squared_error
from aprender.metrics.streaming import MeanAccumulator, PerplexityAccumulator, TokenAccuracyAccumulator

__all__ = [
    "MeanAccumulator",
    "PerplexityAccumulator",
    "TokenAccuracyAccumulator",
    "accuracy_score",
    "average_precision_score",
    "classification_report",
    "confusion_matrix",
    "dcg_at_k",
    "f1_score",
    "fbeta_score",
    "hit_at_k",
    "log_loss",
    "map_at_k",
    "mean_absolute_error",
    "mean_reciprocal_rank",
    "mean_squared_error",
    "ndcg_at_k",
    "perplexity",
    "precision_score",
    "r2_score",
    "recall_score",
    "roc_auc_score",
    "root_mean_squared_error",
    "token_accuracy",
]
