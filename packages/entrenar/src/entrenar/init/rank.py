"""The LoRA rank and alpha `entrenar init` proposes, from the base model's size.

Rank by parameter count N (decimal billions, as model names count them: "0.5B", "7B"):

| N | rank | why |
|---|---|---|
| N < 1e9 | 16 | small models; LoRA found ranks 1-8 enough for GPT-3 on its tasks (Hu et al. 2021, §7.2) |
| 1e9 <= N < 1e10 | 64 | the 1-10B class; QLoRA (Dettmers et al. 2023) trains 7B-65B with r = 64 |
| N >= 1e10 | 128 | larger models are tuned on broader tasks; extra rank is cheap next to the frozen base |

The thresholds are exact: 999,999,999 parameters get 16 and 1,000,000,000 get 64.

Alpha: ``alpha = 2 * rank``, so the adapter's scale ``alpha / rank`` is 2 whatever the rank. A fixed
scale means changing the rank later does not change how large the update is for the same learning rate
(the LoRA paper keeps ``alpha`` tied to the first rank tried for the same reason, §4.1), and 2 is the
ratio Raschka's rank/alpha sweeps found best ("Practical Tips for Finetuning LLMs Using LoRA", 2023,
https://magazine.sebastianraschka.com/p/practical-tips-for-finetuning-llms).

References: LoRA, https://arxiv.org/abs/2106.09685; QLoRA, https://arxiv.org/abs/2305.14314.
"""

from __future__ import annotations

from entrenar.errors import InitError

__all__ = ["ALPHA_PER_RANK", "LARGE_MODEL_RANK", "RANK_BY_SIZE", "lora_alpha_for", "lora_rank_for"]

# (exclusive upper bound on the parameter count, rank), by increasing bound; larger models get LARGE_MODEL_RANK.
RANK_BY_SIZE: tuple[tuple[int, int], ...] = ((1_000_000_000, 16), (10_000_000_000, 64))
LARGE_MODEL_RANK = 128
ALPHA_PER_RANK = 2


def lora_rank_for(num_parameters: int) -> int:
    """The LoRA rank for a base model of this size (see the module docstring).

    Args:
        num_parameters: parameters of the base model, >= 1.

    Returns:
        16, 64 or 128.

    Raises:
        InitError: a count below 1.
    """
    if num_parameters < 1:
        raise InitError(f"num_parameters={num_parameters}: a model has at least one parameter")
    for bound, rank in RANK_BY_SIZE:
        if num_parameters < bound:
            return rank
    return LARGE_MODEL_RANK


def lora_alpha_for(rank: int) -> float:
    """The LoRA alpha for a rank: ``2 * rank`` (scale ``alpha / rank`` = 2; see the module docstring).

    Args:
        rank: the LoRA rank, >= 1.

    Returns:
        The alpha, as a float (the config's type).

    Raises:
        InitError: a rank below 1.
    """
    if rank < 1:
        raise InitError(f"rank={rank}: a LoRA rank is at least 1")
    return float(ALPHA_PER_RANK * rank)
