"""The blocks of a Llama-style decoder: RMSNorm, grouped-query attention, SwiGLU MLP, decoder layer.

- RMSNorm (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467) normalises in float32 and casts
  back before the weight multiplies, as the Hugging Face checkpoints were trained.
- Attention: grouped-query attention (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245) through
  `torch.nn.functional.scaled_dot_product_attention`; Qwen3 adds an RMSNorm over each query/key head
  before RoPE. Without an explicit mask, SDPA gets ``is_causal`` and ``enable_gqa`` so CUDA can use its
  fused kernels; with a mask the key/value heads are expanded first (the fused masked kernels do not
  take grouped heads).
- MLP: SwiGLU, ``down(silu(gate(x)) * up(x))`` (Shazeer 2020, https://arxiv.org/abs/2002.05202).
- Decoder layer: pre-norm residual blocks, ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

Module and parameter names follow the Hugging Face layout (``self_attn.q_proj``, ``mlp.gate_proj``,
``input_layernorm``...), so checkpoints and PEFT adapters map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entrenar.models.cache import KVCache
from entrenar.models.config import ModelConfig
from entrenar.models.linear import LinearFactory
from entrenar.models.masks import AttentionMask
from entrenar.models.rope import apply_rotary

__all__ = ["MLP", "Attention", "DecoderLayer", "RMSNorm"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, the statistic computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        """Create the norm with a weight of ones.

        Args:
            dim: Size of the last dimension.
            eps: Added to the mean square.
        """
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension.

        Args:
            x: Shape (..., dim).

        Returns:
            Same shape; in `x`'s dtype promoted with the weight's (equal in a model loaded in one dtype).
        """
        x32 = x.to(torch.float32)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, config: ModelConfig, make_linear: LinearFactory, prefix: str) -> None:
        """Build gate, up and down projections through `make_linear`.

        Args:
            config: The model config (hidden and intermediate sizes, ``mlp_bias``).
            make_linear: Builds each projection.
            prefix: Module path of this block, e.g. ``"model.layers.0.mlp"``.
        """
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = make_linear(f"{prefix}.gate_proj", hidden, inner, bias)
        self.up_proj = make_linear(f"{prefix}.up_proj", hidden, inner, bias)
        self.down_proj = make_linear(f"{prefix}.down_proj", inner, hidden, bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Shape (B, T, hidden).

        Returns:
            Shape (B, T, hidden).
        """
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _expand_kv(x: Tensor, groups: int) -> Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * groups, T, D), each key/value head repeated for its query group."""
    if groups == 1:
        return x
    batch, heads, length, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE, optional Qwen3 q/k norm and sliding window."""

    def __init__(self, config: ModelConfig, layer: int, make_linear: LinearFactory, prefix: str) -> None:
        """Build the q/k/v/o projections (and q/k norms for Qwen3).

        Args:
            config: The model config.
            layer: Index of the layer (its KV-cache slot and sliding window).
            make_linear: Builds each projection.
            prefix: Module path of this block, e.g. ``"model.layers.0.self_attn"``.
        """
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        q_width, kv_width = config.num_heads * head_dim, config.num_kv_heads * head_dim
        self.q_proj = make_linear(f"{prefix}.q_proj", hidden, q_width, config.qkv_bias)
        self.k_proj = make_linear(f"{prefix}.k_proj", hidden, kv_width, config.qkv_bias)
        self.v_proj = make_linear(f"{prefix}.v_proj", hidden, kv_width, config.qkv_bias)
        self.o_proj = make_linear(f"{prefix}.o_proj", q_width, hidden, config.o_bias)
        self.q_norm = RMSNorm(head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.layer = layer
        self.window = config.layer_window(layer)
        self.head_dim = head_dim
        self.groups = config.num_heads // config.num_kv_heads
        self.dropout = config.attention_dropout

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask, kv_cache: KVCache | None = None
    ) -> Tensor:
        """Attend.

        Args:
            x: Normalised hidden states, shape (B, T, hidden).
            cos: RoPE table, shape (B, T, head_dim).
            sin: Same shape as `cos`.
            mask: This layer's mask (see `entrenar.models.masks`).
            kv_cache: When given, the new keys/values are appended and all cached ones attended to.

        Returns:
            Shape (B, T, hidden).
        """
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, -1, self.head_dim)
        k = self.k_proj(x).view(batch, length, -1, self.head_dim)
        v = self.v_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        scale = self.head_dim**-0.5
        if mask.mask is None:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=mask.is_causal, scale=scale, enable_gqa=self.groups > 1
            )
        else:
            k, v = _expand_kv(k, self.groups), _expand_kv(v, self.groups)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask, dropout_p=dropout, scale=scale)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: attention and MLP, each wrapped in RMSNorm and a residual connection."""

    def __init__(self, config: ModelConfig, layer: int, make_linear: LinearFactory, prefix: str) -> None:
        """Build one layer.

        Args:
            config: The model config.
            layer: Index of the layer.
            make_linear: Builds each projection.
            prefix: Module path of the layer, e.g. ``"model.layers.0"``.
        """
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, make_linear, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, make_linear, f"{prefix}.mlp")

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask, kv_cache: KVCache | None = None
    ) -> Tensor:
        """Apply the layer.

        Args:
            x: Hidden states, shape (B, T, hidden).
            cos: RoPE table, shape (B, T, head_dim).
            sin: Same shape as `cos`.
            mask: This layer's mask.
            kv_cache: Optional cache (see `Attention.forward`).

        Returns:
            Shape (B, T, hidden).
        """
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))
