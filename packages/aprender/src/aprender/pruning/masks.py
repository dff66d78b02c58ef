"""Pruning masks from importance scores: unstructured, N:M and structured (rows or columns).

Every function takes a score matrix of shape (out_features, in_features), higher meaning more
important, and returns a boolean mask of the same shape where True keeps a weight and False
prunes it. Apply it with ``weight * mask`` or ``weight.masked_fill(~mask, 0)``.

Counts are exact: a ranked set of ``count`` entries loses exactly ``pruned_count(sparsity, count)``
of them. Ties are broken deterministically: among equal scores the entry with the lower
(row-major) index is pruned first.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from aprender.errors import PruningError
from aprender.pruning._checks import check_fraction, check_nm, check_scores

MaskScope = Literal["tensor", "row"]


def pruned_count(sparsity: float, count: int) -> int:
    """Number of entries to prune so that ``sparsity * count`` is reached without exceeding it.

    The count is ``floor(sparsity * count)``, taken after rounding the product to 6 decimals so
    that float noise does not drop an entry (``0.29 * 100 == 28.999999999999996`` gives 29).
    Every mask in this package prunes exactly this many entries of the set it ranks.

    Args:
        sparsity: Fraction to prune, in [0, 1).
        count: Number of entries ranked together (a tensor, a row, a set of rows or columns).

    Returns:
        The number of entries to prune, in [0, count].

    Raises:
        PruningError: If `sparsity` is outside [0, 1) or `count` is negative.
    """
    check_fraction(sparsity, "sparsity")
    if count < 0:
        raise PruningError(f"count={count} is negative; pass the number of entries ranked together")
    return math.floor(round(sparsity * count, 6))


def mask_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Prune exactly the `count` lowest-scoring entries of a tensor of any shape.

    Args:
        scores: Importance scores, any shape, no NaN.
        count: How many entries to prune, in [0, scores.numel()].

    Returns:
        Boolean keep-mask shaped like `scores`; ties prune the lower row-major index first.

    Raises:
        PruningError: If `count` is outside [0, scores.numel()] or `scores` holds NaN.
    """
    if not 0 <= count <= scores.numel():
        raise PruningError(f"count={count} is outside [0, {scores.numel()}]; prune at most every entry")
    if torch.isnan(scores).any():
        raise PruningError("scores contain NaN; check the weights and calibration statistics for NaN")
    flat = scores.reshape(-1)
    # A stable ascending sort keeps equal scores in index order, so the lower index goes first.
    order = torch.argsort(flat, stable=True)
    keep = torch.ones(flat.shape, dtype=torch.bool, device=scores.device)
    keep[order[:count]] = False
    return keep.reshape(scores.shape)


def unstructured_mask(scores: torch.Tensor, sparsity: float, *, scope: MaskScope = "tensor") -> torch.Tensor:
    """Prune the lowest-scoring individual weights.

    With ``scope="tensor"`` all weights compete and exactly ``pruned_count(sparsity, numel)`` are
    pruned (magnitude pruning, Han et al. 2015, arXiv 1506.02626). With ``scope="row"`` each output
    row loses exactly ``pruned_count(sparsity, in_features)`` weights, as WANDA does (Sun et al.
    2023, arXiv 2306.11695, section 3: comparison group per output).

    Args:
        scores: Importance scores, shape (out_features, in_features).
        sparsity: Fraction of weights to prune, in [0, 1).
        scope: ``"tensor"`` (one ranking) or ``"row"`` (one ranking per output row).

    Returns:
        Boolean keep-mask, shape (out_features, in_features).

    Raises:
        PruningError: On a bad sparsity, a non-2-D score matrix, NaN scores or an unknown scope.
    """
    check_scores(scores)
    if scope == "tensor":
        return mask_lowest(scores, pruned_count(sparsity, scores.numel()))
    if scope == "row":
        k = pruned_count(sparsity, scores.shape[1])
        order = torch.argsort(scores, dim=1, stable=True)
        keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        return keep.scatter_(1, order[:, :k], False)
    raise PruningError(f"scope={scope!r} is unknown; pass 'tensor' or 'row'")


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` highest-scoring weights in every group of `m` consecutive inputs (N:M sparsity).

    Groups run along the input dimension: columns ``[g*m, (g+1)*m)`` of each row. 2:4 is the
    pattern NVIDIA sparse tensor cores accelerate (Mishra et al. 2021, arXiv 2104.08378).

    Args:
        scores: Importance scores, shape (out_features, in_features); `m` must divide in_features.
        n: Weights kept per group, 1 <= n <= m.
        m: Group size.

    Returns:
        Boolean keep-mask, shape (out_features, in_features), with exactly `n` True per group.

    Raises:
        PruningError: On a bad pattern, a non-2-D score matrix or NaN scores.
    """
    check_scores(scores)
    check_nm(n, m, scores.shape[1])
    return nm_keep(scores, n, m)


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``nm_mask`` without argument checks, for callers that validated once (SparseGPT's column loop)."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=-1, stable=True)
    keep = torch.ones(groups.shape, dtype=torch.bool, device=scores.device)
    return keep.scatter_(-1, order[..., : m - n], False).reshape(rows, cols)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune whole output rows (output neurons) with the lowest summed score.

    Exactly ``pruned_count(sparsity, out_features)`` rows are pruned. With L1 magnitude scores the
    row score is the row's L1 norm (Li et al. 2017, arXiv 1608.08710, filter pruning).

    Args:
        scores: Importance scores, shape (out_features, in_features).
        sparsity: Fraction of rows to prune, in [0, 1).

    Returns:
        Boolean keep-mask, shape (out_features, in_features), constant along each row.

    Raises:
        PruningError: On a bad sparsity, a non-2-D score matrix or NaN scores.
    """
    check_scores(scores)
    keep_rows = mask_lowest(scores.sum(dim=1), pruned_count(sparsity, scores.shape[0]))
    return keep_rows[:, None].expand(scores.shape).clone()


def column_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune whole input columns (input channels) with the lowest summed score.

    Exactly ``pruned_count(sparsity, in_features)`` columns are pruned; a pruned column removes
    one input feature from the layer.

    Args:
        scores: Importance scores, shape (out_features, in_features).
        sparsity: Fraction of columns to prune, in [0, 1).

    Returns:
        Boolean keep-mask, shape (out_features, in_features), constant along each column.

    Raises:
        PruningError: On a bad sparsity, a non-2-D score matrix or NaN scores.
    """
    check_scores(scores)
    keep_cols = mask_lowest(scores.sum(dim=0), pruned_count(sparsity, scores.shape[1]))
    return keep_cols[None, :].expand(scores.shape).clone()
