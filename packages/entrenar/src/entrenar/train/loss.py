"""`CausalLMLoss`: the trainer's loss step, the model's own next-token loss reported by named parts.

The loss is computed inside the model's forward (``model(..., labels=labels)``, `entrenar.models.head_loss`:
chunked cross-entropy through the LM head, only labelled positions reaching it), so whatever wraps the
model (DDP, FSDP2) sees it. `CausalLMLoss.loss_step` is the `entrenar.autograd.LossFn` of the trainer: the
summed loss as `LossParts` with one part, ``ce``; other techniques (distillation) add theirs.

The default reduction is ``"sum"``: `entrenar.autograd` divides by the token count of the whole
accumulated step, so k micro-batches give exactly one big batch's gradient.

For a bare `CausalLM`, the object is also an `aprender.loss.Loss` over final hidden states:
``loss(hidden, labels)`` (hidden from ``CausalLM.forward_hidden``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from entrenar.autograd import LossParts
from entrenar.models import CausalLM
from entrenar.models.head_loss import DEFAULT_LOSS_CHUNK_SIZE, IGNORE_INDEX, LossOutput, Reduction, head_loss

__all__ = ["DEFAULT_CHUNK_SIZE", "CausalLMLoss", "LossParts", "batch_hidden_states"]

DEFAULT_CHUNK_SIZE = DEFAULT_LOSS_CHUNK_SIZE


def batch_hidden_states(model: CausalLM, batch: Mapping[str, Tensor]) -> Tensor:
    """Run the model body on a batch as `entrenar.data.DataLoader` yields it.

    Args:
        model: The model.
        batch: ``input_ids`` (B, T); optionally ``attention_mask``, ``position_ids`` and ``seq_ids`` (B, T)
            (packed batches carry all of them); other keys (``labels``) are ignored.

    Returns:
        Final hidden states, shape (B, T, H).
    """
    return model.forward_hidden(
        batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"), batch.get("seq_ids")
    )


@dataclass(frozen=True, eq=False)
class CausalLMLoss:
    """Next-token cross-entropy of a model, through the model's forward.

    Attributes:
        model: The model, or whatever wraps it (its forward must accept ``labels=`` and return a
            `entrenar.models.LossOutput`).
        chunk_size: Tokens per chunk of logits, >= 1.
        reduction: ``"sum"`` (default; what gradient accumulation wants), ``"mean"`` or ``"none"``.

    Example:
        >>> loss = CausalLMLoss(model)  # doctest: +SKIP
        >>> loss.batch_loss(batch)  # the summed token loss, a scalar  # doctest: +SKIP
    """

    name: ClassVar[str] = "causal_lm"
    ignore_index: ClassVar[int] = IGNORE_INDEX
    model: nn.Module
    chunk_size: int = DEFAULT_CHUNK_SIZE
    reduction: Reduction = "sum"

    def __call__(self, pred: Tensor, target: Tensor, /) -> Tensor:
        """Cross-entropy of a bare `CausalLM`'s LM head on final hidden states.

        Args:
            pred: Final hidden states, shape (B, T, H) or (N, H).
            target: Aligned labels, shape (B, T) or (N,), -100 where masked.

        Returns:
            A float32 scalar (``"sum"``/``"mean"``) or per-position losses shaped like `target` (``"none"``).
        """
        model = self.model
        assert isinstance(model, CausalLM), "the hidden-state form needs the bare CausalLM"
        output = head_loss(
            model.output_embeddings(), model.logits, pred, target, reduction=self.reduction, chunk_size=self.chunk_size
        )
        return output.loss

    def forward(self, batch: Mapping[str, Tensor], *, predict: bool = False) -> LossOutput:
        """The model's forward with labels on a batch as `entrenar.data.DataLoader` yields it.

        Args:
            batch: ``input_ids`` (B, T) and ``labels`` (B, T), optionally ``attention_mask``,
                ``position_ids`` and ``seq_ids`` (B, T); on the model's device.
            predict: Also return the arg-max token at every position.

        Returns:
            The model's `LossOutput`.
        """
        return self._forward(batch, reduction=self.reduction, predict=predict)

    def _forward(self, batch: Mapping[str, Tensor], **options: Any) -> LossOutput:
        """The model's forward with the batch's inputs and labels, at `chunk_size`, and `options` (its keywords)."""
        output: Any = self.model(
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("position_ids"),
            batch.get("seq_ids"),
            labels=batch["labels"],
            loss_chunk_size=self.chunk_size,
            **options,
        )
        assert isinstance(output, LossOutput)
        return output

    def at_step(self, step: int) -> None:
        """Called before the forward passes of optimizer step `step` (0-based); a plain loss has no schedule."""

    def batch_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's loss (as `__call__`), through the model's forward."""
        return self.forward(batch).loss

    def loss_step(self, batch: Mapping[str, Tensor]) -> LossParts:
        """The trainer's loss step: the summed loss, as its one part ``ce``."""
        loss = self.forward(batch).loss
        return LossParts(total=loss, parts={"ce": loss})

    def batch_predictions(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The loss and the arg-max prediction at every position, without materialising all logits.

        Args:
            batch: As `forward`.

        Returns:
            The loss (as `batch_loss`) and the predicted token ids, int64 of shape (B, T).
        """
        output = self.forward(batch, predict=True)
        assert output.predictions is not None
        return output.loss, output.predictions
