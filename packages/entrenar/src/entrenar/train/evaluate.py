"""Validation: loss, perplexity and next-token accuracy over a whole dataset, in one pass.

Every metric is over target tokens (labels that are not -100), pooled across batches: the loss is the
summed cross-entropy divided by the token count (not a mean of batch means), the perplexity is its
exponential (Jelinek et al. 1977, https://doi.org/10.1121/1.2016299) and the token accuracy the share of
positions whose arg-max logit is the label. The model runs in eval mode (no dropout) without gradients;
its previous mode is restored afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aprender.metrics import PerplexityAccumulator, TokenAccuracyAccumulator
from entrenar.autograd import PrecisionPolicy
from entrenar.data import DataLoader, Dataset
from entrenar.train.loss import CausalLMLoss

__all__ = ["EvalMetrics", "evaluate"]


@dataclass(frozen=True)
class EvalMetrics:
    """Validation results.

    Attributes:
        loss: Mean cross-entropy per target token (nats).
        perplexity: ``exp(loss)``.
        token_accuracy: Share of target tokens predicted exactly (greedy), in [0, 1].
        tokens: Target tokens evaluated.
        kl_to_teacher: With a distillation loss: the mean forward KL from the teacher(s) to the model per
            target token at temperature 1 (nats), else None.
    """

    loss: float
    perplexity: float
    token_accuracy: float
    tokens: int
    kl_to_teacher: float | None = None


@torch.no_grad()
def evaluate(
    loss: CausalLMLoss,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    precision: PrecisionPolicy,
) -> EvalMetrics:
    """Evaluate the loss's model on every sample of `dataset`, in dataset order.

    Args:
        loss: The training loss (its model and chunk size are used; the reduction must be ``"sum"``).
        dataset: Validation data (padded or packed).
        batch_size: Units per batch.
        device: Where the model is.
        precision: Autocast policy of the forward pass (the training one).

    Returns:
        The pooled metrics.
    """
    model = loss.model
    was_training = model.training
    model.eval()
    perplexity = PerplexityAccumulator()
    accuracy = TokenAccuracyAccumulator(ignore_index=loss.ignore_index)
    kl_to_teacher = getattr(loss, "kl_to_teacher", None)  # a distillation loss compares with its teacher
    kl_sum = 0.0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False).batches(0):
            on_device = {name: tensor.to(device) for name, tensor in batch.items()}
            with precision.autocast():
                summed, predictions = loss.batch_predictions(on_device)
                if kl_to_teacher is not None:
                    kl_sum += float(kl_to_teacher(on_device))
            perplexity.add_nll(summed, on_device["n_tokens"])
            accuracy.update(predictions, on_device["labels"])
    finally:
        model.train(was_training)
    tokens = perplexity.n_tokens
    return EvalMetrics(
        loss=perplexity.nll_sum / tokens,
        perplexity=perplexity.compute(),
        token_accuracy=accuracy.compute(),
        tokens=tokens,
        kl_to_teacher=None if kl_to_teacher is None else kl_sum / max(tokens, 1),
    )
