"""A tiny causal language model for the gradient-engine tests, and micro-batches with uneven padding.

The model is an embedding, a stack of causal blocks (prefix-mean token mixing + a dropout MLP, so each
position sees only itself and earlier ones) and an LM head; the loss is aprender's chunked causal-LM
cross-entropy on the final hidden states. Small enough that a forward + backward takes milliseconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from aprender.loss import Reduction, chunked_causal_lm_loss, shift_labels

VOCAB = 13
HIDDEN = 8


class CausalBlock(nn.Module):
    """``x + mlp(prefix_mean(x))``; counts its forward calls (recomputation under checkpointing adds one)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mix = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden)
        )
        self.calls = 0

    def forward(self, x: torch.Tensor, *, gain: float = 1.0) -> torch.Tensor:
        self.calls += 1
        positions = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        prefix_mean = x.cumsum(dim=1) / positions
        return x + gain * self.mlp(torch.tanh(self.mix(prefix_mean)))


class TinyLM(nn.Module):
    """Embedding -> `num_layers` causal blocks -> LM head (no bias), weights drawn from `seed`."""

    def __init__(self, num_layers: int = 2, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList([CausalBlock(HIDDEN, dropout) for _ in range(num_layers)])
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward_hidden(self, input_ids: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, gain=gain)
        return x

    def loss(self, batch: dict[str, torch.Tensor], reduction: Reduction = "sum") -> torch.Tensor:
        """Cross-entropy of the next-token predictions against the (already shifted) labels."""
        hidden = self.forward_hidden(batch["input_ids"])
        return chunked_causal_lm_loss(
            hidden, self.lm_head.weight.to(hidden.dtype), batch["labels"], chunk_size=5, reduction=reduction
        )


def make_batch(lengths: list[int], prompt_lengths: list[int], seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded sequences: ``lengths[i]`` real tokens, the first ``prompt_lengths[i]`` masked from the loss.

    Labels are the input ids with -100 at padding and prompt positions, shifted to align with the positions
    that predict them (``shift_labels``).
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), seq_len), generator=g)
    labels = ids.clone()
    for row, (length, prompt) in enumerate(zip(lengths, prompt_lengths, strict=True)):
        ids[row, length:] = 0
        labels[row, length:] = -100
        labels[row, :prompt] = -100
    return {"input_ids": ids, "labels": shift_labels(labels)}


def split(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into micro-batches of `size` rows."""
    rows = batch["input_ids"].shape[0]
    return [{key: value[start : start + size] for key, value in batch.items()} for start in range(0, rows, size)]


@pytest.fixture(scope="session")
def lm() -> SimpleNamespace:
    """The helpers of this file: ``lm.TinyLM``, ``lm.make_batch``, ``lm.split``, ``lm.VOCAB``."""
    return SimpleNamespace(TinyLM=TinyLM, make_batch=make_batch, split=split, VOCAB=VOCAB)
