"""Batch-contrastive losses with in-batch negatives: InfoNCE and NT-Xent.

Both treat one embedding as the right "class" among the batch: a cross-entropy over similarity logits
divided by a temperature, whose other entries are the negatives. Rows of the inputs are paired: row i of
one view is the positive of row i of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from aprender.errors import InvalidArgumentError
from aprender.loss._common import check_positive, check_reduction, check_same_shape, reduce_loss
from aprender.loss.protocol import Reduction


def info_nce_loss(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float = 0.07,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    """InfoNCE (van den Oord et al. 2018, https://arxiv.org/abs/1807.03748, eq. 4) with in-batch negatives.

    ``l_i = -log( exp(s_ii / τ) / Σ_j exp(s_ij / τ) )`` with ``s_ij = q_i·k_j``: key i is the positive of
    query i and the other N - 1 keys are its negatives. With `normalize` the embeddings are L2-normalised
    first, so s is the cosine similarity (the usual choice, as in CLIP's image-to-text half).

    Args:
        query: shape `(N, D)`.
        key: shape `(N, D)`, row i the positive of query row i.
        temperature: τ > 0.
        normalize: L2-normalise query and key rows before the dot products.
        reduction: "mean", "sum" or "none" (per-query losses, shape `(N,)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, temperature or shapes.
    """
    check_reduction("info_nce_loss", reduction)
    check_positive("info_nce_loss", "temperature", temperature)
    _check_views("info_nce_loss", "query", query, "key", key)
    if normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    logits = query @ key.T / temperature
    return reduce_loss(torch.logsumexp(logits, dim=-1) - logits.diagonal(), reduction)


def nt_xent_loss(z1: Tensor, z2: Tensor, *, temperature: float = 0.5, reduction: Reduction = "mean") -> Tensor:
    """NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, arXiv 2002.05709).

    The 2N embeddings of two augmented views are L2-normalised; each one's positive is its counterpart in
    the other view and its negatives are the 2(N - 1) remaining embeddings (itself excluded):
    ``l_i = -log( exp(sim(z_i, z_pos(i)) / τ) / Σ_{k≠i} exp(sim(z_i, z_k) / τ) )``. "mean" is the paper's
    ``1/(2N) Σ_i l_i``.

    Args:
        z1: first view, shape `(N, D)`.
        z2: second view, shape `(N, D)`, row i the same example as `z1` row i.
        temperature: τ > 0.
        reduction: "mean", "sum" or "none" (per-embedding losses, shape `(2N,)`: z1's rows then z2's).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, temperature or shapes.
    """
    check_reduction("nt_xent_loss", reduction)
    check_positive("nt_xent_loss", "temperature", temperature)
    _check_views("nt_xent_loss", "z1", z1, "z2", z2)
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    positive = torch.arange(2 * n, device=z.device).roll(n)
    per_item = torch.logsumexp(logits, dim=-1) - logits[torch.arange(2 * n, device=z.device), positive]
    return reduce_loss(per_item, reduction)


def _check_views(where: str, a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.dim() != 2:
        raise InvalidArgumentError(f"{where}: {a_name} has shape {tuple(a.shape)}; pass a (N, D) batch of embeddings")
    check_same_shape(where, a_name, a, b_name, b)


@dataclass(frozen=True)
class InfoNCELoss:
    """`info_nce_loss` as a `Loss`: ``loss(query (N, D), key (N, D))``."""

    name: ClassVar[str] = "info_nce"
    temperature: float = 0.07
    normalize: bool = True
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("InfoNCELoss", self.reduction)
        check_positive("InfoNCELoss", "temperature", self.temperature)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `info_nce_loss`; `pred` holds the queries, `target` their positive keys."""
        return info_nce_loss(
            pred, target, temperature=self.temperature, normalize=self.normalize, reduction=self.reduction
        )


@dataclass(frozen=True)
class NTXentLoss:
    """`nt_xent_loss` as a `Loss`: ``loss(z1 (N, D), z2 (N, D))``, the two views' embeddings."""

    name: ClassVar[str] = "nt_xent"
    temperature: float = 0.5
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("NTXentLoss", self.reduction)
        check_positive("NTXentLoss", "temperature", self.temperature)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `nt_xent_loss`; `pred` holds the first view, `target` the second."""
        return nt_xent_loss(pred, target, temperature=self.temperature, reduction=self.reduction)
