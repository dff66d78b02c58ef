"""The model's own loss: next-token cross-entropy of its final hidden states through its LM head, in chunks.

`CausalLM.forward(..., labels=...)` ends here instead of in logits, so whatever wraps the model (DDP,
FSDP2, torch.compile) sees the loss computed inside its forward. `head_loss` runs
`aprender.loss.chunked_causal_lm_loss` on ``(x, W)`` such that ``logits = x @ W.T`` (`head_operands`): the
LM head's weight (or the tied embedding), or for a LoRA head the pair `LoRALinear.matmul_operands` gives,
so the `(tokens, vocab)` logits are never all materialised. A head with no such pair (DoRA, a quantized
base) falls back to its own forward and `torch.nn.functional.cross_entropy`, which does materialise them.

Labels are aligned with the positions (``labels[b, t]`` is what position t predicts; `IGNORE_INDEX` where
nothing is). Only labelled positions reach the head for the "sum" and "mean" reductions: prompt tokens,
padding and each sample's last token cost no logits. Under bfloat16/float16 autocast the hidden states
come in the compute dtype while a trainable head stays float32; the head is cast to the hidden states'
dtype (the cast is differentiable), as the matmul under autocast would do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aprender.loss import chunked_causal_lm_loss
from entrenar.constants import IGNORE_INDEX
from entrenar.errors import ModelInputError

__all__ = ["DEFAULT_LOSS_CHUNK_SIZE", "IGNORE_INDEX", "KDFn", "LossOutput", "head_loss", "head_operands"]

DEFAULT_LOSS_CHUNK_SIZE = 1024
"""Tokens per chunk of logits. A (1024, vocab) float32 chunk is 192 MiB for a 49k vocabulary; on a CPU the
LM-head matmuls run about 10% faster at 1024 rows than at 256 (measured on SmolLM2-135M)."""

Reduction = Literal["sum", "mean", "none"]
KDFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``kd(x, weight, labels)``: a distillation loss on the student's LM-head operands at the labelled positions
(``logits = x @ weight.T``, (N, K) and (V, K)) and their labels (N,), summed over them (`entrenar.distill`)."""


@dataclass(frozen=True)
class LossOutput:
    """What `CausalLM.forward` returns with labels.

    Attributes:
        loss: The cross-entropy: a float32 scalar summed (default) or averaged over the labelled tokens, or
            per position (shape of the labels, 0 where unlabelled) for reduction "none".
        tokens: Labelled tokens, an int64 scalar.
        predictions: With ``predict=True``: the arg-max token at every position, int64 (B, T).
        kd: With a ``kd`` function: its loss (summed over the labelled positions).
        hidden_states: With ``hidden_layers``: layer -> its output at the labelled positions (N, hidden_size).
    """

    loss: Tensor
    tokens: Tensor
    predictions: Tensor | None = None
    kd: Tensor | None = None
    hidden_states: dict[int, Tensor] | None = None


def head_operands(head: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(x, W)`` with ``x @ W.T`` the head's output on `hidden`, or None when the head has no such pair.

    Args:
        head: The LM head: an ``nn.Linear`` without bias, the tied ``nn.Embedding``, or a module with a
            ``matmul_operands(hidden)`` method (`entrenar.lora.LoRALinear`).
        hidden: (N, H).

    Returns:
        x (N, K) and W (V, K), W in x's dtype; or None.
    """
    if isinstance(head, nn.Embedding) or (isinstance(head, nn.Linear) and head.bias is None):
        weight: Tensor = head.weight
        return hidden, weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    operands = getattr(head, "matmul_operands", None)
    if not callable(operands):
        return None
    pair: tuple[Tensor, Tensor] | None = operands(hidden)
    return pair


def head_loss(
    head: nn.Module,
    logits: Callable[[Tensor], Tensor],
    hidden: Tensor,
    labels: Tensor,
    *,
    reduction: Reduction = "sum",
    chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE,
    predict: bool = False,
    kd: KDFn | None = None,
) -> LossOutput:
    """Cross-entropy of the head's logits on `hidden` against `labels` (module docstring).

    Args:
        head: The LM head module (see `head_operands`).
        logits: The model's hidden -> logits function (for predictions and heads without operands).
        hidden: Final hidden states (B, T, H).
        labels: Aligned labels (B, T), `IGNORE_INDEX` where masked.
        reduction: "sum" (what gradient accumulation wants), "mean" or "none".
        chunk_size: Tokens per chunk of logits, >= 1.
        predict: Also return the arg-max token at every position (chunked; no gradient).
        kd: A distillation loss on the head's operands at the labelled positions ("sum" reduction only).

    Returns:
        The `LossOutput`.

    Raises:
        ModelInputError: Labels that do not match the positions, or ``kd`` with another reduction or a head
            without operands.
    """
    if labels.shape != hidden.shape[:-1] or labels.dtype.is_floating_point:
        raise ModelInputError(
            f"labels must be token ids of shape {tuple(hidden.shape[:-1])} (batch, positions), "
            f"got {tuple(labels.shape)} {labels.dtype}"
        )
    predictions = _predictions(logits, hidden, chunk_size) if predict else None
    labelled = labels != IGNORE_INDEX
    if reduction != "none":
        keep = labelled.reshape(-1)
        hidden, labels = hidden.reshape(-1, hidden.shape[-1])[keep], labels.reshape(-1)[keep]
    flat = hidden.reshape(-1, hidden.shape[-1])
    operands = head_operands(head, flat)
    if kd is not None and (operands is None or reduction != "sum"):
        raise ModelInputError(
            "distillation needs the summed loss and an LM head whose logits are x @ W.T (plain, tied or LoRA, "
            "not DoRA or quantized)"
        )
    if operands is None:
        loss = F.cross_entropy(
            logits(flat).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
        ).reshape(labels.shape if reduction == "none" else ())
    else:
        x, weight = operands
        loss = chunked_causal_lm_loss(
            x, weight, labels.reshape(-1), chunk_size=chunk_size, ignore_index=IGNORE_INDEX, reduction=reduction
        ).reshape(labels.shape if reduction == "none" else ())
    distilled = None
    if kd is not None:
        assert operands is not None
        distilled = kd(operands[0], operands[1], labels.reshape(-1))
    return LossOutput(loss=loss, tokens=labelled.sum(), predictions=predictions, kd=distilled)


@torch.no_grad()
def _predictions(logits: Callable[[Tensor], Tensor], hidden: Tensor, chunk_size: int) -> Tensor:
    flat = hidden.reshape(-1, hidden.shape[-1])
    best = [logits(flat[start : start + chunk_size]).argmax(-1) for start in range(0, flat.shape[0], chunk_size)]
    return torch.cat(best).reshape(hidden.shape[:-1])
