"""KL divergence between teacher and student logits with a temperature, for knowledge distillation.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531: soften both distributions with a temperature T and scale the divergence
by T² so its gradients keep the same magnitude whatever T. Forward KL(teacher ‖ student) is the classic,
mode-covering choice; reverse KL(student ‖ teacher) is mode-seeking (Gu et al. 2023, MiniLLM,
https://arxiv.org/abs/2306.08543). Softmaxes run in float32 whatever the input dtype: bf16 probabilities
lose the small tail mass that distillation transfers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from aprender.errors import InvalidArgumentError
from aprender.loss._common import check_positive, check_reduction, check_same_shape, reduce_weighted
from aprender.loss.protocol import Reduction

KLDirection = Literal["forward", "reverse"]
"""forward: KL(teacher ‖ student); reverse: KL(student ‖ teacher)."""


def kl_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
    labels: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """``T²·KL`` between the temperature-softened teacher and student distributions, per position.

    Forward: ``T²·Σ_v p_t(v)·(log p_t(v) - log p_s(v))``; reverse swaps p_s and p_t; ``p = softmax(z / T)``
    over the last dimension, in float32. "mean" averages over the positions kept by `labels` (all of them
    without labels), i.e. ``F.kl_div(..., reduction="batchmean")`` on 2-D input; with every position
    ignored it is 0 with zero gradients. The teacher is used as given: detach it (or compute it under
    ``torch.no_grad()``) unless its gradients are wanted.

    Args:
        student_logits: shape `(*, V)`, any float dtype.
        teacher_logits: shape `(*, V)` like the student's.
        temperature: T > 0.
        direction: "forward" (teacher ‖ student) or "reverse" (student ‖ teacher).
        labels: optional `(*)` tensor; positions where it equals `ignore_index` are left out (prompt or
            padding tokens).
        ignore_index: the label value that marks a left-out position.
        reduction: "mean", "sum" or "none" (per-position divergences, 0 where ignored, shape `(*)`).

    Returns:
        The reduced loss, float32.

    Raises:
        InvalidArgumentError: on a bad reduction, temperature, direction or shapes.
    """
    _check_distill("kl_distillation_loss", reduction, temperature, direction)
    check_same_shape("kl_distillation_loss", "student_logits", student_logits, "teacher_logits", teacher_logits)
    log_p_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if direction == "forward":
        per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    else:
        per_position = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(dim=-1)
    per_position = per_position * temperature**2
    if labels is None:
        keep = torch.ones_like(per_position)
    else:
        check_same_shape("kl_distillation_loss", "labels", labels, "student_logits[..., 0]", per_position)
        keep = (labels != ignore_index).to(per_position.dtype)
    return reduce_weighted(per_position, keep, reduction)


def _check_distill(where: str, reduction: str, temperature: float, direction: str) -> None:
    check_reduction(where, reduction)
    check_positive(where, "temperature", temperature)
    if direction not in get_args(KLDirection):
        raise InvalidArgumentError(f"{where}: direction={direction!r} is not 'forward' or 'reverse'; pass one")


@dataclass(frozen=True)
class KLDistillationLoss:
    """`kl_distillation_loss` as a `Loss`: ``loss(student_logits (*, V), teacher_logits (*, V), labels=None)``."""

    name: ClassVar[str] = "kl_distillation"
    temperature: float = 1.0
    direction: KLDirection = "forward"
    ignore_index: int = -100
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        _check_distill("KLDistillationLoss", self.reduction, self.temperature, self.direction)

    def __call__(self, pred: Tensor, target: Tensor, *, labels: Tensor | None = None) -> Tensor:
        """See `kl_distillation_loss`; `pred` holds the student logits, `target` the teacher's."""
        return kl_distillation_loss(
            pred,
            target,
            temperature=self.temperature,
            direction=self.direction,
            labels=labels,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
