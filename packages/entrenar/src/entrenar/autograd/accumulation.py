"""Gradient accumulation normalised by the token count of the whole accumulated batch.

A step over k micro-batches should produce the gradient of one big batch whose loss is the mean over all
its target tokens. Averaging each micro-batch's *mean* loss and dividing by k does not: a micro-batch with
few target tokens then weighs as much as one with many (the bug fixed across Hugging Face trainers in 2024,
https://huggingface.co/blog/gradient_accumulation). The correct scaling is known only once every
micro-batch's token count is, so the count comes first:

1. N = the number of labels != ignore_index over the k micro-batches (`count_target_tokens`);
2. for each micro-batch, ``backward(sum of its token losses / N)``: the gradients add up to those of the
   big batch's mean loss, however unevenly the tokens (padding, masked prompts) fall.

`backward_accumulated` does both steps for a list of micro-batches; `GradientAccumulator` is step 2 for a
loop that drives the forward passes itself. A loss may come in named parts (`LossParts`: cross-entropy,
distillation ...); the total is what is backpropagated, and each part is averaged the same way for logging.
Labels must be aligned with the positions whose loss is summed (``aprender.loss.shift_labels`` for
next-token prediction), so the count matches the summed tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from entrenar.autograd.precision import LossScaler, PrecisionPolicy
from entrenar.errors import GradientEngineError

MicroBatch = Mapping[str, Any]
"""One micro-batch: tensors by name, with the target token ids under the labels key, shape (B, T)."""

BatchT = TypeVar("BatchT", bound=MicroBatch)


@dataclass(frozen=True)
class LossParts:
    """A micro-batch's summed loss and its named parts, each summed over the same target tokens.

    Attributes:
        total: What is optimized, a scalar that requires grad (e.g. ``(1 - a) * ce + a * kd``).
        parts: Each part by name (``"ce"``, ``"kd"`` ...), scalars; logged, not backpropagated.
    """

    total: torch.Tensor
    parts: Mapping[str, torch.Tensor]


LossFn = Callable[[BatchT], torch.Tensor | LossParts]
"""Forward pass + loss of one micro-batch: the SUM of its per-token losses (``reduction="sum"``), a scalar,
or `LossParts` with that sum as the total."""


@dataclass(frozen=True)
class AccumulationResult:
    """What one accumulated backward reports.

    Attributes:
        loss: Mean loss per target token over all micro-batches (the big batch's mean loss), for logging.
        num_tokens: Target tokens (labels != ignore_index) over all micro-batches.
        num_micro_batches: Backward passes taken.
        parts: Each named part of the loss, averaged like `loss` (empty for a plain tensor loss).
    """

    loss: float
    num_tokens: int
    num_micro_batches: int
    parts: dict[str, float] = field(default_factory=dict)


def count_target_tokens(
    micro_batches: Iterable[MicroBatch], *, labels_key: str = "labels", ignore_index: int = -100
) -> int:
    """Count the labels that are not `ignore_index` over all micro-batches, with one host sync.

    Args:
        micro_batches: The micro-batches of one optimizer step.
        labels_key: Key of the label tensor in each micro-batch.
        ignore_index: Label value of positions without a loss.

    Returns:
        The number of target tokens.

    Raises:
        GradientEngineError: If a micro-batch has no tensor under `labels_key`.
    """
    counts = [(_labels(batch, index, labels_key) != ignore_index).sum() for index, batch in enumerate(micro_batches)]
    if not counts:
        return 0
    device = counts[0].device
    return int(torch.stack([c.to(device) for c in counts]).sum().item())


def _labels(batch: MicroBatch, index: int, labels_key: str) -> torch.Tensor:
    labels = batch.get(labels_key) if isinstance(batch, Mapping) else None
    if not isinstance(labels, torch.Tensor):
        raise GradientEngineError(
            f"micro-batch {index} has no tensor under {labels_key!r}; pass mappings that hold the aligned "
            "target ids (ignore_index where masked) under that key, or set labels_key"
        )
    return labels


class GradientAccumulator:
    """Backward for each micro-batch's summed loss, scaled by 1 / (target tokens of all micro-batches).

    Example (count first, then one backward per micro-batch)::

        acc = GradientAccumulator(count_target_tokens(batches), scaler=scaler)
        for batch in batches:
            with policy.autocast():
                summed = loss_fn(batch)
            acc.backward(summed)
        result = acc.result()
    """

    def __init__(self, num_tokens: int, *, scaler: LossScaler | None = None) -> None:
        """Start accumulating one optimizer step.

        Args:
            num_tokens: Target tokens over all micro-batches of the step (`count_target_tokens`), >= 0. With
                0 every loss is divided by 1 instead: the gradients are zero, the reported loss 0.
            scaler: Multiplies each loss by the float16 loss scale before backward; None: no scaling.

        Raises:
            GradientEngineError: If `num_tokens` is not an integer >= 0.
        """
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 0:
            raise GradientEngineError(f"GradientAccumulator: num_tokens={num_tokens!r} must be an integer >= 0")
        self._num_tokens = num_tokens
        self._scaler = scaler if scaler is not None else LossScaler(None)
        self._total: torch.Tensor | None = None
        self._parts: dict[str, torch.Tensor] = {}
        self._steps = 0

    def backward(self, summed_loss: torch.Tensor | LossParts) -> None:
        """Backpropagate one micro-batch: ``scale(summed_loss / num_tokens).backward()``.

        Args:
            summed_loss: Sum of the micro-batch's per-token losses, a scalar that requires grad, or
                `LossParts` holding it as the total.

        Raises:
            GradientEngineError: If the (total) loss is not a scalar tensor that requires grad.
        """
        parts = summed_loss.parts if isinstance(summed_loss, LossParts) else {}
        total = summed_loss.total if isinstance(summed_loss, LossParts) else summed_loss
        if not isinstance(total, torch.Tensor) or total.dim() != 0:
            shape = tuple(total.shape) if isinstance(total, torch.Tensor) else type(total).__name__
            raise GradientEngineError(
                f"GradientAccumulator.backward: got {shape}; pass the micro-batch's summed token loss as a "
                "scalar tensor (reduction='sum')"
            )
        if not total.requires_grad:
            raise GradientEngineError(
                "GradientAccumulator.backward: the loss does not require grad; compute it with grad enabled "
                "from a model with trainable parameters"
            )
        self._scaler.scale(total / max(self._num_tokens, 1)).backward()
        detached = total.detach().float()
        self._total = detached if self._total is None else self._total + detached
        for name, part in parts.items():
            value = part.detach().float()
            self._parts[name] = self._parts[name] + value if name in self._parts else value
        self._steps += 1

    def result(self) -> AccumulationResult:
        """The token-weighted mean loss of the micro-batches so far (one host sync)."""
        total = 0.0 if self._total is None else float(self._total.item())
        tokens = max(self._num_tokens, 1)
        return AccumulationResult(
            loss=total / tokens,
            num_tokens=self._num_tokens,
            num_micro_batches=self._steps,
            parts={name: float(part.item()) / tokens for name, part in self._parts.items()},
        )


def backward_accumulated(
    micro_batches: Iterable[BatchT],
    loss_fn: LossFn[BatchT],
    *,
    labels_key: str = "labels",
    ignore_index: int = -100,
    precision: PrecisionPolicy | None = None,
    scaler: LossScaler | None = None,
) -> AccumulationResult:
    """Accumulate the gradients of k micro-batches as those of one batch with a mean-over-tokens loss.

    Counts the target tokens N of all micro-batches first, then for each one runs ``loss_fn`` (under the
    policy's autocast) and backpropagates ``loss / N``. Gradients are added to ``.grad`` (zero them before).

    Args:
        micro_batches: The micro-batches of one optimizer step, each a mapping with labels (B, T).
        loss_fn: Returns a micro-batch's summed per-token loss (e.g. ``chunked_causal_lm_loss(...,
            reduction="sum")``) over exactly the positions whose label is not `ignore_index`, or `LossParts`.
        labels_key: Key of the labels in each micro-batch.
        ignore_index: Label value of positions without a loss.
        precision: Runs each forward pass under its autocast; None: no autocast.
        scaler: Scales each loss before backward (float16); None: no scaling.

    Returns:
        The mean loss per target token (and of each part), the token count and the number of micro-batches.

    Raises:
        GradientEngineError: If there are no micro-batches, a micro-batch lacks labels, or `loss_fn` returns
            something other than a scalar that requires grad.
    """
    batches = list(micro_batches)
    if not batches:
        raise GradientEngineError("backward_accumulated: no micro-batches; pass at least one per optimizer step")
    accumulator = GradientAccumulator(
        count_target_tokens(batches, labels_key=labels_key, ignore_index=ignore_index), scaler=scaler
    )
    for batch in batches:
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            summed = loss_fn(batch)
        accumulator.backward(summed)
    return accumulator.result()
