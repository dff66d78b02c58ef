"""Margin losses on embedding pairs and triplets: pairwise contrastive, triplet margin, cosine embedding.

The functions take the embeddings separately. The `Loss` classes take one `pred` tensor so they fit
``loss(pred, target)``: for pairs `pred` stacks both sides, shape `(N, 2, D)`, and `target` holds the pair
labels; for triplets `pred` holds the anchors `(N, D)` and `target` stacks positives and negatives,
shape `(N, 2, D)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from aprender.errors import InvalidArgumentError
from aprender.loss._common import check_non_negative, check_positive, check_reduction, check_same_shape, reduce_loss
from aprender.loss.protocol import Reduction

# torch.nn.functional.cosine_embedding_loss adds this to each squared norm, so zero vectors give cos = 0.
_COSINE_EPS = 1e-12


def pairwise_contrastive_loss(
    x1: Tensor, x2: Tensor, similar: Tensor, *, margin: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """Contrastive loss of Hadsell, Chopra and LeCun 2006, "Dimensionality Reduction by Learning an Invariant
    Mapping", https://doi.org/10.1109/CVPR.2006.100 (eq. 4).

    With the Euclidean distance ``d = ‖x1 - x2‖₂``: similar pairs cost ``½d²`` and dissimilar pairs
    ``½·max(0, margin - d)²``. `similar` = 1 is the paper's Y = 0 (and 0 its Y = 1).

    Args:
        x1: first embeddings, shape `(N, D)`.
        x2: second embeddings, shape `(N, D)`.
        similar: 1 (or True) for similar pairs, 0 (or False) for dissimilar ones, shape `(N,)`.
        margin: dissimilar pairs farther apart than this cost nothing, >= 0.
        reduction: "mean", "sum" or "none" (per-pair losses, shape `(N,)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, margin, shapes or a label other than 0/1.
    """
    check_reduction("pairwise_contrastive_loss", reduction)
    check_non_negative("pairwise_contrastive_loss", "margin", margin)
    _check_pairs("pairwise_contrastive_loss", x1, x2, similar, allowed=(0, 1))
    distance = torch.linalg.vector_norm(x1 - x2, dim=-1)
    is_similar = similar.to(distance.dtype)
    per_pair = 0.5 * is_similar * distance.square()
    per_pair = per_pair + 0.5 * (1.0 - is_similar) * (margin - distance).clamp_min(0).square()
    return reduce_loss(per_pair, reduction)


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Triplet margin loss ``max(0, margin + d(a, p) - d(a, n))`` (Schroff et al. 2015, FaceNet,
    https://arxiv.org/abs/1503.03832), with ``d(x, y) = ‖x - y + eps‖_p`` as in torch.

    With `swap` the negative distance is ``min(d(a, n), d(p, n))``, the distance swap of Balntas et al.
    2016, https://www.bmva.org/bmvc/2016/papers/paper119/ : the harder of the two negatives counts.

    Args:
        anchor: shape `(N, D)`.
        positive: shape `(N, D)`, same identity as the anchor.
        negative: shape `(N, D)`, another identity.
        margin: required gap between negative and positive distances, > 0.
        p: order of the norm, > 0.
        eps: added to each difference (keeps the norm's gradient finite at zero), >= 0.
        swap: use the distance swap.
        reduction: "mean", "sum" or "none" (per-triplet losses, shape `(N,)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, margin, p, eps or shapes.
    """
    where = "triplet_margin_loss"
    check_reduction(where, reduction)
    check_positive(where, "margin", margin)
    check_positive(where, "p", p)
    check_non_negative(where, "eps", eps)
    _check_embeddings(where, "anchor", anchor)
    check_same_shape(where, "anchor", anchor, "positive", positive)
    check_same_shape(where, "anchor", anchor, "negative", negative)
    d_positive = torch.linalg.vector_norm(anchor - positive + eps, ord=p, dim=-1)
    d_negative = torch.linalg.vector_norm(anchor - negative + eps, ord=p, dim=-1)
    if swap:
        d_negative = torch.minimum(d_negative, torch.linalg.vector_norm(positive - negative + eps, ord=p, dim=-1))
    return reduce_loss((margin + d_positive - d_negative).clamp_min(0), reduction)


def cosine_embedding_loss(
    x1: Tensor, x2: Tensor, label: Tensor, *, margin: float = 0.0, reduction: Reduction = "mean"
) -> Tensor:
    """Cosine embedding loss: ``1 - cos(x1, x2)`` for label 1, ``max(0, cos(x1, x2) - margin)`` for -1.

    Pulls similar pairs to the same direction and pushes dissimilar ones below a cosine of `margin`
    (the loss of ``torch.nn.CosineEmbeddingLoss``; cos uses 1e-12 added to each squared norm).

    Args:
        x1: first embeddings, shape `(N, D)`.
        x2: second embeddings, shape `(N, D)`.
        label: 1 for similar pairs, -1 for dissimilar ones, shape `(N,)`.
        margin: cosine under which dissimilar pairs cost nothing, in [-1, 1].
        reduction: "mean", "sum" or "none" (per-pair losses, shape `(N,)`).

    Returns:
        The reduced loss.

    Raises:
        InvalidArgumentError: on a bad reduction, margin, shapes or a label other than 1/-1.
    """
    check_reduction("cosine_embedding_loss", reduction)
    _check_cosine_margin("cosine_embedding_loss", margin)
    _check_pairs("cosine_embedding_loss", x1, x2, label, allowed=(1, -1))
    dot = (x1 * x2).sum(dim=-1)
    norms = ((x1 * x1).sum(dim=-1) + _COSINE_EPS) * ((x2 * x2).sum(dim=-1) + _COSINE_EPS)
    cosine = dot / norms.sqrt()
    per_pair = torch.where(label == 1, 1.0 - cosine, (cosine - margin).clamp_min(0))
    return reduce_loss(per_pair, reduction)


def _check_embeddings(where: str, name: str, x: Tensor) -> None:
    if x.dim() != 2:
        raise InvalidArgumentError(f"{where}: {name} has shape {tuple(x.shape)}; pass a (N, D) batch of embeddings")


def _check_pairs(where: str, x1: Tensor, x2: Tensor, label: Tensor, *, allowed: tuple[int, int]) -> None:
    _check_embeddings(where, "x1", x1)
    check_same_shape(where, "x1", x1, "x2", x2)
    if label.shape != x1.shape[:1]:
        raise InvalidArgumentError(
            f"{where}: labels have shape {tuple(label.shape)}; pass one label per pair, shape ({x1.shape[0]},)"
        )
    if not bool(((label == allowed[0]) | (label == allowed[1])).all()):
        raise InvalidArgumentError(f"{where}: labels must be {allowed[0]} or {allowed[1]}; fix the pair labels")


def _check_cosine_margin(where: str, margin: float) -> None:
    if not -1.0 <= margin <= 1.0:
        raise InvalidArgumentError(f"{where}: margin={margin!r} must lie in [-1, 1]")


def _split_pairs(where: str, name: str, stacked: Tensor) -> tuple[Tensor, Tensor]:
    if stacked.dim() != 3 or stacked.shape[1] != 2:
        raise InvalidArgumentError(
            f"{where}: {name} has shape {tuple(stacked.shape)}; pass the two sides stacked on dim 1, shape (N, 2, D)"
        )
    return stacked[:, 0], stacked[:, 1]


@dataclass(frozen=True)
class PairwiseContrastiveLoss:
    """`pairwise_contrastive_loss` as a `Loss`: ``loss(pairs (N, 2, D), similar (N,))``."""

    name: ClassVar[str] = "pairwise_contrastive"
    margin: float = 1.0
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("PairwiseContrastiveLoss", self.reduction)
        check_non_negative("PairwiseContrastiveLoss", "margin", self.margin)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `pairwise_contrastive_loss`; `pred` stacks the pairs, `target` says which are similar."""
        x1, x2 = _split_pairs("PairwiseContrastiveLoss", "pred", pred)
        return pairwise_contrastive_loss(x1, x2, target, margin=self.margin, reduction=self.reduction)


@dataclass(frozen=True)
class TripletMarginLoss:
    """`triplet_margin_loss` as a `Loss`: ``loss(anchor (N, D), positive_and_negative (N, 2, D))``."""

    name: ClassVar[str] = "triplet_margin"
    margin: float = 1.0
    p: float = 2.0
    eps: float = 1e-6
    swap: bool = False
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("TripletMarginLoss", self.reduction)
        check_positive("TripletMarginLoss", "margin", self.margin)
        check_positive("TripletMarginLoss", "p", self.p)
        check_non_negative("TripletMarginLoss", "eps", self.eps)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `triplet_margin_loss`; `pred` holds the anchors, `target` stacks positives and negatives."""
        positive, negative = _split_pairs("TripletMarginLoss", "target", target)
        return triplet_margin_loss(
            pred,
            positive,
            negative,
            margin=self.margin,
            p=self.p,
            eps=self.eps,
            swap=self.swap,
            reduction=self.reduction,
        )


@dataclass(frozen=True)
class CosineEmbeddingLoss:
    """`cosine_embedding_loss` as a `Loss`: ``loss(pairs (N, 2, D), label (N,))`` with labels 1 / -1."""

    name: ClassVar[str] = "cosine_embedding"
    margin: float = 0.0
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_reduction("CosineEmbeddingLoss", self.reduction)
        _check_cosine_margin("CosineEmbeddingLoss", self.margin)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """See `cosine_embedding_loss`; `pred` stacks the pairs, `target` holds the 1 / -1 labels."""
        x1, x2 = _split_pairs("CosineEmbeddingLoss", "pred", pred)
        return cosine_embedding_loss(x1, x2, target, margin=self.margin, reduction=self.reduction)
