"""Sparsification of task vectors (``model - base``) before they are combined, as mergekit's ``sparsify.py``.

- ``magnitude``: keep the largest ``density`` fraction by absolute value (TIES, https://arxiv.org/abs/2306.01708).
- ``random``: keep each value with probability ``density`` (DARE, https://arxiv.org/abs/2311.03099).
- ``magnitude_outliers``: drop the largest ``gamma`` fraction, then the smallest, keeping ``density``
  (Model Breadcrumbs, https://arxiv.org/abs/2312.06795).
- ``della_magprune``: keep each value with a probability that grows with its magnitude rank in its row, from
  ``density - epsilon`` to ``density + epsilon`` (DELLA, https://arxiv.org/abs/2406.11617).

With ``rescale`` the kept values are scaled so the tensor keeps its L1 norm (mergekit's ``RescaleNorm.l1``; for
DARE this is the paper's ``1 / density`` in expectation, exact per tensor).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from entrenar.errors import MergeError

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]

_RESCALE_EPS = 1e-7
"""Below this L1 norm (before or after masking) the mask is applied without rescaling, as in mergekit."""


def rescale_l1(tensor: Tensor, kept: Tensor) -> Tensor:
    """``tensor * kept`` scaled to the L1 norm of `tensor` (left unscaled when either norm is below 1e-7)."""
    masked = tensor * kept
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return masked
    return masked * (before / after)


def _apply(tensor: Tensor, kept: Tensor, rescale: bool) -> Tensor:
    return rescale_l1(tensor, kept) if rescale else tensor * kept


def _bernoulli(probabilities: Tensor | float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """A 0/1 mask shaped like `like`, each entry 1 with its probability, drawn from `generator` only."""
    if generator is None:
        raise ValueError("random sparsification needs a torch.Generator")
    # Drawn on the generator's device, so a CPU generator serves a merge on any device.
    uniform = torch.rand(like.shape, generator=generator, device=generator.device).to(like.device)
    return (uniform < probabilities).to(like.dtype)


def prune_magnitude(tensor: Tensor, density: float, *, rescale: bool = False) -> Tensor:
    """Keep the ``max(1, int(density * numel))`` values of largest magnitude (all at density >= 1, none at <= 0)."""
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    count = max(1, int(density * tensor.numel()))
    kept = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    kept[torch.argsort(tensor.abs().reshape(-1), descending=True)[:count]] = 1
    return _apply(tensor, kept.reshape(tensor.shape), rescale)


def prune_magnitude_outliers(tensor: Tensor, density: float, gamma: float, *, rescale: bool = False) -> Tensor:
    """Drop the ``int(gamma * numel)`` largest values (fewer if needed), then the smallest, keeping
    ``int(density * numel)`` values."""
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    numel = tensor.numel()
    keep = int(density * numel)
    drop_small = max(0, numel - keep - int(gamma * numel))
    ascending = torch.argsort(tensor.abs().reshape(-1))
    kept = torch.zeros(numel, dtype=tensor.dtype, device=tensor.device)
    kept[ascending[drop_small : drop_small + keep]] = 1
    return _apply(tensor, kept.reshape(tensor.shape), rescale)


def prune_random(
    tensor: Tensor, density: float, *, rescale: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Keep each value with probability `density` (DARE's drop)."""
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    return _apply(tensor, _bernoulli(density, tensor, generator), rescale)


def prune_della(
    tensor: Tensor,
    density: float,
    epsilon: float,
    *,
    rescale: bool = False,
    generator: torch.Generator | None = None,
    name: str = "",
) -> Tensor:
    """Keep each value with probability ``density - epsilon + 2 * epsilon * r``, ``r`` its magnitude rank along
    dim 1 (a 1-D tensor is one row) scaled to [0, 1]; the mean probability is `density`.

    Raises:
        MergeError: ``density - epsilon`` or ``density + epsilon`` outside (0, 1).
    """
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise MergeError(
            f"{name}: della needs density - epsilon and density + epsilon in (0, 1), got density {density} and "
            f"epsilon {epsilon}; lower epsilon"
        )
    rows = tensor.unsqueeze(0) if tensor.dim() < 2 else tensor
    length = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1)
    positions = torch.arange(length, dtype=tensor.dtype, device=tensor.device)
    positions = positions.reshape(1, length, *[1] * (rows.dim() - 2)).expand_as(rows)
    # A row of one value has no rank spread: it keeps the mean probability.
    rank = torch.empty_like(rows).scatter_(1, order, positions) / (length - 1) if length > 1 else 0.5
    probabilities = (density - epsilon) + 2 * epsilon * rank
    kept = _bernoulli(probabilities, rows, generator).reshape(tensor.shape)
    return _apply(tensor, kept, rescale)


def sparsify(
    tensor: Tensor,
    method: Sparsification,
    density: float,
    *,
    gamma: float = 0.0,
    epsilon: float = 0.0,
    rescale: bool = False,
    generator: torch.Generator | None = None,
    name: str = "",
) -> Tensor:
    """Apply the sparsification `method` to `tensor` (see the module docstring); `name` labels errors."""
    if method == "magnitude":
        return prune_magnitude(tensor, density, rescale=rescale)
    if method == "magnitude_outliers":
        return prune_magnitude_outliers(tensor, density, gamma, rescale=rescale)
    if method == "random":
        return prune_random(tensor, density, rescale=rescale, generator=generator)
    return prune_della(tensor, density, epsilon, rescale=rescale, generator=generator, name=name)
