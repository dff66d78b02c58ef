"""Distillation fused with the LM heads, computed over chunks of labelled positions to save memory.

The plain way computes the student's and the teacher's `(N, V)` logits, their log-softmaxes and (for the
student) a gradient of the same size. `chunked_distillation_loss` takes the student's final hidden states
and head weight, and either the teachers' (`TeacherHead`) or a sparse top-k cache (`TopKTeacher`), and
handles C labelled positions at a time: unlabelled positions never reach a head, and the extra memory is a
few `(C, V)` float32 buffers whatever N, with the same value and gradients as the plain computation.

Gradients follow `aprender.loss.causal_lm`: for "sum" and "mean" each chunk's gradient w.r.t. its student
logits is taken right after its loss, in the forward pass (by autograd on that chunk alone), and turned
into the chunk's share of ``d hidden`` and ``d weight``; backward only scales them. For "none" backward
recomputes each chunk with its per-position upstream gradients. The teachers are frozen: they get no
gradient. Several teachers form a mixture ``p_t = Σ_i w_i·softmax(z_i / T)`` with the weights normalised
to 1: the averaged prediction of an ensemble, which Hinton et al. 2015 (https://arxiv.org/abs/1503.02531)
distil into one model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aprender.errors import InvalidArgumentError
from aprender.loss._chunking import add_head_grads, head_logits, new_head_grads
from aprender.loss._common import check_chunk_size, check_reduction
from aprender.loss.distill import Divergence, DivergenceSpec, divergence_spec
from aprender.loss.distill_topk import (
    TopKTeacher,
    check_topk_teacher,
    teacher_buckets,
    topk_buckets,
    topk_entries,
)
from aprender.loss.protocol import Reduction

_WHERE = "chunked_distillation_loss"


class TeacherHead(NamedTuple):
    """A frozen teacher: final hidden states `(N, H_t)`, LM-head weight `(V, H_t)` and its mixture weight > 0."""

    hidden: Tensor
    weight: Tensor
    mixture_weight: float = 1.0


def chunked_distillation_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher: TeacherHead | Sequence[TeacherHead] | TopKTeacher,
    labels: Tensor,
    *,
    divergence: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    scale_by_t2: bool = True,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    reduction: Reduction = "sum",
) -> Tensor:
    """`distillation_loss` of ``student_hidden @ student_weight.T`` against a teacher, without `(N, V)` logits.

    Equals `distillation_loss` on the materialised logits (or `topk_distillation_loss` for a `TopKTeacher`)
    in value and in gradients w.r.t. `student_hidden` and `student_weight`. Logits are computed in the
    input dtype (as the plain matmul) and softened in float32. "mean" divides by the number of labelled
    positions (0 with zero gradients when there are none). Evaluate under ``torch.no_grad()`` to skip the
    gradients computed in the forward pass.

    Args:
        student_hidden: final hidden states, shape `(N, H)`.
        student_weight: LM-head weight, shape `(V, H)`, same dtype as `student_hidden`.
        teacher: a `TeacherHead` (hidden `(N, H_t)`, weight `(V, H_t)`: the same V as the student's; slice a
            teacher head padded beyond the student's vocabulary to ``weight[:V]``), a sequence of them (mixed
            by their weights), or a `TopKTeacher` with entries `(N, k)` built at `temperature`.
        labels: `(N,)`; positions equal to `ignore_index` are left out (only their mask is used).
        divergence: one of `DIVERGENCES`.
        temperature: T > 0.
        beta: the GKD mixture weight of ``jsd``, in [0, 1].
        skew: the DistiLLM skew of the skew KLs, in [0, 1].
        scale_by_t2: multiply the divergence by T² (see `aprender.loss.distill`).
        chunk_size: labelled positions per chunk, >= 1.
        ignore_index: the label value that marks a left-out position.
        reduction: "sum", "mean" or "none" (per-position divergences, 0 where ignored, shape `(N,)`).

    Returns:
        The loss in float32.

    Raises:
        InvalidArgumentError: on bad divergence parameters, reduction, chunk_size, shapes, dtypes or weights.
    """
    spec = divergence_spec(_WHERE, divergence, temperature, beta, skew, scale_by_t2)
    check_reduction(_WHERE, reduction)
    check_chunk_size(_WHERE, chunk_size)
    _check_student(student_hidden, student_weight, labels)
    source = _teacher_source(teacher, student_hidden.shape[0], student_weight.shape[0], spec)
    grad_on = torch.is_grad_enabled()
    plan = _Plan(
        spec=spec,
        chunk_size=chunk_size,
        reduction=reduction,
        need_hidden_grad=grad_on and student_hidden.requires_grad,
        need_weight_grad=grad_on and student_weight.requires_grad,
    )
    kept = (labels != ignore_index).nonzero().squeeze(1)
    result: Tensor = _ChunkedDistillation.apply(student_hidden, student_weight, kept, source, plan)
    return result


@torch.no_grad()
def topk_teacher_heads(
    teacher: TeacherHead | Sequence[TeacherHead], k: int, *, temperature: float = 1.0, chunk_size: int = 1024
) -> TopKTeacher:
    """`topk_teacher` of the teachers' (mixture) distribution ``Σ_i w_i·softmax(hidden_i @ weight_i.T / T)``.

    What a teacher cache stores, computed from the heads `chunk_size` positions at a time, so only
    `(chunk_size, V)` float32 buffers are made.

    Args:
        teacher: a `TeacherHead` or several (a mixture, as in `chunked_distillation_loss`), hidden `(N, H_t)`.
        k: tokens kept per position, 1 <= k <= V.
        temperature: T > 0.
        chunk_size: positions per chunk, >= 1.

    Returns:
        A `TopKTeacher` with entries `(N, k)`, `(N, k)` and `(N,)`, ids by decreasing probability.

    Raises:
        InvalidArgumentError: on bad heads, k, temperature or chunk_size.
    """
    where = "topk_teacher_heads"
    spec = divergence_spec(where, "forward_kl", temperature, 0.5, 0.1, True)
    check_chunk_size(where, chunk_size)
    heads = [teacher] if isinstance(teacher, TeacherHead) else [TeacherHead(*head) for head in teacher]
    if not heads:
        raise InvalidArgumentError(f"{where}: no teacher given; pass at least one TeacherHead")
    first = heads[0]
    positions, vocab = first.hidden.shape[0], first.weight.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise InvalidArgumentError(f"{where}: k={k!r} must be an integer in [1, {vocab}] (the vocabulary size)")
    source = _teacher_source(heads, positions, vocab, spec)
    assert isinstance(source, _HeadMixture)
    device = first.hidden.device
    ids = torch.empty(positions, k, dtype=torch.long, device=device)
    logprobs = torch.empty(positions, k, dtype=torch.float32, device=device)
    tail = torch.empty(positions, dtype=torch.float32, device=device)
    for start in range(0, positions, chunk_size):
        rows = slice(start, start + chunk_size)
        ids[rows], logprobs[rows], tail[rows] = topk_entries(source.log_probs(rows), k)
    return TopKTeacher(ids, logprobs, tail)


def _check_student(hidden: Tensor, weight: Tensor, labels: Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise InvalidArgumentError(
            f"{_WHERE}: student_hidden {tuple(hidden.shape)} and student_weight {tuple(weight.shape)} do not fit; "
            "pass hidden (N, H) and the LM-head weight (V, H)"
        )
    if not hidden.dtype.is_floating_point or hidden.dtype != weight.dtype:
        raise InvalidArgumentError(
            f"{_WHERE}: student_hidden is {hidden.dtype} and student_weight is {weight.dtype}; "
            "pass both in one floating dtype"
        )
    if labels.shape != hidden.shape[:1]:
        raise InvalidArgumentError(
            f"{_WHERE}: labels have shape {tuple(labels.shape)}; "
            f"pass one label per position, shape ({hidden.shape[0]},)"
        )


class _TeacherSource(Protocol):
    def pair(self, rows: Tensor, log_p_student: Tensor) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's log-distributions over the same outcomes at positions `rows`."""
        ...


@dataclass(frozen=True)
class _HeadMixture:
    """Teachers' heads `(hidden, weight)` with log mixture weights summing (in probability) to 1."""

    heads: tuple[tuple[Tensor, Tensor], ...]
    log_weights: tuple[float, ...]
    spec: DivergenceSpec

    def pair(self, rows: Tensor, log_p_student: Tensor) -> tuple[Tensor, Tensor]:
        return log_p_student, self.log_probs(rows)

    def log_probs(self, rows: Tensor | slice) -> Tensor:
        """The mixture's float32 log-distribution at temperature T over positions `rows`, `(C, V)`."""
        mixture: Tensor | None = None
        for (hidden, weight), log_weight in zip(self.heads, self.log_weights, strict=True):
            log_p = self.spec.log_probs(head_logits(hidden[rows], weight))
            if log_weight != 0.0:
                log_p = log_p.add_(log_weight)
            mixture = log_p if mixture is None else torch.logaddexp(mixture, log_p)
        assert mixture is not None
        return mixture


@dataclass(frozen=True)
class _TopKSource:
    teacher: TopKTeacher

    def pair(self, rows: Tensor, log_p_student: Tensor) -> tuple[Tensor, Tensor]:
        chunk = TopKTeacher(*(t[rows] for t in self.teacher))
        return topk_buckets(log_p_student, chunk.ids), teacher_buckets(chunk)


def _teacher_source(
    teacher: TeacherHead | Sequence[TeacherHead] | TopKTeacher, positions: int, vocab: int, spec: DivergenceSpec
) -> _TeacherSource:
    """Check the teacher argument against the student's N and V, and wrap it for the chunk loop."""
    if isinstance(teacher, TopKTeacher):
        check_topk_teacher(_WHERE, teacher, (positions,), vocab)
        return _TopKSource(teacher)
    heads = [teacher] if isinstance(teacher, TeacherHead) else [TeacherHead(*head) for head in teacher]
    if not heads:
        raise InvalidArgumentError(f"{_WHERE}: no teacher given; pass at least one TeacherHead or a TopKTeacher")
    for i, (hidden, weight, mixture_weight) in enumerate(heads):
        if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[0] != positions or weight.shape[1] != hidden.shape[1]:
            raise InvalidArgumentError(
                f"{_WHERE}: teacher {i} has hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}; "
                f"pass hidden ({positions}, H_t) and its LM-head weight (V, H_t)"
            )
        if weight.shape[0] != vocab:
            raise InvalidArgumentError(
                f"{_WHERE}: teacher {i}'s head has {weight.shape[0]} rows but the student's has {vocab}; "
                f"pass teacher heads over the student's vocabulary (slice a padded one to weight[:{vocab}])"
            )
        if not hidden.dtype.is_floating_point or hidden.dtype != weight.dtype:
            raise InvalidArgumentError(
                f"{_WHERE}: teacher {i} has hidden {hidden.dtype} and weight {weight.dtype}; "
                "pass both in one floating dtype"
            )
        if not (math.isfinite(mixture_weight) and mixture_weight > 0):
            raise InvalidArgumentError(
                f"{_WHERE}: teacher {i} has mixture_weight={mixture_weight!r}; pass a finite number > 0"
            )
    total = math.fsum(head.mixture_weight for head in heads)
    return _HeadMixture(
        heads=tuple((head.hidden.detach(), head.weight.detach()) for head in heads),
        log_weights=tuple(0.0 if len(heads) == 1 else math.log(head.mixture_weight / total) for head in heads),
        spec=spec,
    )


@dataclass(frozen=True)
class _Plan:
    """The non-tensor arguments of one call."""

    spec: DivergenceSpec
    chunk_size: int
    reduction: str
    need_hidden_grad: bool
    need_weight_grad: bool


def _chunk(
    hidden: Tensor, weight: Tensor, rows: Tensor, source: _TeacherSource, spec: DivergenceSpec, upstream: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """One chunk's per-position divergences `(C,)` and, given their upstream gradients, ``d loss / d logits``."""
    logits = head_logits(hidden, weight).float()
    if upstream is None:
        return spec.per_position(*source.pair(rows, spec.log_probs(logits))), None
    with torch.enable_grad():
        logits.requires_grad_(True)
        values = spec.per_position(*source.pair(rows, spec.log_probs(logits)))
        (grad_logits,) = torch.autograd.grad(values, logits, upstream)
    return values.detach(), grad_logits


class _ChunkedDistillation(torch.autograd.Function):
    """Autograd function behind `chunked_distillation_loss` (`kept`: indices of the labelled positions)."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, kept: Tensor, source: _TeacherSource, plan: _Plan) -> Tensor:
        eager = plan.reduction != "none"
        want_hidden, want_weight = eager and plan.need_hidden_grad, eager and plan.need_weight_grad
        grads = new_head_grads(hidden, weight, want_hidden, want_weight)
        scale = 1.0 / max(kept.numel(), 1) if plan.reduction == "mean" else 1.0
        per_position = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, kept.numel(), plan.chunk_size):
            rows = kept[start : start + plan.chunk_size]
            chunk_hidden = hidden[rows]
            upstream = torch.full(rows.shape, scale, device=hidden.device) if want_hidden or want_weight else None
            per_position[rows], grad_logits = _chunk(chunk_hidden, weight, rows, source, plan.spec, upstream)
            if grad_logits is not None:
                add_head_grads(grads, rows, grad_logits, chunk_hidden, weight)
        ctx.plan, ctx.eager, ctx.weight_dtype = plan, eager, weight.dtype
        if eager:
            ctx.save_for_backward(grads.hidden, grads.weight)
            return per_position.sum() * scale
        ctx.source = source
        ctx.save_for_backward(hidden, weight, kept)
        return per_position

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        if ctx.eager:
            grad_hidden, grad_weight = ctx.saved_tensors
            scaled_hidden = None if grad_hidden is None else grad_hidden * grad_output.to(grad_hidden.dtype)
            scaled_weight = None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype)
            return scaled_hidden, scaled_weight, None, None, None
        hidden, weight, kept = ctx.saved_tensors
        grads = new_head_grads(hidden, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        for start in range(0, kept.numel(), ctx.plan.chunk_size):
            rows = kept[start : start + ctx.plan.chunk_size]
            chunk_hidden = hidden[rows]
            _, grad_logits = _chunk(chunk_hidden, weight, rows, ctx.source, ctx.plan.spec, grad_output[rows].float())
            assert grad_logits is not None
            add_head_grads(grads, rows, grad_logits, chunk_hidden, weight)
        return grads.hidden, None if grads.weight is None else grads.weight.to(ctx.weight_dtype), None, None, None
