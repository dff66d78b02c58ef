"""Argument checks shared by the pruning modules: validate once, at the edge, with one-line messages."""

from __future__ import annotations

import torch

from aprender.errors import PruningError


def check_fraction(value: float, name: str) -> float:
    """Return `value` as a float if it lies in [0, 1).

    Args:
        value: The fraction to check (a sparsity or a per-round pruning rate).
        name: The argument name used in the error message.

    Returns:
        `value` as a Python float.

    Raises:
        PruningError: If `value` is not a real number in [0, 1) (NaN included).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise PruningError(f"{name}={value!r} is outside [0, 1); pass a fraction such as 0.5")
    return float(value)


def check_matrix(tensor: torch.Tensor, name: str) -> None:
    """Require a 2-D floating-point (out_features, in_features) matrix.

    Raises:
        PruningError: If `tensor` is not 2-D or not floating point.
    """
    if tensor.dim() != 2:
        raise PruningError(f"{name} has shape {tuple(tensor.shape)}; pass a 2-D (out_features, in_features) matrix")
    if not tensor.is_floating_point():
        raise PruningError(f"{name} has dtype {tensor.dtype}; pass a floating-point tensor")


def check_scores(scores: torch.Tensor) -> None:
    """Require a 2-D score matrix without NaN (NaN has no place in a ranking).

    Raises:
        PruningError: If `scores` is not a 2-D float matrix or holds NaN.
    """
    check_matrix(scores, "scores")
    if torch.isnan(scores).any():
        raise PruningError("scores contains NaN; check the weights and calibration statistics for NaN")


def check_nm(n: int, m: int, in_features: int) -> None:
    """Require an N:M pattern (keep `n` of every `m` consecutive inputs) that tiles `in_features`.

    Raises:
        PruningError: If not 1 <= n <= m, or m does not divide `in_features`.
    """
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise PruningError(f"N:M pattern {n!r}:{m!r} must use integers; pass e.g. n=2, m=4")
    if not 1 <= n <= m:
        raise PruningError(f"N:M pattern {n}:{m} is invalid; need 1 <= N <= M (N = weights kept per group of M)")
    if in_features % m != 0:
        raise PruningError(f"N:M pattern {n}:{m}: M={m} does not divide in_features={in_features}; pick M dividing it")
