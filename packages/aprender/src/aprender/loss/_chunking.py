"""What the chunked LM-head losses share: one chunk's logits and the gradients they send to hidden and weight.

A chunked loss walks the tokens C at a time, turns each chunk's logits `(C, V)` into the gradient of its
loss w.r.t. those logits, and hands it to `add_head_grads`, which writes the chunk's rows of ``d hidden``
and adds its share of ``d weight``; no `(N, V)` tensor ever exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class HeadGrads:
    """Gradient buffers filled chunk by chunk; None where no gradient is wanted."""

    hidden: Tensor | None
    weight: Tensor | None  # accumulated in the float32 (or float64) accumulation dtype


def new_head_grads(hidden: Tensor, weight: Tensor, want_hidden: bool, want_weight: bool) -> HeadGrads:
    """Zeroed buffers for ``d hidden`` (hidden's dtype) and ``d weight`` (float32, float64 for float64)."""
    accum = torch.promote_types(weight.dtype, torch.float32)
    return HeadGrads(
        hidden=torch.zeros_like(hidden) if want_hidden else None,
        weight=torch.zeros(weight.shape, dtype=accum, device=weight.device) if want_weight else None,
    )


def head_logits(hidden: Tensor, weight: Tensor, softcap: float | None = None) -> Tensor:
    """Logits `(C, V)` of one chunk: matmul in the input dtype, then float32 (or float64), then soft-cap."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    if softcap is not None:
        logits = logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def add_head_grads(grads: HeadGrads, rows: slice | Tensor, grad_logits: Tensor, hidden: Tensor, weight: Tensor) -> None:
    """Add one chunk's share: ``d hidden[rows] = G @ W`` and ``d W += Gᵀ @ hidden`` (`hidden`: the chunk's rows)."""
    grad_low = grad_logits.to(weight.dtype)
    if grads.hidden is not None:
        grads.hidden[rows] = grad_low @ weight
    if grads.weight is not None:
        if grad_low.dtype == grads.weight.dtype:
            grads.weight.addmm_(grad_low.T, hidden)
        else:  # bf16/fp16: tensor-core matmul per chunk, summed over chunks in float32
            grads.weight.add_(grad_low.T @ hidden)
