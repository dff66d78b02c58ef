"""Distillation from a sparse teacher cache: the teacher's top-k tokens per position plus one tail bucket.

A cache keeps, per position, the teacher's k most probable token ids at temperature T, their
log-probabilities and the log of the mass left over, ``log(1 - Σ top-k probs)``; `topk_teacher` builds it
from dense teacher logits. The divergence (any of `DIVERGENCES`) is then taken between two distributions
over k + 1 outcomes: the k tokens and the tail, the student's tail being its mass outside the k ids.
Merging outcomes never increases these divergences (the data-processing inequality), so the sparse value
is at most the dense one, and equal to it when k covers the vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from aprender.errors import InvalidArgumentError
from aprender.loss._common import check_chunk_size, check_positive, check_reduction
from aprender.loss.distill import Divergence, divergence_spec, masked_reduce, softened_log_probs
from aprender.loss.protocol import Reduction


class TopKTeacher(NamedTuple):
    """A sparse teacher: per position its top-k token ids, their log-probs at temperature T and the tail's.

    ``ids`` `(*, k)` int64 (distinct per position), ``logprobs`` `(*, k)` float32, ``tail_logmass`` `(*)`
    float32, -inf when the k ids hold all the mass.
    """

    ids: Tensor
    logprobs: Tensor
    tail_logmass: Tensor


def topk_teacher(teacher_logits: Tensor, k: int, *, temperature: float = 1.0, chunk_size: int = 1024) -> TopKTeacher:
    """The teacher's top-k entries at temperature T, computed `chunk_size` positions at a time.

    Only `(chunk_size, V)` float32 buffers are made, whatever the number of positions; no gradient flows.
    Select the labelled positions of the result (``TopKTeacher(*(t[keep] for t in entries))``) to store
    only those.

    Args:
        teacher_logits: shape `(*, V)`, any float dtype.
        k: tokens kept per position, 1 <= k <= V.
        temperature: T > 0; the cache holds ``log softmax(logits / T)``, so train with the same T.
        chunk_size: positions per chunk, >= 1.

    Returns:
        A `TopKTeacher` with ids sorted by decreasing probability, shapes `(*, k)`, `(*, k)` and `(*)`.

    Raises:
        InvalidArgumentError: on bad logits, k, temperature or chunk_size.
    """
    where = "topk_teacher"
    if teacher_logits.dim() < 1 or not teacher_logits.dtype.is_floating_point:
        raise InvalidArgumentError(
            f"{where}: teacher_logits has shape {tuple(teacher_logits.shape)} and dtype {teacher_logits.dtype}; "
            "pass floating logits of shape (*, V)"
        )
    vocab = teacher_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise InvalidArgumentError(f"{where}: k={k!r} must be an integer in [1, {vocab}] (the vocabulary size)")
    check_positive(where, "temperature", temperature)
    check_chunk_size(where, chunk_size)
    flat = teacher_logits.detach().reshape(-1, vocab)
    ids = torch.empty(flat.shape[0], k, dtype=torch.long, device=flat.device)
    logprobs = torch.empty(flat.shape[0], k, dtype=torch.float32, device=flat.device)
    tail = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        ids[rows], logprobs[rows], tail[rows] = topk_entries(softened_log_probs(flat[rows], temperature), k)
    positions = teacher_logits.shape[:-1]
    return TopKTeacher(ids.reshape(*positions, k), logprobs.reshape(*positions, k), tail.reshape(positions))


def topk_entries(log_p: Tensor, k: int) -> TopKTeacher:
    """A float32 log-distribution `(C, V)`'s k most likely ids, their log-probs and the tail's (overwrites `log_p`)."""
    logprobs, ids = log_p.topk(k, dim=-1)
    return TopKTeacher(ids, logprobs, torch.logsumexp(log_p.scatter_(-1, ids, float("-inf")), dim=-1))


def topk_buckets(log_p: Tensor, ids: Tensor) -> Tensor:
    """A log-distribution `(*, V)` folded onto k + 1 outcomes `(*, k + 1)`: the `ids` `(*, k)`, then the rest.

    The rest's log-mass is a logsumexp over the other tokens (exact however small), -inf when there are
    none, with a zero gradient there.
    """
    rest = log_p.scatter(-1, ids, float("-inf"))
    peak = rest.detach().amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    mass = (rest - peak).exp().sum(dim=-1)
    positive = mass > 0
    tail = torch.where(positive, torch.where(positive, mass, 1.0).log() + peak.squeeze(-1), float("-inf"))
    return torch.cat([log_p.gather(-1, ids), tail.unsqueeze(-1)], dim=-1)


def teacher_buckets(teacher: TopKTeacher) -> Tensor:
    """The cached teacher as a log-distribution over k + 1 outcomes `(*, k + 1)`, float32."""
    return torch.cat([teacher.logprobs.float(), teacher.tail_logmass.float().unsqueeze(-1)], dim=-1)


def check_topk_teacher(where: str, teacher: TopKTeacher, positions: tuple[int, ...], vocab: int) -> None:
    """Raise unless `teacher` holds `(*positions, k)` integer ids in [0, vocab), like-shaped log-probs and a tail.

    Raises:
        InvalidArgumentError: on a shape, dtype or id that does not fit.
    """
    ids, logprobs, tail = teacher
    if ids.dim() != len(positions) + 1 or tuple(ids.shape[:-1]) != positions or logprobs.shape != ids.shape:
        raise InvalidArgumentError(
            f"{where}: topk_ids {tuple(ids.shape)} and topk_logprobs {tuple(logprobs.shape)} do not fit "
            f"{positions} positions; pass both of shape (*positions, k)"
        )
    if tuple(tail.shape) != positions:
        raise InvalidArgumentError(
            f"{where}: tail_logmass has shape {tuple(tail.shape)}; pass one value per position, shape {positions}"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or not logprobs.dtype.is_floating_point:
        raise InvalidArgumentError(
            f"{where}: topk_ids is {ids.dtype} and topk_logprobs {logprobs.dtype}; pass integer ids and float log-probs"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise InvalidArgumentError(f"{where}: topk_ids hold a token id outside [0, {vocab}); fix the cache")


def topk_distillation_loss(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    tail_logmass: Tensor,
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
    """`distillation_loss` against a sparse teacher: the divergence over the top-k tokens plus a tail bucket.

    Equals `distillation_loss` with the dense teacher when k = V. For hidden states and an LM head instead
    of student logits, pass a `TopKTeacher` to `chunked_distillation_loss`.

    Args:
        student_logits: shape `(*, V)`, any float dtype.
        topk_ids: the teacher's token ids, shape `(*, k)`, distinct per position (see `topk_teacher`).
        topk_logprobs: their teacher log-probabilities at `temperature`, shape `(*, k)`.
        tail_logmass: ``log(1 - Σ top-k probs)``, shape `(*)`.
        divergence: one of `DIVERGENCES`.
        temperature: T > 0, the one the cache was built with.
        beta: the GKD mixture weight of ``jsd``, in [0, 1].
        skew: the DistiLLM skew of the skew KLs, in [0, 1].
        scale_by_t2: multiply the divergence by T² (see `aprender.loss.distill`).
        labels: optional `(*)` tensor; positions where it equals `ignore_index` are left out.
        ignore_index: the label value that marks a left-out position.
        reduction: "mean", "sum" or "none" (per-position divergences, 0 where ignored, shape `(*)`).

    Returns:
        The reduced loss, float32.

    Raises:
        InvalidArgumentError: on bad divergence parameters, a bad reduction, shapes, dtypes or ids.
    """
    where = "topk_distillation_loss"
    spec = divergence_spec(where, divergence, temperature, beta, skew, scale_by_t2)
    check_reduction(where, reduction)
    teacher = TopKTeacher(topk_ids, topk_logprobs, tail_logmass)
    check_topk_teacher(where, teacher, tuple(student_logits.shape[:-1]), student_logits.shape[-1])
    student = topk_buckets(spec.log_probs(student_logits), topk_ids)
    return masked_reduce(where, spec.per_position(student, teacher_buckets(teacher)), labels, ignore_index, reduction)
