"""Logits processors and the next-token choice: repetition penalty, temperature, top-k, top-p.

Each processor maps next-token scores (B, V) to new scores with the semantics of the transformers class
of the same name (`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper` with ``min_tokens_to_keep=1``), and `TokenSampler` chains them in transformers'
order: the repetition penalty always, then, only when sampling, temperature, top-k and top-p; it then
takes the argmax (greedy) or draws from the softmax (``torch.multinomial``).

- Repetition penalty: Keskar et al. 2019 (CTRL), https://arxiv.org/abs/1909.05858, section 4.1.
- Top-k sampling: Fan et al. 2018, https://arxiv.org/abs/1805.04833.
- Top-p (nucleus) sampling: Holtzman et al. 2019, https://arxiv.org/abs/1904.09751.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from entrenar.errors import GenerationError

__all__ = [
    "TokenSampler",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "token_presence",
]


def token_presence(token_ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device | None = None) -> Tensor:
    """Which vocabulary entries each row has seen: the set the repetition penalty acts on.

    Args:
        token_ids: B lists of token ids in ``[0, vocab_size)``.
        vocab_size: V.
        device: Where to build the mask.

    Returns:
        Boolean tensor (B, V), True where the row holds the token.
    """
    seen = torch.zeros(len(token_ids), vocab_size, dtype=torch.bool, device=device)
    for row, ids in enumerate(token_ids):
        seen[row, torch.as_tensor(list(ids), dtype=torch.long, device=device)] = True
    return seen


def apply_repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Make tokens already seen less likely: negative scores are multiplied by `penalty`, others divided.

    Each seen token is penalised once, however often it occurred (CTRL, section 4.1).

    Args:
        scores: Next-token scores, shape (B, V).
        seen: Boolean (B, V), True for tokens in the row's prompt or output so far.
        penalty: Above 1 discourages repetition, below 1 encourages it; 1 leaves the scores unchanged.

    Returns:
        New scores, shape (B, V).
    """
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def apply_temperature(scores: Tensor, temperature: float) -> Tensor:
    """Divide the scores by `temperature` (below 1 sharpens the distribution, above 1 flattens it).

    Args:
        scores: Shape (B, V).
        temperature: Strictly positive.

    Returns:
        Shape (B, V).
    """
    return scores / temperature


def apply_top_k(scores: Tensor, k: int) -> Tensor:
    """Keep the `k` highest scores of each row (and any tied with the k-th); set the rest to -inf.

    Args:
        scores: Shape (B, V).
        k: Tokens to keep, at least 1; values above V keep everything.

    Returns:
        Shape (B, V).
    """
    kth = torch.topk(scores, min(k, scores.shape[-1]), dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def apply_top_p(scores: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least `top_p`; -inf the rest.

    With tokens sorted by ascending score, a token is dropped when the cumulative probability up to and
    including it is at most ``1 - top_p``; the most likely token is always kept.

    Args:
        scores: Shape (B, V).
        top_p: In [0, 1]; 1 keeps every token, 0 only the most likely.

    Returns:
        Shape (B, V).
    """
    ascending, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, -math.inf)


@dataclass(frozen=True)
class TokenSampler:
    """How the next token is chosen from the model's scores.

    Attributes:
        do_sample: Draw from the processed distribution; False takes the argmax (greedy).
        temperature: Scores are divided by it before sampling (sampling only).
        top_k: Keep only the k most likely tokens (sampling only); 0 disables.
        top_p: Nucleus mass to keep (sampling only); 1 disables.
        repetition_penalty: CTRL penalty on tokens already in the row (greedy and sampling); 1 disables.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise GenerationError(f"temperature={self.temperature} must be a finite number above 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationError(f"top_k={self.top_k!r} must be a whole number >= 0 (0 keeps every token)")
        if not 0 <= self.top_p <= 1:
            raise GenerationError(f"top_p={self.top_p} must be between 0 and 1 (1 keeps every token)")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationError(
                f"repetition_penalty={self.repetition_penalty} must be a finite number above 0 (1 disables it)"
            )
        if not self.do_sample:
            unused = [
                f"{name}={value}"
                for name, value, neutral in (
                    ("temperature", self.temperature, 1.0),
                    ("top_k", self.top_k, 0),
                    ("top_p", self.top_p, 1.0),
                )
                if value != neutral
            ]
            if unused:
                verb = "apply" if len(unused) > 1 else "applies"
                raise GenerationError(f"{', '.join(unused)} only {verb} when sampling; pass do_sample=True or drop it")

    @property
    def uses_seen_tokens(self) -> bool:
        """Whether `process` needs the mask of tokens seen so far (the repetition penalty is on)."""
        return self.repetition_penalty != 1.0

    def process(self, scores: Tensor, seen: Tensor | None) -> Tensor:
        """Apply the enabled processors in transformers' order.

        Args:
            scores: Float scores, shape (B, V).
            seen: Boolean (B, V) of tokens seen per row; required when `uses_seen_tokens`.

        Returns:
            Processed scores, shape (B, V).
        """
        if self.uses_seen_tokens:
            assert seen is not None, "the repetition penalty needs the seen-token mask"
            scores = apply_repetition_penalty(scores, seen, self.repetition_penalty)
        if self.do_sample:
            if self.temperature != 1.0:
                scores = apply_temperature(scores, self.temperature)
            if self.top_k:
                scores = apply_top_k(scores, self.top_k)
            if self.top_p < 1.0:
                scores = apply_top_p(scores, self.top_p)
        return scores

    def choose(self, scores: Tensor, seen: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Pick one token per row.

        Args:
            scores: Float scores, shape (B, V).
            seen: Boolean (B, V) of tokens seen per row (see `process`).
            generator: Random source for sampling; None uses torch's global one.

        Returns:
            Token ids, int64 shape (B,).
        """
        processed = self.process(scores, seen)
        if not self.do_sample:
            return processed.argmax(dim=-1)
        probs = processed.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
