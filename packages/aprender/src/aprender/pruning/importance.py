"""Importance scores for the weights of a linear layer: magnitude (L1, L2) and WANDA.

Weights are (out_features, in_features), as in ``nn.Linear``; every score has the same shape and
a higher score means a more important weight. Scores are float32 (float64 for float64 weights)
so that half-precision weights rank without ties from rounding.
"""

from __future__ import annotations

from typing import Literal

import torch

from aprender.errors import PruningError
from aprender.pruning._checks import check_matrix

MagnitudeNorm = Literal["l1", "l2"]


def _score_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def magnitude_scores(weight: torch.Tensor, norm: MagnitudeNorm = "l1") -> torch.Tensor:
    """Magnitude importance: ``|W|`` (L1) or ``W²`` (L2), Han et al. 2015, arXiv 1506.02626.

    Per weight both give the same ranking, so unstructured and N:M masks agree. They differ once
    scores are summed over a row or column (``row_mask``, ``column_mask``): L1 ranks rows by their
    L1 norm, L2 by their squared L2 norm, which favours rows holding a few large weights.

    Args:
        weight: Weight matrix, shape (out_features, in_features).
        norm: ``"l1"`` for ``|W|`` or ``"l2"`` for ``W²``.

    Returns:
        Scores, shape (out_features, in_features).

    Raises:
        PruningError: If `weight` is not a 2-D float matrix or `norm` is unknown.
    """
    check_matrix(weight, "weight")
    w = weight.detach().to(_score_dtype(weight))
    if norm == "l1":
        return w.abs()
    if norm == "l2":
        return w.square()
    raise PruningError(f"norm={norm!r} is unknown; pass 'l1' or 'l2'")


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """WANDA importance ``|W_ij| · ‖X_j‖₂``: Sun et al. 2023, arXiv 2306.11695, equation 1.

    ``‖X_j‖₂`` is the L2 norm of input channel j over all calibration tokens, the square root of
    `input_sq_sum` (``CalibrationCollector`` gives it as ``LayerStats.sq_sum``). Any positive
    rescaling of `input_sq_sum` (a mean instead of a sum, as the reference code keeps) scales all
    scores alike and leaves every mask unchanged. WANDA compares weights per output row: use
    ``unstructured_mask(scores, sparsity, scope="row")`` or ``nm_mask``.

    Args:
        weight: Weight matrix, shape (out_features, in_features).
        input_sq_sum: Per-input-channel sum of squared activations, shape (in_features,), >= 0.

    Returns:
        Scores, shape (out_features, in_features).

    Raises:
        PruningError: On a non-2-D weight, a statistic of the wrong shape, or negative/NaN entries.
    """
    check_matrix(weight, "weight")
    if input_sq_sum.shape != (weight.shape[1],):
        raise PruningError(
            f"input_sq_sum has shape {tuple(input_sq_sum.shape)} but weight has in_features={weight.shape[1]}; "
            "pass the statistics collected for this layer"
        )
    dtype = _score_dtype(weight)
    sq = input_sq_sum.detach().to(device=weight.device, dtype=dtype)
    if not bool((sq >= 0).all()):
        raise PruningError("input_sq_sum has negative or NaN entries; pass sums of squared activations")
    return weight.detach().to(dtype).abs() * sq.sqrt()[None, :]
