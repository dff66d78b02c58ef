"""Is the merged model gibberish? Its perplexity on some text next to each input's.

With ``eval_data`` (a text or JSONL file the training data readers take), every model (the merged one
and each input, each with its own tokenizer) is scored on it: mean next-token cross-entropy over every
token of the packed rows, and its exponential. A merged model whose perplexity exceeds
`WORSE_FACTOR` times the highest of its inputs' is far worse than every parent: the merge refuses to keep
it unless told to (a broken merge, such as mismatched tensors or a method applied with wrong parameters,
typically gives perplexities in the thousands).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aprender.text import Tokenizer
from entrenar.autograd import PrecisionPolicy
from entrenar.data import build_datasets
from entrenar.errors import MergeError
from entrenar.models import from_pretrained
from entrenar.train.evaluate import evaluate
from entrenar.train.loss import CausalLMLoss

__all__ = ["EVAL_SEQ_LEN", "WORSE_FACTOR", "ModelScore", "check_not_worse", "score_model"]

WORSE_FACTOR = 1.5
"""A merged model is refused when its perplexity is above this many times the worst input's."""
EVAL_SEQ_LEN = 512
"""Tokens per packed row of the evaluation text."""
_BATCH = 4


@dataclass(frozen=True)
class ModelScore:
    """One model's score on the evaluation text.

    Attributes:
        name: The model (an input's reference, or ``"merged"``).
        loss: Mean next-token cross-entropy per token (nats).
        perplexity: ``exp(loss)``.
        tokens: Tokens scored.
    """

    name: str
    loss: float
    perplexity: float
    tokens: int


def score_model(name: str, folder: Path, eval_data: str | os.PathLike[str]) -> ModelScore:
    """Perplexity of the model in `folder` on the evaluation text, with its own tokenizer.

    Args:
        name: For the score.
        folder: A Hugging Face model folder.
        eval_data: A file the training data readers take (plain text, JSONL ...).

    Returns:
        The score.

    Raises:
        DataError: The file cannot be read as training data.
    """
    tokenizer = Tokenizer.from_dir(folder)
    dataset, _ = build_datasets(eval_data, tokenizer=tokenizer, seq_len=EVAL_SEQ_LEN, train_on="all", packing=True)
    model = from_pretrained(folder, dtype="float32").eval()
    device = torch.device("cpu")
    metrics = evaluate(
        CausalLMLoss(model),
        dataset,
        batch_size=_BATCH,
        device=device,
        precision=PrecisionPolicy.for_device(device, torch.float32),
    )
    return ModelScore(name, metrics.loss, metrics.perplexity, metrics.tokens)


def check_not_worse(merged: ModelScore, inputs: Sequence[ModelScore]) -> None:
    """Refuse a merged model far worse than every input (`WORSE_FACTOR`).

    Raises:
        MergeError: One line with the perplexities and what to do.
    """
    worst = max(score.perplexity for score in inputs)
    if merged.perplexity > WORSE_FACTOR * worst:
        raise MergeError(
            f"the merged model's perplexity {merged.perplexity:.4g} is more than {WORSE_FACTOR}x the worst input's "
            f"({worst:.4g}) on the evaluation text, so it was not kept; check the method and parameters, or pass "
            "--keep-worse to keep it"
        )
