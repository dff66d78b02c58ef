"""Causal-LM cross-entropy fused with the LM head, computed over chunks of tokens to save memory.

The plain ``F.cross_entropy(hidden @ weight.T, labels)`` materialises `(N, V)` logits, and autograd keeps
them with their log-softmax and gradient: for 8 × 2048 tokens and a 152k vocabulary that is 10 GB per fp32
copy. `chunked_causal_lm_loss` takes the hidden states and the LM-head weight instead and handles C tokens
at a time, so the extra memory is a few `(C, V)` float32 buffers whatever N, with the same value and the
same gradients w.r.t. `hidden` and `weight`.

How the gradients are produced: for "mean" and "sum" the upstream gradient is one scalar, so each chunk's
gradients are computed right after its loss, in the forward pass, and backward only scales them (the idea
of Liger Kernel's fused linear cross-entropy, Hsu et al. 2024, https://arxiv.org/abs/2410.10989): no
logits are recomputed. For "none" the per-token upstream gradients exist only in backward, which
recomputes each chunk's logits from the saved per-token logsumexp. Gradients are computed in the forward
pass only when grad mode is on and an input requires them: evaluate under ``torch.no_grad()``.

Labels are aligned with the hidden positions: ``labels[..., t]`` is the token that ``hidden[..., t, :]``
predicts. Hugging Face style labels (a copy of the input ids) need `shift_labels` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aprender.errors import InvalidArgumentError
from aprender.loss._chunking import HeadGrads, add_head_grads, head_logits, new_head_grads
from aprender.loss._common import check_chunk_size, check_class_indices, check_positive, check_reduction
from aprender.loss.protocol import Reduction

_WHERE = "chunked_causal_lm_loss"


def shift_labels(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Align next-token labels with the positions that predict them: ``out[..., t] = labels[..., t + 1]``.

    The last position has no next token and gets `ignore_index`.

    Args:
        labels: token ids (with `ignore_index` where masked), shape `(*, T)`.
        ignore_index: value for the last position.

    Returns:
        A new tensor of shape `(*, T)`.
    """
    shifted = torch.full_like(labels, ignore_index)
    shifted[..., :-1] = labels[..., 1:]
    return shifted


def chunked_causal_lm_loss(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against `labels`, without materialising all the logits.

    Equals ``F.cross_entropy((hidden @ weight.T).float(), labels, ignore_index=ignore_index)`` in value and
    gradients; peak extra memory is a few float32 `(chunk_size, V)` buffers (one more with a soft-cap) plus a
    float32 copy of `weight` for its gradient. Logits are computed in the input dtype (as the plain
    matmul) and upcast to float32 (float64 stays float64) before the logsumexp. "mean" divides by the
    number of non-ignored tokens; when every token is ignored it returns 0 with zero gradients (not torch's
    NaN), so an all-prompt batch leaves the parameters as they are.

    Args:
        hidden: final hidden states, shape `(N, H)` or `(B, T, H)`.
        weight: LM-head weight, shape `(V, H)`, same dtype as `hidden`.
        labels: target token ids aligned with `hidden` (see `shift_labels`), shape `(N,)` or `(B, T)`.
        chunk_size: tokens per chunk, >= 1; need not divide the number of tokens.
        ignore_index: label value of tokens that count for nothing.
        logit_softcap: if set, logits become ``cap·tanh(logits / cap)`` before the softmax (Gemma 2,
            https://arxiv.org/abs/2408.00118); > 0.
        reduction: "mean", "sum" or "none" (per-token losses, 0 at ignored tokens, shape of `labels`).

    Returns:
        The loss in float32 (float64 for float64 inputs).

    Raises:
        InvalidArgumentError: on a bad reduction, chunk_size, logit_softcap, shapes, dtypes or label.
    """
    check_reduction(_WHERE, reduction)
    check_chunk_size(_WHERE, chunk_size)
    if logit_softcap is not None:
        check_positive(_WHERE, "logit_softcap", logit_softcap)
    _check_inputs(hidden, weight, labels)
    check_class_indices(_WHERE, labels, weight.shape[0], ignore_index)
    grad_on = torch.is_grad_enabled()
    plan = _Plan(
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        logit_softcap=logit_softcap,
        reduction=reduction,
        need_hidden_grad=grad_on and hidden.requires_grad,
        need_weight_grad=grad_on and weight.requires_grad,
    )
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    loss = _ChunkedLinearCrossEntropy.apply(flat_hidden, weight, labels.reshape(-1), plan)
    return loss.reshape(labels.shape) if reduction == "none" else loss


def _check_inputs(hidden: Tensor, weight: Tensor, labels: Tensor) -> None:
    if hidden.dim() not in (2, 3) or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise InvalidArgumentError(
            f"{_WHERE}: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not fit; "
            "pass hidden (N, H) or (B, T, H) and the LM-head weight (V, H)"
        )
    if labels.shape != hidden.shape[:-1]:
        raise InvalidArgumentError(
            f"{_WHERE}: labels have shape {tuple(labels.shape)}; pass one label per hidden position, "
            f"shape {tuple(hidden.shape[:-1])}"
        )
    if not hidden.dtype.is_floating_point or hidden.dtype != weight.dtype:
        raise InvalidArgumentError(
            f"{_WHERE}: hidden is {hidden.dtype} and weight is {weight.dtype}; pass both in one floating dtype"
        )


@dataclass(frozen=True)
class _Plan:
    """The non-tensor arguments of one call."""

    chunk_size: int
    ignore_index: int
    logit_softcap: float | None
    reduction: str
    need_hidden_grad: bool
    need_weight_grad: bool


@dataclass
class _ChunkTargets:
    """Per-token tensors `(N,)` that turn logits into gradients: ``coef_i · (softmax - onehot(label_i))``."""

    labels: Tensor  # ignored tokens replaced by 0 (their coef is 0)
    lse: Tensor  # logsumexp of each token's logits
    coef: Tensor  # upstream gradient of each token's loss, 0 where ignored
    softcap: float | None


def _logit_grad_(logits: Tensor, lse: Tensor, labels: Tensor, coef: Tensor, softcap: float | None) -> Tensor:
    """Overwrite one chunk's logits `(C, V)` with ``coef_i · d loss_i / d (pre-cap) logits``.

    ``d loss_i / d s = softmax(s) - onehot(y_i)``; through the cap ``s = c·tanh(z / c)``,
    ``ds / dz = 1 - (s / c)²``.
    """
    cap_slope = None if softcap is None else (logits / softcap).square_().neg_().add_(1.0)
    grad = logits.sub_(lse.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
    grad.scatter_add_(1, labels.unsqueeze(1), -coef.unsqueeze(1))
    return grad if cap_slope is None else grad.mul_(cap_slope)


def _add_chunk_grads(
    grads: HeadGrads, rows: slice, logits: Tensor, chunk: _ChunkTargets, hidden: Tensor, weight: Tensor
) -> None:
    """Add one chunk's contribution to the gradients of `hidden` and `weight`."""
    grad_logits = _logit_grad_(logits, chunk.lse[rows], chunk.labels[rows], chunk.coef[rows], chunk.softcap)
    add_head_grads(grads, rows, grad_logits, hidden[rows], weight)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Autograd function behind `chunked_causal_lm_loss` (flattened `hidden (N, H)`, `labels (N,)`)."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, plan: _Plan) -> Tensor:
        accum = torch.promote_types(hidden.dtype, torch.float32)
        valid = labels != plan.ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        count = valid.sum().clamp_min(1).to(accum)
        eager = plan.reduction != "none"
        coef = valid.to(accum) / count if plan.reduction == "mean" else valid.to(accum)
        grads = new_head_grads(hidden, weight, eager and plan.need_hidden_grad, eager and plan.need_weight_grad)
        per_token = torch.zeros(hidden.shape[0], dtype=accum, device=hidden.device)
        targets = _ChunkTargets(labels=safe, lse=torch.empty_like(per_token), coef=coef, softcap=plan.logit_softcap)
        for start in range(0, hidden.shape[0], plan.chunk_size):
            rows = slice(start, start + plan.chunk_size)
            logits = head_logits(hidden[rows], weight, plan.logit_softcap)
            targets.lse[rows] = torch.logsumexp(logits, dim=1)
            target_logits = logits.gather(1, safe[rows].unsqueeze(1)).squeeze(1)
            per_token[rows] = (targets.lse[rows] - target_logits) * valid[rows]
            if grads.hidden is not None or grads.weight is not None:
                _add_chunk_grads(grads, rows, logits, targets, hidden, weight)
        ctx.plan, ctx.eager, ctx.weight_dtype = plan, eager, weight.dtype
        if eager:
            ctx.save_for_backward(grads.hidden, grads.weight)
            return per_token.sum() / count if plan.reduction == "mean" else per_token.sum()
        ctx.save_for_backward(hidden, weight, safe, valid, targets.lse)
        return per_token

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        if ctx.eager:
            grad_hidden, grad_weight = ctx.saved_tensors
            scaled_hidden = None if grad_hidden is None else grad_hidden * grad_output.to(grad_hidden.dtype)
            scaled_weight = None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype)
            return scaled_hidden, scaled_weight, None, None
        hidden, weight, safe, valid, lse = ctx.saved_tensors
        targets = _ChunkTargets(labels=safe, lse=lse, coef=grad_output * valid, softcap=ctx.plan.logit_softcap)
        grads = new_head_grads(hidden, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        for start in range(0, hidden.shape[0], ctx.plan.chunk_size):
            rows = slice(start, start + ctx.plan.chunk_size)
            logits = head_logits(hidden[rows], weight, ctx.plan.logit_softcap)
            _add_chunk_grads(grads, rows, logits, targets, hidden, weight)
        return grads.hidden, None if grads.weight is None else grads.weight.to(ctx.weight_dtype), None, None
