"""SparseGPT: one-shot pruning with OBS weight updates, Frantar & Alistarh 2023, arXiv 2301.00774.

For a linear layer with weight W (out, in) and calibration inputs X (in, N) the layer-wise loss
is ``‖WX − ŴX‖²``, whose Hessian per output row is ``H = 2XXᵀ`` (in, in). Columns are processed
left to right. Pruning weight q of every row costs ``w_q² / [H_F⁻¹]_qq`` and the optimal update of
the not-yet-processed columns F is ``−w_q / [H_F⁻¹]_qq · (H_F⁻¹)_{:,q}`` (the OBS step, paper
equation 3). All the ``H_F⁻¹`` rows needed are rows of the upper Cholesky factor U of ``H⁻¹``
(section 3.3), so one factorisation serves every step.

Columns go in blocks of `blocksize`: inside a block updates are applied column by column, and the
accumulated error reaches the columns right of the block in one matrix product (lazy batch
updates). The mask is chosen adaptively: per block for unstructured sparsity (the lowest
``w²/U_qq²`` across the block), per group of M columns for N:M, always on the already-updated
weights (algorithm 1 of the paper).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from aprender.errors import PruningError
from aprender.pruning._checks import check_fraction, check_matrix, check_nm
from aprender.pruning.masks import mask_lowest, nm_keep, pruned_count


class SparseGPTResult(NamedTuple):
    """The pruned layer: `weight` is zero wherever `mask` is False.

    Attributes:
        weight: Pruned and updated weight, shape (out_features, in_features), the input's dtype.
            Columns of dead inputs (zero Hessian diagonal) are zero as well, kept or not.
        mask: Boolean keep-mask, shape (out_features, in_features).
    """

    weight: torch.Tensor
    mask: torch.Tensor


def _check_arguments(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None,
    nm: tuple[int, int] | None,
    blocksize: int,
    percdamp: float,
) -> None:
    check_matrix(weight, "weight")
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise PruningError(
            f"hessian has shape {tuple(hessian.shape)} but weight has in_features={cols}; "
            f"pass the ({cols}, {cols}) statistic collected for this layer"
        )
    if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(hessian).all())):
        raise PruningError("weight or hessian contains NaN or inf; check the layer and its calibration statistics")
    if (sparsity is None) == (nm is None):
        raise PruningError("pass exactly one of sparsity= (unstructured) and nm=(n, m) (N:M) to sparsegpt_prune")
    if sparsity is not None:
        check_fraction(sparsity, "sparsity")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise PruningError(f"blocksize={blocksize!r} must be a positive integer; the paper uses 128")
    if nm is not None:
        check_nm(nm[0], nm[1], cols)
        if blocksize % nm[1] != 0:
            raise PruningError(f"blocksize={blocksize} is not a multiple of M={nm[1]}; pick a multiple")
    if not percdamp >= 0:
        raise PruningError(f"percdamp={percdamp!r} must be >= 0; the paper uses 0.01")


def _inverse_hessian_cholesky(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of ``(H + λI)⁻¹`` with ``λ = percdamp · mean(diag H)``.

    Dead inputs (zero diagonal: the channel was always zero) get a unit diagonal and their weight
    column is zeroed in place, as the reference implementation does; they carry no signal.
    """
    h = hessian.detach().to(device=weight.device, dtype=torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    torch.diagonal(h).add_(percdamp * torch.diagonal(h).mean())
    inverse = torch.cholesky_inverse(_cholesky(h, upper=False))
    return _cholesky(inverse, upper=True).to(weight.dtype)


def _cholesky(matrix: torch.Tensor, *, upper: bool) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix, upper=upper)
    if int(info) != 0:
        raise PruningError("hessian plus damping is not positive definite; raise percdamp or add calibration samples")
    return factor


def _prune_block(
    w1: torch.Tensor, u1: torch.Tensor, keep1: torch.Tensor, count: int | None, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Prune one block of columns in place; return its scaled errors ``(w − q) / U_qq``, shape (out, B).

    Exactly `count` weights of the block are pruned (unstructured), or the N:M groups are chosen
    when their first column comes up, on the weights updated so far.
    """
    d = torch.diagonal(u1)
    if count is not None:
        keep1.copy_(mask_lowest(w1.square() / d.square(), count))
    err1 = torch.zeros_like(w1)
    for i in range(w1.shape[1]):
        if nm is not None and i % nm[1] == 0:
            group = slice(i, i + nm[1])
            keep1[:, group] = nm_keep(w1[:, group].square() / d[group].square(), nm[0], nm[1])
        w = w1[:, i]
        q = torch.where(keep1[:, i], w, torch.zeros_like(w))
        err = (w - q) / d[i]
        w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
        w1[:, i] = q  # the update above leaves q up to rounding; store it exactly
        err1[:, i] = err
    return err1


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> SparseGPTResult:
    """Prune a linear layer with SparseGPT, updating the kept weights to reconstruct ``WX``.

    Unstructured sparsity prunes exactly ``pruned_count(sparsity, out · in)`` weights in total:
    the block ending at column c brings the running total to ``pruned_count(sparsity, out · c)``,
    so blocks share the count in proportion to their width. Ties prune the lower index first.
    Work runs in float32 (float64 for float64 weights) on the weight's device; the Cholesky
    factorisation runs in float64.

    Args:
        weight: Weight matrix, shape (out_features, in_features).
        hessian: ``XXᵀ`` summed over calibration tokens, shape (in_features, in_features)
            (``LayerStats.hessian``). Any positive scale gives the same result, so ``2XXᵀ/N`` works too.
        sparsity: Fraction to prune, in [0, 1); exclusive with `nm`.
        nm: ``(n, m)``: keep n of every m consecutive inputs (2:4, 4:8); exclusive with `sparsity`.
        blocksize: Columns per lazy-update block; for N:M a multiple of m.
        percdamp: Dampening λ as a fraction of ``mean(diag H)``, added to the diagonal.

    Returns:
        ``SparseGPTResult(weight, mask)``; both shape (out_features, in_features).

    Raises:
        PruningError: On shape mismatches, bad sparsity/pattern/blocksize/percdamp, or a Hessian
            that is not positive definite after damping.
    """
    _check_arguments(weight, hessian, sparsity, nm, blocksize, percdamp)
    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(work_dtype).clone()
    u = _inverse_hessian_cholesky(hessian, w, percdamp)
    keep = torch.ones(w.shape, dtype=torch.bool, device=w.device)
    rows, cols = w.shape
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = None if sparsity is None else pruned_count(sparsity, rows * i2) - pruned_count(sparsity, rows * i1)
        w1 = w[:, i1:i2]  # a view: the block is updated in place
        err1 = _prune_block(w1, u[i1:i2, i1:i2], keep[:, i1:i2], count, nm)
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return SparseGPTResult(w.to(weight.dtype), keep)
