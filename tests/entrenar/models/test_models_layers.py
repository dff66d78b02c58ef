"""Blocks on their own: RMSNorm against transformers' (fp32 statistics in every dtype), SwiGLU by hand, the KV cache."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.models import KVCache, ModelConfig, make_linear
from entrenar.models.layers import MLP, RMSNorm


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.integers(1, 64),
    st.sampled_from([1e-5, 1e-6]),
    st.integers(0, 2**31 - 1),
)
def test_rms_norm_matches_transformers(dtype: torch.dtype, dim: int, eps: float, seed: int) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(3, 5, dim, generator=generator) * 300).to(dtype)  # squares overflow fp16: fp32 statistics needed
    weight = torch.randn(dim, generator=generator).to(dtype)
    ours, reference = RMSNorm(dim, eps).to(dtype), LlamaRMSNorm(dim, eps).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        reference.weight.copy_(weight)
        out = ours(x)
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out, reference(x), rtol=0, atol=0)


def test_rms_norm_by_hand() -> None:
    # x = (3, 4): mean square 12.5, so x / sqrt(12.5 + eps) = (0.8485, 1.1314); weight (2, 1) scales the first.
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0]))
    expected = torch.tensor([2 * 3 / 12.5**0.5, 4 / 12.5**0.5])
    torch.testing.assert_close(norm(torch.tensor([3.0, 4.0])), expected)


def test_swiglu_mlp_by_formula() -> None:
    config = ModelConfig(
        model_type="llama",
        vocab_size=8,
        hidden_size=6,
        intermediate_size=10,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=3,
        max_position_embeddings=16,
        mlp_bias=True,
    )
    mlp = MLP(config, make_linear, "model.layers.0.mlp")
    x = torch.randn(2, 4, 6)
    gate: Any = mlp.gate_proj
    up: Any = mlp.up_proj
    down: Any = mlp.down_proj
    assert gate.bias is not None and down.bias is not None  # mlp_bias reaches the projections
    expected = F.linear(
        F.silu(F.linear(x, gate.weight, gate.bias)) * F.linear(x, up.weight, up.bias), down.weight, down.bias
    )
    torch.testing.assert_close(mlp(x), expected)


def test_kv_cache_appends_along_time() -> None:
    cache = KVCache(2)
    assert (cache.num_layers, cache.length) == (2, 0)
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    keys, values = cache.update(0, k1, v1)
    assert keys is k1 and values is v1 and cache.length == 3
    k2, v2 = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    keys, values = cache.update(0, k2, v2)
    assert torch.equal(keys, torch.cat((k1, k2), dim=2)) and torch.equal(values, torch.cat((v1, v2), dim=2))
    assert cache.length == 4
    with pytest.raises(IndexError):
        cache.update(2, k1, v1)
