"""Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002): cross-entropy scaled by ``(1 - p_t)^γ``.

The factor shrinks the loss of well-classified items so training concentrates on hard ones; γ = 0 and no
α give back plain cross-entropy. `binary_focal_loss` is the sigmoid form of the paper (one independent
binary decision per element, multi-label too); `multiclass_focal_loss` is its softmax form over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from aprender.errors import InvalidArgumentError
from aprender.loss._common import (
    check_class_indices,
    check_class_logits,
    check_non_negative,
    check_reduction,
    check_same_shape,
    check_unit_interval,
    reduce_loss,
    reduce_weighted,
)
from aprender.loss.protocol import Reduction


def binary_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Sigmoid focal loss ``FL = -α_t·(1 - p_t)^γ·log(p_t)`` (Lin et al. 2017, eq. 5).

    With p = σ(x): ``p_t = p·y + (1 - p)·(1 - y)`` and ``α_t = α·y + (1 - α)·(1 - y)``; ``-log(p_t)`` is
    the binary cross-entropy, so soft targets in [0, 1] work too. "mean" averages over all elements (the
    paper normalises by the number of positive anchors: pass "sum" and divide by it).

    Args:
        logits: scores, any shape `(*)`.
        target: labels in [0, 1], shape `(*)` like `logits`.
        alpha: weight of positives in [0, 1] (negatives get 1 - α); None weighs both 1.
        gamma: focusing parameter γ >= 0.
        reduction: "mean", "sum" or "none" (per-element losses, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, alpha, gamma or mismatched shapes.
    """
    _check_focal("binary_focal_loss", reduction, gamma)
    if alpha is not None:
        check_unit_interval("binary_focal_loss", "alpha", alpha)
    check_same_shape("binary_focal_loss", "logits", logits, "target", target)
    ce = -F.logsigmoid(logits) * target - F.logsigmoid(-logits) * (1.0 - target)
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1.0 - prob) * (1.0 - target)
    per_item = ce * (1.0 - p_t).pow(gamma)
    if alpha is not None:
        per_item = per_item * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return reduce_loss(per_item, reduction)


def multiclass_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """Softmax focal loss ``FL = -α_y·(1 - p_y)^γ·log(p_y)`` over C classes (Lin et al. 2017, eq. 5).

    "mean" divides by the number of non-ignored items (α scales items, it does not renormalise); with every
    item ignored it is 0 with zero gradients.

    Args:
        logits: unnormalised scores, shape `(*, C)`.
        target: class indices in [0, C) or `ignore_index`, integer tensor of shape `(*)`.
        alpha: per-class weights, shape `(C,)`; None weighs every class 1.
        gamma: focusing parameter γ >= 0.
        ignore_index: target value whose items count for nothing.
        reduction: "mean", "sum" or "none" (per-item losses, 0 at ignored items, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, gamma, alpha length, shapes or class index.
    """
    _check_focal("multiclass_focal_loss", reduction, gamma)
    check_class_logits("multiclass_focal_loss", logits, target)
    num_classes = logits.shape[-1]
    check_class_indices("multiclass_focal_loss", target, num_classes, ignore_index)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    log_p_y = torch.log_softmax(logits, dim=-1).gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    per_item = -((1.0 - log_p_y.exp()).pow(gamma)) * log_p_y
    if alpha is not None:
        class_weight = torch.as_tensor(alpha, dtype=per_item.dtype, device=per_item.device)
        if class_weight.shape != (num_classes,):
            raise InvalidArgumentError(
                f"multiclass_focal_loss: alpha has shape {tuple(class_weight.shape)}; pass one weight per "
                f"class, shape ({num_classes},)"
            )
        per_item = per_item * class_weight[safe_target]
    return reduce_weighted(per_item, valid.to(per_item.dtype), reduction)


def _check_focal(where: str, reduction: str, gamma: float) -> None:
    check_reduction(where, reduction)
    check_non_negative(where, "gamma", gamma)


@dataclass(frozen=True)
class BinaryFocalLoss:
    """`binary_focal_loss` as a `Loss`: ``loss(logits (*), target (*))``."""

    name: ClassVar[str] = "binary_focal"
    alpha: float | None = 0.25
    gamma: float = 2.0
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        _check_focal("BinaryFocalLoss", self.reduction, self.gamma)
        if self.alpha is not None:
            check_unit_interval("BinaryFocalLoss", "alpha", self.alpha)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `binary_focal_loss`; `pred` holds the logits."""
        return binary_focal_loss(pred, target, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction)


@dataclass(frozen=True)
class MulticlassFocalLoss:
    """`multiclass_focal_loss` as a `Loss`: ``loss(logits (*, C), target (*))``; `alpha` is a tuple of C."""

    name: ClassVar[str] = "multiclass_focal"
    alpha: tuple[float, ...] | None = None
    gamma: float = 2.0
    ignore_index: int = -100
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        _check_focal("MulticlassFocalLoss", self.reduction, self.gamma)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `multiclass_focal_loss`; `pred` holds the logits."""
        return multiclass_focal_loss(
            pred,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
