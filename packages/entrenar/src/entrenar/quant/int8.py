"""Per-output-channel (row-wise) absmax int8 quantization of a linear weight.

Each row ``w[o, :]`` gets one float32 scale ``s[o] = max_i |w[o, i]| / 127`` and is stored as
``q[o, i] = round(w[o, i] / s[o])`` in int8 (range -127..127, symmetric, 0 exact). De-quantization is
``q * s``; the error per value is at most ``s[o] / 2`` (plus float32 rounding). This is the
vector-wise quantization of LLM.int8() (Dettmers et al., https://arxiv.org/abs/2208.07339, section 3.1)
without its fp16 outlier decomposition.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from entrenar.errors import QuantizationError

__all__ = ["Int8Quantized", "dequantize_int8_rowwise", "quantize_int8_rowwise"]

_INT8_MAX = 127


class Int8Quantized(NamedTuple):
    """A row-wise int8 weight: ``values`` int8 (out, in), ``scales`` float32 (out,)."""

    values: torch.Tensor
    scales: torch.Tensor


def quantize_int8_rowwise(weight: torch.Tensor) -> Int8Quantized:
    """Quantize a 2-D weight to int8 with one absmax scale per row (output channel).

    Args:
        weight: floating-point tensor (out, in).

    Returns:
        `Int8Quantized` with ``values`` int8 (out, in) and ``scales`` float32 (out,).

    Raises:
        QuantizationError: `weight` is not a non-empty 2-D float tensor, or holds NaN/inf.
    """
    if not weight.is_floating_point() or weight.dim() != 2 or weight.numel() == 0:
        raise QuantizationError(
            f"quantize_int8_rowwise: needs a non-empty 2-D float weight, got {weight.dtype} {tuple(weight.shape)}"
        )
    w = weight.detach().float()
    scales = w.abs().amax(dim=1) / _INT8_MAX
    if not bool(torch.isfinite(scales).all()):
        raise QuantizationError("quantize_int8_rowwise: weight holds NaN or inf values; fix it before quantizing")
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row stays zero
    values = torch.round(w / safe[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return Int8Quantized(values, scales)


def dequantize_int8_rowwise(
    values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Rebuild a weight from `quantize_int8_rowwise` output.

    Args:
        values: int8 (out, in).
        scales: float32 (out,).
        dtype: dtype of the result (computed in float32, then cast).

    Returns:
        tensor (out, in) of `dtype`: ``values * scales[:, None]``.

    Raises:
        QuantizationError: the shapes disagree.
    """
    if values.dim() != 2 or scales.shape != values.shape[:1]:
        raise QuantizationError(
            f"dequantize_int8_rowwise: values {tuple(values.shape)} need scales of shape {tuple(values.shape[:1])}, "
            f"got {tuple(scales.shape)}"
        )
    return (values.float() * scales.float()[:, None]).to(dtype)
