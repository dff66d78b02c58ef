"""LoraConfig: validation at the edge and the scaling rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrenar.errors import EntrenarError, LoraError
from entrenar.lora import ALL_LINEAR, LoraConfig


@given(rank=st.integers(1, 4096), alpha=st.floats(1e-3, 1e4))
def test_scaling_is_alpha_over_rank_or_over_sqrt_rank(rank: int, alpha: float) -> None:
    # Hu et al. (alpha / r) and rsLoRA (alpha / sqrt(r)), computed by hand here.
    assert LoraConfig(rank=rank, alpha=alpha).scaling == pytest.approx(alpha / rank, rel=1e-12)
    assert LoraConfig(rank=rank, alpha=alpha, use_rslora=True).scaling == pytest.approx(alpha / math.sqrt(rank))


def test_scaling_worked_example() -> None:
    assert LoraConfig(rank=16, alpha=32).scaling == 2.0
    assert LoraConfig(rank=16, alpha=32, use_rslora=True).scaling == 8.0  # 32 / sqrt(16)


def test_target_modules_normalised() -> None:
    assert LoraConfig(target_modules=["q_proj", "v_proj", "q_proj"]).target_modules == ("q_proj", "v_proj")
    assert LoraConfig(target_modules="ALL-Linear").target_modules == ALL_LINEAR
    assert LoraConfig(target_modules=r".*\.q_proj").target_modules == r".*\.q_proj"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 0}, "rank 0"),
        ({"rank": 2.0}, "rank 2.0"),
        ({"rank": True}, "rank True"),
        ({"alpha": 0}, "alpha 0"),
        ({"alpha": math.inf}, "alpha inf"),
        ({"alpha": "8"}, "alpha '8'"),
        ({"dropout": 1.0}, "dropout 1.0"),
        ({"dropout": -0.1}, "dropout -0.1"),
        ({"init": "olora"}, "init 'olora'"),
        ({"target_modules": []}, "target_modules []"),
        ({"target_modules": ["q_proj", ""]}, "target_modules"),
        ({"target_modules": ""}, "target_modules is empty"),
        ({"target_modules": "q_proj("}, "does not compile"),
        ({"target_modules": 3}, "target_modules 3"),
        ({"rank_pattern": ["q_proj"]}, "rank_pattern ['q_proj'] must map"),
        ({"rank_pattern": {"": 2}}, "rank_pattern key ''"),
        ({"rank_pattern": {"q_proj(": 2}}, "rank_pattern key 'q_proj(' does not compile"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj'] = 0"),
        ({"rank_pattern": {"q_proj": 2.0}}, "rank_pattern['q_proj'] = 2.0"),
    ],
)
def test_invalid_fields_are_named(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(LoraError, match=None) as info:
        LoraConfig(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)
    assert isinstance(info.value, EntrenarError)


PATHS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.11.mlp.up_proj", "lm_head"]


@pytest.mark.parametrize(
    "pattern",
    [
        {"q_proj": 2},
        {"model.layers.1.self_attn.q_proj": 2, "q_proj": 3},  # the first matching key wins
        {r"layers\.1\..*": 5, "up_proj": 6},
        {"layers.1.mlp.up_proj": 7, "proj": 8},  # "proj" matches no whole name
        {"lm_head": 9},
    ],
)
def test_for_module_picks_ranks_as_peft(pattern: dict[str, int]) -> None:
    from peft.utils.other import get_pattern_key  # the oracle: PEFT's own lookup

    config = LoraConfig(rank=4, alpha=8, rank_pattern=pattern)
    for path in PATHS:
        expected = pattern.get(get_pattern_key(list(pattern), path), 4)
        assert config.for_module(path).rank == expected, path
        assert config.for_module(path).scaling == 8 / expected
