"""Classification losses on logits: cross-entropy over class indices and binary cross-entropy.

Class scores sit on the LAST dimension, `(*, C)`, the layout of a language model's `(B, T, V)` output
(torch's `F.cross_entropy` wants the classes on dimension 1 instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from aprender.loss._common import (
    check_class_indices,
    check_class_logits,
    check_reduction,
    check_same_shape,
    check_unit_interval,
    reduce_loss,
    reduce_weighted,
)
from aprender.loss.protocol import Reduction


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Softmax cross-entropy against class indices, with ignored items, label smoothing and item weights.

    Per item ``l = (1 - ε)·(-log p_y) + ε·mean_c(-log p_c)`` (Szegedy et al. 2016, arXiv 1512.00567,
    section 7, with ε = `label_smoothing`). With per-item weights `w` (0 at ignored items), "mean" is the
    weighted mean ``Σ w·l / Σ w``; without weights it is the mean over the non-ignored items, as torch.
    This is torch's convention for class weights: a per-item weight ``w_i = class_weight[y_i]`` gives
    ``F.cross_entropy(..., weight=class_weight)`` when ε = 0. With every item ignored (or every weight 0)
    "mean" is 0 with zero gradients rather than torch's NaN.

    Args:
        logits: unnormalised scores, shape `(*, C)`.
        target: class indices in [0, C) or `ignore_index`, integer tensor of shape `(*)`.
        weight: optional per-item weights >= 0 (say, per token), shape `(*)`.
        ignore_index: target value whose items count for nothing.
        label_smoothing: ε in [0, 1].
        reduction: "mean", "sum" or "none" (per-item losses times weights, 0 at ignored items, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, label_smoothing, shapes, or class index.
    """
    check_reduction("cross_entropy", reduction)
    check_unit_interval("cross_entropy", "label_smoothing", label_smoothing)
    check_class_logits("cross_entropy", logits, target)
    check_class_indices("cross_entropy", target, logits.shape[-1], ignore_index)
    valid = target != ignore_index
    log_probs = torch.log_softmax(logits, dim=-1)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    per_item = -log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        per_item = (1.0 - label_smoothing) * per_item - label_smoothing * log_probs.mean(dim=-1)
    item_weight = valid.to(per_item.dtype)
    if weight is not None:
        check_same_shape("cross_entropy", "weight", weight, "target", target)
        item_weight = item_weight * weight.to(per_item.dtype)
    return reduce_weighted(per_item, item_weight, reduction)


def binary_cross_entropy_with_logits(
    logits: Tensor,
    target: Tensor,
    *,
    pos_weight: Tensor | float | Sequence[float] | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Binary cross-entropy on logits, ``-[p·y·log σ(x) + (1 - y)·log(1 - σ(x))]`` with p = `pos_weight`.

    Computed with log-sigmoid, so large |x| neither overflows nor loses precision. `pos_weight` > 1 raises
    recall on positives (per class when it has shape `(C,)`: it broadcasts against the last dimension).

    Args:
        logits: scores, any shape `(*)`.
        target: probabilities in [0, 1] (hard 0/1 labels or soft ones), shape `(*)` like `logits`.
        pos_weight: weight of the positive term: a scalar, or per class a sequence or tensor broadcastable
            to `(*)` (shape `(C,)` for the last dimension).
        reduction: "mean", "sum" or "none" (per-element losses, shape `(*)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction or mismatched shapes.
    """
    check_reduction("binary_cross_entropy_with_logits", reduction)
    check_same_shape("binary_cross_entropy_with_logits", "logits", logits, "target", target)
    positive = -F.logsigmoid(logits) * target
    if pos_weight is not None:
        positive = positive * torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per_item = positive - F.logsigmoid(-logits) * (1.0 - target)
    return reduce_loss(per_item, reduction)


@dataclass(frozen=True)
class CrossEntropyLoss:
    """`cross_entropy` as a `Loss`: ``loss(logits (*, C), target (*), weight=None)``.

    `weight` (per-item weights, shape `(*)`) is passed at call time because it belongs to the batch.
    """

    name: ClassVar[str] = "cross_entropy"
    ignore_index: int = -100
    label_smoothing: float = 0.0
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("CrossEntropyLoss", self.reduction)
        check_unit_interval("CrossEntropyLoss", "label_smoothing", self.label_smoothing)

    def __call__(self, pred: Tensor, target: Tensor, *, weight: Tensor | None = None) -> Tensor:
        """See `cross_entropy`; `pred` holds the logits."""
        return cross_entropy(
            pred,
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )


@dataclass(frozen=True)
class BCEWithLogitsLoss:
    """`binary_cross_entropy_with_logits` as a `Loss`: ``loss(logits (*), target (*))``.

    `pos_weight` is a float, or a tuple of per-class floats matching the last dimension.
    """

    name: ClassVar[str] = "bce_with_logits"
    pos_weight: float | tuple[float, ...] | None = None
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("BCEWithLogitsLoss", self.reduction)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `binary_cross_entropy_with_logits`; `pred` holds the logits."""
        return binary_cross_entropy_with_logits(pred, target, pos_weight=self.pos_weight, reduction=self.reduction)
