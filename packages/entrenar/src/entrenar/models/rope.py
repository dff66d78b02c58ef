"""Rotary position embeddings (RoPE) and the context-extension variants the supported families use.

RoPE (Su et al. 2021, https://arxiv.org/abs/2104.09864) rotates each pair of query/key features
``(x[i], x[i + D/2])`` by the angle ``position * inv_freq[i]`` with ``inv_freq[i] = theta^(-2i/D)``
("rotate half" layout, as in the Hugging Face checkpoints). Variants change ``inv_freq``:

- ``linear``: position interpolation, ``inv_freq / factor`` (Chen et al. 2023, https://arxiv.org/abs/2306.15595);
- ``llama3``: low frequencies divided by ``factor``, high ones kept, a smooth ramp between
  (Llama 3.1, https://github.com/meta-llama/llama-models/blob/main/models/llama3/reference_impl/model.py);
- ``yarn``: NTK-by-parts interpolation plus a cos/sin scale (Peng et al. 2023, https://arxiv.org/abs/2309.00071).

The frequencies are computed once, in float32 on the CPU (so a model built on the ``meta`` device
still has them), and copied to each device on first use. cos/sin are computed once per forward
pass from the position ids and shared by every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from entrenar.models.config import ModelConfig

__all__ = ["RotaryEmbedding", "apply_rotary", "rope_frequencies"]


def _base_inv_freq(config: ModelConfig) -> Tensor:
    """``theta^(-2i/D)`` for i in [0, D/2), float32, shape (D/2,)."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / dim
    return 1.0 / (config.rope_theta**exponents)


def _default(config: ModelConfig) -> tuple[Tensor, float]:
    return _base_inv_freq(config), 1.0


def _linear(config: ModelConfig) -> tuple[Tensor, float]:
    assert config.rope_factor is not None  # checked by ModelConfig
    return _base_inv_freq(config) / config.rope_factor, 1.0


def _llama3(config: ModelConfig) -> tuple[Tensor, float]:
    """Wavelengths above ``original / low`` are scaled by 1/factor, below ``original / high`` kept, ramp between."""
    factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    original = config.rope_original_max_position_embeddings
    assert factor is not None and low is not None and high is not None and original is not None
    inv_freq = _base_inv_freq(config)
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    ramp = (original / wavelength - low) / (high - low)  # 0 at the low-frequency edge, 1 at the high one
    smoothed = (1 - ramp) * scaled / factor + ramp * scaled
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, smoothed, scaled), 1.0


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(config: ModelConfig) -> tuple[Tensor, float]:
    """NTK-by-parts: dimensions rotating fewer than ``beta_slow`` times in the original context are
    interpolated (divided by factor), more than ``beta_fast`` times extrapolated (kept), linear ramp between."""
    factor, original = config.rope_factor, config.rope_original_max_position_embeddings
    assert factor is not None and original is not None
    attention = config.rope_attention_factor
    if attention is None:
        if config.rope_mscale and config.rope_mscale_all_dim:
            attention = _yarn_mscale(factor, config.rope_mscale) / _yarn_mscale(factor, config.rope_mscale_all_dim)
        else:
            attention = _yarn_mscale(factor)
    dim, base = config.head_dim, config.rope_theta

    def dimension_of(rotations: float) -> float:
        # The feature index whose wavelength fits `rotations` times into the original context.
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dimension_of(config.rope_beta_fast or 32), dimension_of(config.rope_beta_slow or 1)
    if config.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolated = _base_inv_freq(config)
    interpolated = extrapolated / factor
    inv_freq = interpolated * ramp + extrapolated * (1 - ramp)
    return inv_freq, float(attention)


_ROPE_FUNCTIONS: dict[str, Callable[[ModelConfig], tuple[Tensor, float]]] = {
    "default": _default,
    "linear": _linear,
    "llama3": _llama3,
    "yarn": _yarn,
}


def rope_frequencies(config: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies and the cos/sin scale for `config`'s RoPE type.

    Args:
        config: The model config (``rope_type``, ``rope_theta``, ``head_dim`` and the scaling fields).

    Returns:
        ``(inv_freq, attention_scaling)``: float32 CPU tensor of shape (head_dim / 2,) and a float
        (1.0 except for yarn).
    """
    return _ROPE_FUNCTIONS[config.rope_type](config)


class RotaryEmbedding(nn.Module):
    """Turns position ids into the cos/sin tables every attention layer applies.

    Holds no parameters or buffers: the frequencies are a CPU float32 tensor copied to each device
    once, so building the model on ``meta`` and loading weights later needs no special step.
    """

    def __init__(self, config: ModelConfig) -> None:
        """Compute the frequencies of `config`'s RoPE type.

        Args:
            config: The model config.
        """
        super().__init__()
        inv_freq, self.attention_scaling = rope_frequencies(config)
        self._inv_freq = {inv_freq.device: inv_freq}

    def inv_freq(self, device: torch.device) -> Tensor:
        """The inverse frequencies on `device`, float32, shape (head_dim / 2,)."""
        if device not in self._inv_freq:
            self._inv_freq[device] = next(iter(self._inv_freq.values())).to(device)
        return self._inv_freq[device]

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin for each token.

        Args:
            position_ids: Integer positions, shape (B, T).
            dtype: Dtype of the returned tables (the model's activation dtype).

        Returns:
            ``(cos, sin)``, each of shape (B, T, head_dim); angles are computed in float32.
        """
        angles = position_ids[..., None].to(torch.float32) * self.inv_freq(position_ids.device)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate queries and keys by their positions' angles.

    Args:
        q: Queries, shape (B, H, T, D).
        k: Keys, shape (B, H_kv, T, D).
        cos: From `RotaryEmbedding`, shape (B, T, D).
        sin: Same shape as `cos`.

    Returns:
        The rotated ``(q, k)``, same shapes and dtypes.
    """
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
