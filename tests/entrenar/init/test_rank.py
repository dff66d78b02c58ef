"""`entrenar.init.rank`: the LoRA rank by model size (the spec's 64 for 0.5B, 128 for 7B), exactly at the threshold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrenar.errors import InitError
from entrenar.init import LORA_ALPHA, lora_rank_for


@pytest.mark.parametrize(
    ("num_parameters", "rank"),
    [
        (1, 64),
        (135_000_000, 64),  # SmolLM2-135M
        (494_032_768, 64),  # Qwen2.5-0.5B: the spec's "rank 64 for 0.5B"
        (999_999_999, 64),
        (1_000_000_000, 128),
        (3_085_938_688, 128),  # Qwen2.5-3B, in between
        (7_615_616_512, 128),  # Qwen2.5-7B: the spec's "128 for 7B"
        (70_553_706_496, 128),  # Llama-3-70B, above
    ],
)
def test_rank_at_and_around_the_thresholds(num_parameters: int, rank: int) -> None:
    assert lora_rank_for(num_parameters) == rank


@given(st.integers(1, 10**12), st.integers(1, 10**12))
def test_rank_never_decreases_with_size(a: int, b: int) -> None:
    small, large = sorted((a, b))
    assert lora_rank_for(small) <= lora_rank_for(large)


def test_alpha_is_the_specs_16() -> None:
    assert LORA_ALPHA == 16.0 and isinstance(LORA_ALPHA, float)  # the config's type


def test_invalid_inputs() -> None:
    with pytest.raises(InitError, match=r"num_parameters=0"):
        lora_rank_for(0)
