"""RoPE: frequencies of every supported rope type against transformers' own, cos/sin tables, rotation invariants."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.models import ModelConfig
from entrenar.models.rope import RotaryEmbedding, apply_rotary, rope_frequencies


def _config(head_dim: int = 16, **rope: Any) -> ModelConfig:
    return ModelConfig(
        model_type="llama",
        vocab_size=8,
        hidden_size=64,
        intermediate_size=8,
        num_layers=1,
        num_heads=4,
        num_kv_heads=4,
        head_dim=head_dim,
        max_position_embeddings=rope.pop("max_positions", 256),
        **rope,
    )


def _reference(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """transformers' inverse frequencies for the config.json we write."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf: Any = AutoConfig.for_model(**config.to_hf_dict())
    if config.rope_type == "default":
        inv_freq, scale = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    else:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[config.rope_type](hf)
    return inv_freq, float(scale)


_HEAD_DIMS = st.sampled_from([4, 8, 16, 64, 128])
_THETAS = st.sampled_from([10000.0, 500000.0, 1e6])


@st.composite
def rope_configs(draw: st.DrawFn) -> ModelConfig:
    kind = draw(st.sampled_from(["default", "linear", "llama3", "yarn"]))
    rope: dict[str, Any] = {"rope_type": kind, "rope_theta": draw(_THETAS)}
    if kind != "default":
        rope["rope_factor"] = draw(st.floats(1.0, 32.0))
    if kind in ("llama3", "yarn"):
        rope["rope_original_max_position_embeddings"] = draw(st.sampled_from([64, 2048, 8192]))
    if kind == "llama3":
        rope["rope_low_freq_factor"] = draw(st.floats(0.5, 2.0))
        rope["rope_high_freq_factor"] = draw(st.floats(2.5, 8.0))
    if kind == "yarn":
        rope["rope_beta_fast"] = draw(st.none() | st.floats(8.0, 64.0))
        rope["rope_beta_slow"] = draw(st.none() | st.floats(0.5, 2.0))
        rope["rope_truncate"] = draw(st.booleans())
        rope["rope_attention_factor"] = draw(st.none() | st.floats(0.5, 2.0))
        if draw(st.booleans()):
            rope["rope_mscale"], rope["rope_mscale_all_dim"] = draw(st.floats(0.1, 1.0)), draw(st.floats(0.1, 1.0))
    return _config(head_dim=draw(_HEAD_DIMS), max_positions=16384, **rope)


@settings(max_examples=80, deadline=None)
@given(rope_configs())
def test_frequencies_match_transformers(config: ModelConfig) -> None:
    ours, scale = rope_frequencies(config)
    reference, reference_scale = _reference(config)
    assert ours.dtype == torch.float32 and ours.shape == (config.head_dim // 2,)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    assert scale == pytest.approx(reference_scale, rel=1e-12)


@pytest.mark.parametrize(
    "edge",
    [
        # beta_fast == beta_slow without truncation puts both ramp ends on the same dimension.
        {"rope_beta_fast": 4.0, "rope_beta_slow": 4.0, "rope_truncate": False},
        # DeepSeek-style mscale pair and no explicit attention factor: the scale is their ratio.
        {"rope_mscale": 0.707, "rope_mscale_all_dim": 1.0},
    ],
)
def test_yarn_edge_cases_match_transformers(edge: dict[str, Any]) -> None:
    config = _config(rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=64, **edge)
    ours, scale = rope_frequencies(config)
    reference, reference_scale = _reference(config)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    assert scale == pytest.approx(reference_scale, rel=1e-12)


def test_llama3_keeps_high_and_scales_low_frequencies() -> None:
    # Hand-computed: with original context 8192, low=1, high=4, wavelengths under 2048 are kept and above
    # 8192 divided by factor 8. head_dim 128, theta 500000 (Llama 3.1): inv_freq[0] = 1 (wavelength 2π),
    # inv_freq[63] = 500000^(-126/128) (wavelength ~ 2.6e6).
    config = _config(
        head_dim=128,
        rope_type="llama3",
        rope_theta=500000.0,
        rope_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
    )
    inv_freq, _ = rope_frequencies(config)
    assert inv_freq[0].item() == 1.0
    assert inv_freq[63].item() == pytest.approx(500000.0 ** (-126 / 128) / 8, rel=1e-6)


def test_cos_sin_match_transformers_rotary_embedding() -> None:
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = _config(
        rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=64, rope_theta=1e4, max_positions=256
    )
    positions = torch.tensor([[0, 1, 2, 3, 100, 255], [5, 4, 3, 0, 1, 2]])
    for dtype in (torch.float32, torch.bfloat16):
        cos, sin = RotaryEmbedding(config)(positions, dtype)
        hf_config: Any = AutoConfig.for_model(**config.to_hf_dict())
        hf_cos, hf_sin = LlamaRotaryEmbedding(hf_config)(torch.zeros(1, dtype=dtype), positions)
        assert cos.dtype == dtype and cos.shape == (2, 6, 16)
        torch.testing.assert_close(cos, hf_cos, rtol=0, atol=0)
        torch.testing.assert_close(sin, hf_sin, rtol=0, atol=0)


def test_rotation_of_a_unit_vector_by_hand() -> None:
    # head_dim 2: one frequency, theta^0 = 1, so position p rotates (1, 0) to (cos p, sin p).
    config = _config(head_dim=2)
    positions = torch.tensor([[0, 1, 2]])
    cos, sin = RotaryEmbedding(config)(positions, torch.float32)
    unit = torch.tensor([1.0, 0.0]).expand(1, 1, 3, 2)
    rotated, _ = apply_rotary(unit, unit, cos, sin)
    expected = torch.tensor([[math.cos(p), math.sin(p)] for p in (0, 1, 2)])
    torch.testing.assert_close(rotated[0, 0], expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_attention_scores_depend_only_on_relative_position(m: int, n: int, shift: int, seed: int) -> None:
    # RoPE's defining property: <R(m) q, R(n) k> = <R(m + s) q, R(n + s) k>; rotation also preserves norms.
    rotary = RotaryEmbedding(_config(head_dim=8))
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=generator, dtype=torch.float64)

    def score(i: int, j: int) -> torch.Tensor:
        cos_q, sin_q = rotary(torch.tensor([[i]]), torch.float64)
        cos_k, sin_k = rotary(torch.tensor([[j]]), torch.float64)
        rq, _ = apply_rotary(q, q, cos_q, sin_q)
        rk, _ = apply_rotary(k, k, cos_k, sin_k)
        torch.testing.assert_close(rq.norm(), q.norm())
        return (rq * rk).sum()

    # Angles are float32 (as in transformers): at positions up to 800 each is off by up to ~5e-5 rad.
    tolerance = 2e-4 * float(q.norm() * k.norm())
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=0, atol=tolerance)


def test_frequencies_are_copied_once_per_device() -> None:
    rotary = RotaryEmbedding(_config())
    cpu = torch.device("cpu")
    assert rotary.inv_freq(cpu) is rotary.inv_freq(cpu)
    meta = rotary.inv_freq(torch.device("meta"))
    assert meta.device.type == "meta" and rotary.inv_freq(torch.device("meta")) is meta
