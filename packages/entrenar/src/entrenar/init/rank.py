"""The LoRA rank and alpha `entrenar init` proposes, from the base model's size.

Rank by parameter count N (decimal billions, as model names count them: "0.5B", "7B"), the spec's table
("rank 64 for 0.5B, 128 for 7B") extended to every size:

| N | rank | models | adapter (all-linear) |
|---|---|---|---|
| N < 1e9 | 64 | 135M-0.9B (SmolLM2, Qwen2.5-0.5B) | Qwen2.5-0.5B: 35.2M parameters, 7.1% of the base |
| N >= 1e9 | 128 | 1B-3B in between, 7B, and larger | Qwen2.5-7B: 323M (4.2%); Llama-3-70B: 1.66B (2.3%) |

The thresholds are exact: 999,999,999 parameters get 64 and 1,000,000,000 get 128. QLoRA (Dettmers
et al. 2023) trains 7B-65B with r = 64 and finds the rank matters little once every linear layer is
adapted; 64 leaves models below 1B ample capacity, and the wider 1-10B models get twice that. Above 10B
the rank stays at 128: the adapter grows with width x depth x rank (``rank`` times the sum of
``in + out`` over q, k, v, o, gate, up and down, times the layers), so 128 already gives a 70B model
1.66B trainable parameters, each with its optimizer state.

Alpha: 16 at every rank, the setting of QLoRA's Guanaco runs (r = 64, alpha = 16), so the adapter's
scale ``alpha / rank`` is 0.25 at rank 64 and 0.125 at 128. LoRA scales by ``alpha / rank`` with alpha
fixed so that changing the rank needs no new learning rate (Hu et al. 2021, §4.1: "this scaling helps
to reduce the need to retune hyperparameters when we vary r").

References: LoRA, https://arxiv.org/abs/2106.09685; QLoRA, https://arxiv.org/abs/2305.14314.
"""

from __future__ import annotations

from entrenar.errors import InitError

__all__ = ["LARGE_MODEL_RANK", "LORA_ALPHA", "RANK_BY_SIZE", "lora_rank_for"]

# (exclusive upper bound on the parameter count, rank), by increasing bound; larger models get LARGE_MODEL_RANK.
RANK_BY_SIZE: tuple[tuple[int, int], ...] = ((1_000_000_000, 64),)
LARGE_MODEL_RANK = 128
LORA_ALPHA = 16.0


def lora_rank_for(num_parameters: int) -> int:
    """The LoRA rank for a base model of this size (see the module docstring).

    Args:
        num_parameters: parameters of the base model, >= 1.

    Returns:
        64 or 128.

    Raises:
        InitError: a count below 1.
    """
    if num_parameters < 1:
        raise InitError(f"num_parameters={num_parameters}: a model has at least one parameter")
    for bound, rank in RANK_BY_SIZE:
        if num_parameters < bound:
            return rank
    return LARGE_MODEL_RANK
