"""Differentiable losses for training, as torch code: functions and frozen-dataclass `Loss` objects.

Every function takes ``reduction="mean" | "sum" | "none"``; every class holds its hyperparameters, is a
`Loss` (``loss(pred, target) -> Tensor``) and is safe to share across threads. `LOSSES` maps each class's
`name` to the class, e.g. for a config file. `chunked_causal_lm_loss` fuses the LM head with the
cross-entropy to train language models without materialising `(tokens, vocab)` logits;
`chunked_distillation_loss` does the same for distillation divergences (`DIVERGENCES`) against teacher heads
or a sparse top-k teacher cache (`topk_teacher` from logits, `topk_teacher_heads` from teacher heads).

Example:
    >>> import torch
    >>> from aprender.loss import CrossEntropyLoss
    >>> loss = CrossEntropyLoss(label_smoothing=0.1)
    >>> value = loss(torch.zeros(4, 10), torch.tensor([1, 2, 3, -100]))
    >>> round(value.item(), 4)  # uniform logits: log(10) whatever the smoothing
    2.3026
"""

from __future__ import annotations

from aprender.loss.causal_lm import chunked_causal_lm_loss, shift_labels
from aprender.loss.classification import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    binary_cross_entropy_with_logits,
    cross_entropy,
)
from aprender.loss.contrastive import InfoNCELoss, NTXentLoss, info_nce_loss, nt_xent_loss
from aprender.loss.distill import (
    DIVERGENCES,
    DistillationLoss,
    Divergence,
    KLDirection,
    KLDistillationLoss,
    distillation_loss,
    kl_distillation_loss,
)
from aprender.loss.distill_chunked import TeacherHead, chunked_distillation_loss, topk_teacher_heads
from aprender.loss.distill_topk import TopKTeacher, topk_distillation_loss, topk_teacher
from aprender.loss.embedding import (
    CosineEmbeddingLoss,
    PairwiseContrastiveLoss,
    TripletMarginLoss,
    cosine_embedding_loss,
    pairwise_contrastive_loss,
    triplet_margin_loss,
)
from aprender.loss.focal import BinaryFocalLoss, MulticlassFocalLoss, binary_focal_loss, multiclass_focal_loss
from aprender.loss.protocol import Loss, Reduction
from aprender.loss.regression import HuberLoss, MAELoss, MSELoss, huber_loss, mae_loss, mse_loss

LOSSES: dict[str, type[Loss]] = {
    MSELoss.name: MSELoss,
    MAELoss.name: MAELoss,
    HuberLoss.name: HuberLoss,
    CrossEntropyLoss.name: CrossEntropyLoss,
    BCEWithLogitsLoss.name: BCEWithLogitsLoss,
    BinaryFocalLoss.name: BinaryFocalLoss,
    MulticlassFocalLoss.name: MulticlassFocalLoss,
    KLDistillationLoss.name: KLDistillationLoss,
    DistillationLoss.name: DistillationLoss,
    InfoNCELoss.name: InfoNCELoss,
    NTXentLoss.name: NTXentLoss,
    PairwiseContrastiveLoss.name: PairwiseContrastiveLoss,
    TripletMarginLoss.name: TripletMarginLoss,
    CosineEmbeddingLoss.name: CosineEmbeddingLoss,
}
"""Every `Loss` class by its `name`, e.g. ``LOSSES["huber"](delta=0.5)``."""

__all__ = [
    "DIVERGENCES",
    "LOSSES",
    "BCEWithLogitsLoss",
    "BinaryFocalLoss",
    "CosineEmbeddingLoss",
    "CrossEntropyLoss",
    "DistillationLoss",
    "Divergence",
    "HuberLoss",
    "InfoNCELoss",
    "KLDirection",
    "KLDistillationLoss",
    "Loss",
    "MAELoss",
    "MSELoss",
    "MulticlassFocalLoss",
    "NTXentLoss",
    "PairwiseContrastiveLoss",
    "Reduction",
    "TeacherHead",
    "TopKTeacher",
    "TripletMarginLoss",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "chunked_causal_lm_loss",
    "chunked_distillation_loss",
    "cosine_embedding_loss",
    "cross_entropy",
    "distillation_loss",
    "huber_loss",
    "info_nce_loss",
    "kl_distillation_loss",
    "mae_loss",
    "mse_loss",
    "multiclass_focal_loss",
    "nt_xent_loss",
    "pairwise_contrastive_loss",
    "shift_labels",
    "topk_distillation_loss",
    "topk_teacher",
    "topk_teacher_heads",
    "triplet_margin_loss",
]
