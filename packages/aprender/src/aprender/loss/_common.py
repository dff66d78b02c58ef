"""Argument checks and reductions shared by every loss module (one place, one message style)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aprender.errors import InvalidArgumentError
from aprender.loss.protocol import REDUCTIONS


def check_reduction(where: str, reduction: str) -> None:
    """Raise unless `reduction` is "mean", "sum" or "none"."""
    if reduction not in REDUCTIONS:
        raise InvalidArgumentError(
            f"{where}: reduction={reduction!r} is not one of 'mean', 'sum', 'none'; pass one of them"
        )


def check_positive(where: str, name: str, value: float) -> None:
    """Raise unless `value` is a finite number > 0."""
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{where}: {name}={value!r} must be a finite number > 0")


def check_chunk_size(where: str, chunk_size: int) -> None:
    """Raise unless `chunk_size` is an integer >= 1 (not a bool)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidArgumentError(f"{where}: chunk_size={chunk_size!r} must be an integer >= 1")


def check_non_negative(where: str, name: str, value: float) -> None:
    """Raise unless `value` is a finite number >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"{where}: {name}={value!r} must be a finite number >= 0")


def check_unit_interval(where: str, name: str, value: float) -> None:
    """Raise unless 0 <= `value` <= 1."""
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{where}: {name}={value!r} must lie in [0, 1]")


def check_same_shape(where: str, a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    """Raise unless `a` and `b` have the same shape (losses never broadcast silently)."""
    if a.shape != b.shape:
        raise InvalidArgumentError(
            f"{where}: {a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; "
            "pass tensors of the same shape"
        )


def check_class_logits(where: str, logits: Tensor, target: Tensor) -> None:
    """Raise unless `logits` has shape `(*, C)` for `target` of shape `(*)` (classes on the last dimension)."""
    if logits.dim() < 1 or logits.shape[:-1] != target.shape:
        raise InvalidArgumentError(
            f"{where}: target has shape {tuple(target.shape)} but logits of shape {tuple(logits.shape)} "
            f"need {tuple(logits.shape[:-1])}; put the classes on the last dimension of logits"
        )


def check_class_indices(where: str, target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise unless `target` is an integer tensor of indices in [0, num_classes) or `ignore_index`."""
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise InvalidArgumentError(f"{where}: target has dtype {target.dtype}; pass integer class indices")
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        first = int(target[bad][0])
        raise InvalidArgumentError(
            f"{where}: target holds class index {first} outside [0, {num_classes}) that is not "
            f"ignore_index={ignore_index}; fix the labels or the number of classes"
        )


def reduce_loss(per_item: Tensor, reduction: str) -> Tensor:
    """Apply `reduction` to unweighted per-item losses (the mean of an empty tensor is NaN, as in torch)."""
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    return per_item


def reduce_weighted(per_item: Tensor, weight: Tensor, reduction: str) -> Tensor:
    """Apply `reduction` to ``weight * per_item``; "mean" is the weighted mean ``Σ w·l / Σ w``.

    Ignored items carry weight 0 (their per-item value must be finite). When every weight is 0 the mean
    is 0 with zero gradients, not NaN: a batch whose tokens are all masked (say, all prompt) then leaves
    the parameters untouched instead of poisoning them.

    Args:
        per_item: per-item losses, any shape.
        weight: same shape as `per_item`, >= 0 (0 for ignored items).
        reduction: "mean", "sum" or "none".

    Returns:
        A scalar, or for "none" the weighted per-item tensor (0 at ignored items).
    """
    weighted = per_item * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    total = weight.sum()
    # Dividing by 1 when the total is 0 keeps the gradient finite (torch.where would not: 0/0 in backward).
    return weighted.sum() / torch.where(total > 0, total, torch.ones_like(total))
