"""Regression metrics: MSE, MAE, RMSE and the coefficient of determination R².

Inputs of any shape are compared element-wise and pooled (flattened): for 1-D inputs the values
equal scikit-learn's; for multi-output inputs MSE, MAE and RMSE still equal scikit-learn's uniform
average, while R² is the pooled R² of all elements (scikit-learn averages one R² per column).
Reference: Hyndman & Koehler, "Another look at measures of forecast accuracy", International
Journal of Forecasting 22(4), 2006, https://doi.org/10.1016/j.ijforecast.2006.03.001.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from aprender.errors import MetricInputError
from aprender.metrics._arrays import ArrayLike, as_float_array


def mean_squared_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean of ``(y_true - y_pred)²``.

    Args:
        y_true: targets, any shape ``S``.
        y_pred: predictions, shape ``S``.

    Returns:
        The MSE (>= 0).

    Raises:
        MetricInputError: empty, non-finite or differently shaped inputs.
    """
    truth, pred = _pair(y_true, y_pred)
    return float(np.mean((truth - pred) ** 2))


def root_mean_squared_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Square root of :func:`mean_squared_error`, in the unit of the targets.

    Returns:
        The RMSE (>= 0).

    Raises:
        MetricInputError: empty, non-finite or differently shaped inputs.
    """
    return math.sqrt(mean_squared_error(y_true, y_pred))


def mean_absolute_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean of ``|y_true - y_pred|``.

    Args:
        y_true: targets, any shape ``S``.
        y_pred: predictions, shape ``S``.

    Returns:
        The MAE (>= 0).

    Raises:
        MetricInputError: empty, non-finite or differently shaped inputs.
    """
    truth, pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(truth - pred)))


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (1 is perfect; it can be negative).

    Constant targets (``SS_tot == 0``) follow scikit-learn's default ``force_finite=True``: 1.0 when
    the predictions are exact, else 0.0, instead of NaN or -inf.

    Args:
        y_true: targets, any shape ``S`` with at least 2 elements.
        y_pred: predictions, shape ``S``.

    Returns:
        R² (<= 1).

    Raises:
        MetricInputError: empty, non-finite or differently shaped inputs, or fewer than 2 samples.
    """
    truth, pred = _pair(y_true, y_pred)
    if truth.size < 2:
        raise MetricInputError("r2_score needs at least 2 samples (R² is undefined for one); pass more samples")
    ss_res = float(np.sum((truth - pred) ** 2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    truth = as_float_array(y_true, "y_true")
    pred = as_float_array(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise MetricInputError(
            f"y_true has shape {truth.shape} but y_pred has {pred.shape}; pass one prediction per target"
        )
    return truth.astype(np.float64).ravel(), pred.astype(np.float64).ravel()
