"""`entrenar.init.rank`: the LoRA rank by model size, exactly at the thresholds, and alpha = 2 * rank."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrenar.errors import InitError
from entrenar.init import lora_alpha_for, lora_rank_for


@pytest.mark.parametrize(
    ("num_parameters", "rank"),
    [
        (1, 16),
        (135_000_000, 16),  # SmolLM2-135M
        (494_032_768, 16),  # Qwen2.5-0.5B
        (999_999_999, 16),
        (1_000_000_000, 64),
        (7_615_616_512, 64),  # Qwen2.5-7B
        (9_999_999_999, 64),
        (10_000_000_000, 128),
        (70_553_706_496, 128),  # Llama-3-70B
    ],
)
def test_rank_at_and_around_the_thresholds(num_parameters: int, rank: int) -> None:
    assert lora_rank_for(num_parameters) == rank


@given(st.integers(1, 10**12), st.integers(1, 10**12))
def test_rank_never_decreases_with_size(a: int, b: int) -> None:
    small, large = sorted((a, b))
    assert lora_rank_for(small) <= lora_rank_for(large)


@pytest.mark.parametrize(("rank", "alpha"), [(1, 2.0), (16, 32.0), (64, 128.0), (128, 256.0)])
def test_alpha_is_twice_the_rank(rank: int, alpha: float) -> None:
    result = lora_alpha_for(rank)
    assert result == alpha and isinstance(result, float)


def test_invalid_inputs() -> None:
    with pytest.raises(InitError, match=r"num_parameters=0"):
        lora_rank_for(0)
    with pytest.raises(InitError, match=r"rank=0"):
        lora_alpha_for(0)
