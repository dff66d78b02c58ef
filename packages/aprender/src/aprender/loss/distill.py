"""Divergences between teacher and student next-token distributions, for knowledge distillation.

Both distributions are softened by a temperature T, ``p = softmax(z / T)``, in float32 whatever the input
dtype (bf16 probabilities lose the small tail mass that distillation transfers). The divergences
(`DIVERGENCES`), with p_t the teacher's and p_s the student's distribution:

- ``forward_kl``: KL(p_t ‖ p_s), mode-covering (Hinton, Vinyals and Dean 2015, https://arxiv.org/abs/1503.02531);
- ``reverse_kl``: KL(p_s ‖ p_t), mode-seeking (MiniLLM, Gu et al. 2023, https://arxiv.org/abs/2306.08543);
- ``jsd``: the generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024,
  https://arxiv.org/abs/2306.13649) as TRL's ``generalized_jsd_loss`` computes it: with
  ``m = beta·p_t + (1 - beta)·p_s``, ``beta·KL(p_t ‖ m) + (1 - beta)·KL(p_s ‖ m)``; beta = 0 is forward KL
  and beta = 1 reverse KL (the formula itself tends to 0 at both ends; TRL switches to the KLs there);
- ``skew_forward_kl``: KL(p_t ‖ a·p_t + (1 - a)·p_s) and ``skew_reverse_kl``: KL(p_s ‖ a·p_s + (1 - a)·p_t),
  with a = `skew` (DistiLLM, Ko et al. 2024, https://arxiv.org/abs/2402.03898; a = 0 gives
  the plain KLs, a = 1 gives 0);
- ``tvd``: total variation distance ``½·Σ_v |p_t(v) - p_s(v)|``.

The T² rule: with ``scale_by_t2=True`` (the default) every divergence is multiplied by T², Hinton's
factor that keeps the gradients' size independent of T (softened KL gradients shrink as 1/T²; TVD's
shrink as 1/T, so at T > 1 the rule weighs TVD up by T). ``scale_by_t2=False`` leaves the divergence as it
is, the convention of GKD/TRL (``generalized_jsd_loss`` divides the logits by T and does not rescale) and
of DistiLLM. At T = 1 both agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from aprender.constants import DIVERGENCES, Divergence
from aprender.errors import InvalidArgumentError
from aprender.loss._common import (
    check_positive,
    check_reduction,
    check_same_shape,
    check_unit_interval,
    reduce_weighted,
)
from aprender.loss.protocol import Reduction

KLDirection = Literal["forward", "reverse"]
"""forward: KL(teacher ‖ student); reverse: KL(student ‖ teacher)."""


@dataclass(frozen=True)
class DivergenceSpec:
    """One validated choice of divergence and its parameters, shared by the dense, chunked and top-k losses.

    Build it with `divergence_spec`, which checks the values.
    """

    divergence: Divergence
    temperature: float
    beta: float
    skew: float
    scale_by_t2: bool

    def log_probs(self, logits: Tensor) -> Tensor:
        """``log softmax(logits / T)`` over the last dimension, in float32."""
        return softened_log_probs(logits, self.temperature)

    def per_position(self, log_p_student: Tensor, log_p_teacher: Tensor) -> Tensor:
        """The divergence of each position `(*)` from two log-distributions `(*, K)` over the same K outcomes.

        Outcomes of probability 0 (log-probability -inf) count for 0 in value and gradient.
        """
        name = self.divergence
        if name == "jsd" and self.beta in (0.0, 1.0):
            name = "forward_kl" if self.beta == 0.0 else "reverse_kl"
        if name == "forward_kl":
            value = _kl(log_p_teacher, log_p_student)
        elif name == "reverse_kl":
            value = _kl(log_p_student, log_p_teacher)
        elif name == "jsd":
            log_m = _log_mixture(log_p_teacher, log_p_student, self.beta)
            value = self.beta * _kl(log_p_teacher, log_m) + (1.0 - self.beta) * _kl(log_p_student, log_m)
        elif name == "skew_forward_kl":
            value = _kl(log_p_teacher, _log_mixture(log_p_teacher, log_p_student, self.skew))
        elif name == "skew_reverse_kl":
            value = _kl(log_p_student, _log_mixture(log_p_student, log_p_teacher, self.skew))
        else:
            value = 0.5 * (log_p_teacher.exp() - log_p_student.exp()).abs().sum(dim=-1)
        return value * self.temperature**2 if self.scale_by_t2 else value


def softened_log_probs(logits: Tensor, temperature: float) -> Tensor:
    """``log softmax(logits / T)`` over the last dimension, in float32 whatever the dtype of `logits`."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def divergence_spec(
    where: str, divergence: Divergence, temperature: float, beta: float, skew: float, scale_by_t2: bool
) -> DivergenceSpec:
    """Check the arguments every distillation loss shares and bundle them.

    Raises:
        InvalidArgumentError: on an unknown divergence, a temperature <= 0, or beta or skew outside [0, 1].
    """
    if divergence not in DIVERGENCES:
        raise InvalidArgumentError(
            f"{where}: divergence={divergence!r} is not one of {', '.join(DIVERGENCES)}; pass one of them"
        )
    check_positive(where, "temperature", temperature)
    check_unit_interval(where, "beta", beta)
    check_unit_interval(where, "skew", skew)
    return DivergenceSpec(divergence, temperature, beta, skew, scale_by_t2)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``Σ p·(log p - log q)`` over the last dimension, with ``0·log 0 = 0`` (and a zero gradient there)."""
    p = log_p.exp()
    return (p * torch.where(p > 0, log_p - log_q, 0.0)).sum(dim=-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """``log(w·a + (1 - w)·b)``, -inf where both are 0 (formed in probability space: no NaN gradient there)."""
    mixture = weight_a * log_a.exp() + (1.0 - weight_a) * log_b.exp()
    positive = mixture > 0
    return torch.where(positive, torch.where(positive, mixture, 1.0).log(), float("-inf"))


def masked_reduce(where: str, per_position: Tensor, labels: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    """Reduce per-position divergences over the positions whose label is not `ignore_index` (all without labels).

    Raises:
        InvalidArgumentError: when `labels` does not have the positions' shape.
    """
    if labels is None:
        keep = torch.ones_like(per_position)
    else:
        check_same_shape(where, "labels", labels, "student_logits[..., 0]", per_position)
        keep = (labels != ignore_index).to(per_position.dtype)
    return reduce_weighted(per_position, keep, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    divergence: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    scale_by_t2: bool = True,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """A divergence between the temperature-softened teacher and student distributions, per position.

    "mean" averages over the positions kept by `labels` (all of them without labels), which is TRL's
    "batchmean" with labels; with every position ignored it is 0 with zero gradients. The teacher is used
    as given: detach it (or compute it under ``torch.no_grad()``) unless its gradients are wanted.

    Args:
        student_logits: shape `(*, V)`, any float dtype.
        teacher_logits: shape `(*, V)` like the student's.
        divergence: one of `DIVERGENCES` (see the module docstring).
        temperature: T > 0; ``p = softmax(z / T)``.
        beta: the GKD mixture weight of ``jsd``, in [0, 1].
        skew: the DistiLLM skew of ``skew_forward_kl`` and ``skew_reverse_kl``, in [0, 1].
        scale_by_t2: multiply the divergence by T² (Hinton); False for TRL's and DistiLLM's convention.
        labels: optional `(*)` tensor; positions where it equals `ignore_index` are left out (prompt or
            padding tokens).
        ignore_index: the label value that marks a left-out position.
        reduction: "mean", "sum" or "none" (per-position divergences, 0 where ignored, shape `(*)`).

    Returns:
        The reduced loss, float32.

    Raises:
        InvalidArgumentError: on a bad divergence, temperature, beta, skew, reduction or shapes.
    """
    where = "distillation_loss"
    spec = divergence_spec(where, divergence, temperature, beta, skew, scale_by_t2)
    check_reduction(where, reduction)
    check_same_shape(where, "student_logits", student_logits, "teacher_logits", teacher_logits)
    per_position = spec.per_position(spec.log_probs(student_logits), spec.log_probs(teacher_logits))
    return masked_reduce(where, per_position, labels, ignore_index, reduction)


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

    `distillation_loss` with ``divergence="forward_kl"`` or ``"reverse_kl"``: forward is
    ``T²·Σ_v p_t(v)·(log p_t(v) - log p_s(v))``, reverse swaps p_s and p_t. "mean" on 2-D input is
    ``F.kl_div(..., reduction="batchmean")``.

    Args:
        student_logits: shape `(*, V)`, any float dtype.
        teacher_logits: shape `(*, V)` like the student's.
        temperature: T > 0.
        direction: "forward" (teacher ‖ student) or "reverse" (student ‖ teacher).
        labels: optional `(*)` tensor; positions where it equals `ignore_index` are left out.
        ignore_index: the label value that marks a left-out position.
        reduction: "mean", "sum" or "none" (per-position divergences, 0 where ignored, shape `(*)`).

    Returns:
        The reduced loss, float32.

    Raises:
        InvalidArgumentError: on a bad reduction, temperature, direction or shapes.
    """
    _check_direction("kl_distillation_loss", direction)
    return distillation_loss(
        student_logits,
        teacher_logits,
        divergence="forward_kl" if direction == "forward" else "reverse_kl",
        temperature=temperature,
        labels=labels,
        ignore_index=ignore_index,
        reduction=reduction,
    )


def _check_direction(where: str, direction: str) -> None:
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
        where = "KLDistillationLoss"
        check_reduction(where, self.reduction)
        check_positive(where, "temperature", self.temperature)
        _check_direction(where, self.direction)

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


@dataclass(frozen=True)
class DistillationLoss:
    """`distillation_loss` as a `Loss`: ``loss(student_logits (*, V), teacher_logits (*, V), labels=None)``."""

    name: ClassVar[str] = "distillation"
    divergence: Divergence = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    scale_by_t2: bool = True
    ignore_index: int = -100
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        where = "DistillationLoss"
        divergence_spec(where, self.divergence, self.temperature, self.beta, self.skew, self.scale_by_t2)
        check_reduction(where, self.reduction)

    def __call__(self, pred: Tensor, target: Tensor, *, labels: Tensor | None = None) -> Tensor:
        """See `distillation_loss`; `pred` holds the student logits, `target` the teacher's."""
        return distillation_loss(
            pred,
            target,
            divergence=self.divergence,
            temperature=self.temperature,
            beta=self.beta,
            skew=self.skew,
            scale_by_t2=self.scale_by_t2,
            labels=labels,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
