"""How much quantization changed a model: perplexities and the KL divergence of next-token distributions.

The figures ``llama-perplexity --kl-divergence`` gives, computed by our decoder on both models: the evaluation
text is read and packed as `entrenar.merge.evaluate.score_model` reads it (the same tokens, so the perplexities
are the ones ``entrenar prune``/``merge`` report), both models run on each row (float32, both loaded at once),
and at every labelled position:

- the next-token negative log-likelihood under each model (perplexity: ``exp`` of the mean);
- ``KL(P_original || P_quantized) = Σ_v p_o(v) (log p_o(v) - log p_q(v))`` over the vocabulary (nats): the mean,
  the 99th percentile and the maximum over positions;
- whether both models put their highest probability on the same token ("same top").

Logits are formed `CHUNK` positions at a time, so memory holds (`CHUNK`, vocabulary) per model, not the row's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from aprender.text import Tokenizer
from entrenar.constants import IGNORE_INDEX
from entrenar.data import DataLoader, build_datasets
from entrenar.merge.evaluate import EVAL_SEQ_LEN
from entrenar.models import CausalLM, from_pretrained

__all__ = ["CHUNK", "QuantQuality", "compare_models"]

CHUNK = 256
"""Positions whose logits are formed at once."""


@dataclass(frozen=True)
class QuantQuality:
    """The quantized model against the original on one text.

    Attributes:
        tokens: Positions scored.
        original_perplexity: The original model's perplexity.
        quantized_perplexity: The quantized model's.
        kl_mean: Mean ``KL(P_original || P_quantized)`` per position (nats).
        kl_p99: Its 99th percentile.
        kl_max: Its maximum.
        same_top: Share of positions where both models' most likely token is the same, in [0, 1].
    """

    tokens: int
    original_perplexity: float
    quantized_perplexity: float
    kl_mean: float
    kl_p99: float
    kl_max: float
    same_top: float

    def line(self) -> str:
        """One line for the log."""
        return (
            f"perplexity {self.original_perplexity:.4g} -> {self.quantized_perplexity:.4g}, mean KL "
            f"{self.kl_mean:.4g} nats (99th percentile {self.kl_p99:.4g}, max {self.kl_max:.4g}), same top "
            f"token {100 * self.same_top:.2f}% ({self.tokens} tokens)"
        )


@torch.no_grad()
def compare_models(
    original_dir: Path, quantized_dir: Path, eval_data: str | os.PathLike[str], *, device: torch.device | None = None
) -> QuantQuality:
    """Score the quantized model against the original on `eval_data` (module docstring).

    Args:
        original_dir: The original model's folder (its tokenizer reads the text).
        quantized_dir: The quantized model, dequantized into a model folder of the same architecture.
        eval_data: A file the training data readers take.
        device: Where both models run; None: the CPU.

    Returns:
        The comparison.

    Raises:
        DataError: The file cannot be read as training data.
    """
    where = device or torch.device("cpu")
    tokenizer = Tokenizer.from_dir(original_dir)
    dataset, _ = build_datasets(eval_data, tokenizer=tokenizer, seq_len=EVAL_SEQ_LEN, train_on="all", packing=True)
    original = from_pretrained(original_dir, dtype="float32", device=where).eval()
    quantized = from_pretrained(quantized_dir, dtype="float32", device=where).eval()
    nll_original = nll_quantized = 0.0
    same, kls = 0, []
    for batch in DataLoader(dataset, batch_size=1, shuffle=False).batches(0):
        on = {name: tensor.to(where) for name, tensor in batch.items()}
        keep = on["labels"] != IGNORE_INDEX
        hidden = [
            model.forward_hidden(on["input_ids"], on.get("attention_mask"), on.get("position_ids"), on.get("seq_ids"))[
                keep
            ]
            for model in (original, quantized)
        ]
        targets = on["labels"][keep]
        for start in range(0, targets.shape[0], CHUNK):
            logp_o, logp_q = (
                _log_probs(model, states[start : start + CHUNK])
                for model, states in zip((original, quantized), hidden, strict=True)
            )
            target = targets[start : start + CHUNK, None]
            nll_original -= float(logp_o.gather(1, target).sum())
            nll_quantized -= float(logp_q.gather(1, target).sum())
            kls.append((logp_o.exp() * (logp_o - logp_q)).sum(dim=1).cpu())
            same += int((logp_o.argmax(dim=1) == logp_q.argmax(dim=1)).sum())
    kl = torch.cat(kls) if kls else torch.zeros(0)
    tokens = int(kl.numel())
    return QuantQuality(
        tokens=tokens,
        original_perplexity=math.exp(nll_original / tokens),
        quantized_perplexity=math.exp(nll_quantized / tokens),
        kl_mean=float(kl.double().mean()),
        kl_p99=float(torch.quantile(kl.double(), 0.99)),
        kl_max=float(kl.max()),
        same_top=same / tokens,
    )


def _log_probs(model: CausalLM, hidden: torch.Tensor) -> torch.Tensor:
    return model.logits(hidden).float().log_softmax(dim=-1)
