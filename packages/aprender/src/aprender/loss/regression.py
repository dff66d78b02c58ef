"""Regression losses: mean squared error, mean absolute error and Huber.

Each has a function (`mse_loss`) and a frozen-dataclass `Loss` (`MSELoss`) holding its hyperparameters.
Unlike torch, `pred` and `target` must have the same shape: a broadcast here is almost always a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from aprender.loss._common import check_positive, check_reduction, check_same_shape, reduce_loss
from aprender.loss.protocol import Reduction


def mse_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Mean squared error ``(pred - target)²``.

    Args:
        pred: predictions, any shape `(*)`.
        target: targets, shape `(*)` like `pred`.
        reduction: "mean", "sum" or "none" (per-element losses, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction or mismatched shapes.
    """
    check_reduction("mse_loss", reduction)
    check_same_shape("mse_loss", "pred", pred, "target", target)
    return reduce_loss((pred - target).square(), reduction)


def mae_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Mean absolute error ``|pred - target|`` (L1); its gradient at a zero residual is 0.

    Args:
        pred: predictions, any shape `(*)`.
        target: targets, shape `(*)` like `pred`.
        reduction: "mean", "sum" or "none" (per-element losses, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction or mismatched shapes.
    """
    check_reduction("mae_loss", reduction)
    check_same_shape("mae_loss", "pred", pred, "target", target)
    return reduce_loss((pred - target).abs(), reduction)


def huber_loss(pred: Tensor, target: Tensor, *, delta: float = 1.0, reduction: Reduction = "mean") -> Tensor:
    """Huber loss: quadratic ``½r²`` for ``|r| < delta``, linear ``delta·(|r| - ½delta)`` beyond.

    Huber, "Robust Estimation of a Location Parameter", Ann. Math. Statist. 1964,
    https://doi.org/10.1214/aoms/1177703732.

    Args:
        pred: predictions, any shape `(*)`.
        target: targets, shape `(*)` like `pred`.
        delta: where the loss turns from quadratic to linear, > 0.
        reduction: "mean", "sum" or "none" (per-element losses, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, delta or mismatched shapes.
    """
    check_reduction("huber_loss", reduction)
    check_positive("huber_loss", "delta", delta)
    check_same_shape("huber_loss", "pred", pred, "target", target)
    residual = pred - target
    magnitude = residual.abs()
    per_item = torch.where(magnitude < delta, 0.5 * residual.square(), delta * (magnitude - 0.5 * delta))
    return reduce_loss(per_item, reduction)


@dataclass(frozen=True)
class MSELoss:
    """`mse_loss` as a `Loss`: ``loss(pred, target)`` with `pred`, `target` of one shape `(*)`."""

    name: ClassVar[str] = "mse"
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("MSELoss", self.reduction)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `mse_loss`."""
        return mse_loss(pred, target, reduction=self.reduction)


@dataclass(frozen=True)
class MAELoss:
    """`mae_loss` as a `Loss`: ``loss(pred, target)`` with `pred`, `target` of one shape `(*)`."""

    name: ClassVar[str] = "mae"
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("MAELoss", self.reduction)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `mae_loss`."""
        return mae_loss(pred, target, reduction=self.reduction)


@dataclass(frozen=True)
class HuberLoss:
    """`huber_loss` as a `Loss`: ``loss(pred, target)`` with `pred`, `target` of one shape `(*)`."""

    name: ClassVar[str] = "huber"
    delta: float = 1.0
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("HuberLoss", self.reduction)
        check_positive("HuberLoss", "delta", self.delta)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `huber_loss`."""
        return huber_loss(pred, target, delta=self.delta, reduction=self.reduction)
