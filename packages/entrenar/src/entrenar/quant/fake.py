"""Fake quantization for quantization-aware training (QAT): a weight as the deployed model will hold it.

A `WeightQuantizer` returns ``dequantize(quantize(w))`` computed by exactly the quantizer used at export or
load time, and `straight_through` puts those values in the forward pass while the gradient reaches the float
weight unchanged (straight-through estimator, Bengio et al., https://arxiv.org/abs/1308.3432). Formats:

- GGUF types (``q4_k``, ``q8_0``, ``f16``, ...): our GGUF exporter's quantizer (`aprender.format.gguf_quantize`,
  a port of llama.cpp's ``ggml-quants.c`` reference quantizers, no importance matrix) and our de-quantizer.
- ``nf4``: bitsandbytes' NF4 (``load_in_4bit``, ``bnb_4bit_quant_type="nf4"``): blocks of 64 consecutive values
  of the flattened weight, float32 absmax, no double quantization (`entrenar.quant.nf4`).
- ``int8`` / ``int4``: symmetric integers with torchao's numerics (``IntxFakeQuantizer`` with
  ``IntxFakeQuantizeConfig(torch.int4, group_size=32)`` or ``"per_channel"``), gradient mask included.

`fake_quantize_activations` is torchao's dynamic per-token asymmetric int8 activation fake quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from aprender.format.gguf_quantize import QUANTIZED_TYPES, quantize_rows
from aprender.format.gguf_quants import dequantize
from entrenar.errors import QuantizationError
from entrenar.quant.nf4 import NF4_BLOCK_SIZE, dequantize_nf4, quantize_nf4

__all__ = [
    "QAT_WEIGHT_FORMATS",
    "FakeQuantized",
    "WeightQuantizer",
    "fake_quantize_activations",
    "gguf_weight_quantizer",
    "straight_through",
    "weight_quantizer",
]

# The GGUF types our exporter writes, by lower-case name (`aprender.format.gguf_quantize.QUANTIZED_TYPES`).
_GGUF_TYPES: dict[str, GGMLQuantizationType] = {
    t.name.lower(): t for t in (*QUANTIZED_TYPES, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
}
_INT_BITS = {"int8": 8, "int4": 4}
QAT_WEIGHT_FORMATS: tuple[str, ...] = ("nf4", *_INT_BITS, *_GGUF_TYPES)
"""Every name `weight_quantizer` accepts."""

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what torchao's affine quantizers accept
_ACTIVATION_QMIN, _ACTIVATION_QMAX = -128, 127


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == has no single truth value
class FakeQuantized:
    """A fake-quantized weight.

    Attributes:
        values: float32, the weight's shape, no grad: ``dequantize(quantize(weight))``.
        keep_grad: bool mask, the weight's shape, of where the straight-through gradient passes (None: everywhere).
    """

    values: torch.Tensor
    keep_grad: torch.Tensor | None


@dataclass(frozen=True)
class WeightQuantizer:
    """Fake quantization of a linear weight (out, in) in one format; build it with `weight_quantizer`.

    Attributes:
        name: one of `QAT_WEIGHT_FORMATS`.
        group_size: int8/int4 only: None for one scale per output row, else one scale per group of this many
            consecutive values along the row.
    """

    name: str
    group_size: int | None

    def __post_init__(self) -> None:
        if self.name not in QAT_WEIGHT_FORMATS:
            raise QuantizationError(
                f"unknown QAT weight format {self.name!r}; use one of {', '.join(QAT_WEIGHT_FORMATS)}"
            )
        size = self.group_size
        if size is None:
            return
        if self.name not in _INT_BITS:
            raise QuantizationError(f"{self.name} has a fixed block layout; drop group_size (only int8/int4 take one)")
        if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size & (size - 1):
            raise QuantizationError(
                f"group_size must be a power of two >= 2 (e.g. 32, 64, 128) or None (per channel), got {size!r}"
            )

    def __call__(self, weight: torch.Tensor) -> FakeQuantized:
        """Fake-quantize `weight`.

        Args:
            weight: float tensor (out, in) of any float dtype, on any device; only its values are read. nf4 and
                GGUF types read it as float32; int8/int4 compute in its dtype as torchao does (float32, bfloat16
                or float16; other dtypes as float32), so a bfloat16 weight gets a bfloat16-rounded scale.

        Returns:
            `FakeQuantized` on the weight's device; ``keep_grad`` is set for int8/int4 only.

        Raises:
            QuantizationError: `weight` is not a non-empty 2-D float tensor; rows that are not whole blocks
                (GGUF types) or groups (int8/int4); NaN or inf values (nf4 and GGUF types; int8/int4 let
                them through as torchao does).
        """
        if not weight.is_floating_point() or weight.dim() != 2 or weight.numel() == 0:
            raise QuantizationError(
                f"{self.name} fake quantization needs a non-empty 2-D float weight (out, in), "
                f"got {weight.dtype} {tuple(weight.shape)}"
            )
        with torch.no_grad():
            w = weight.detach()
            if self.name == "nf4":
                packed, absmax = quantize_nf4(w)
                return FakeQuantized(dequantize_nf4(packed, absmax, w.shape), None)
            bits = _INT_BITS.get(self.name)
            if bits is not None:
                return _fake_quantize_int(w, bits, self.group_size)
            return _fake_quantize_gguf(w, _GGUF_TYPES[self.name])

    def describe(self) -> str:
        """One line for logs and the model card, e.g. ``"Q4_K (llama.cpp's quantizer)"``."""
        if self.name == "nf4":
            return (
                f"NF4, blocks of {NF4_BLOCK_SIZE}, float32 absmax, no double quantization "
                "(bitsandbytes' load_in_4bit numerics)"
            )
        if self.name in _INT_BITS:
            groups = "per channel" if self.group_size is None else f"groups of {self.group_size}"
            return f"{self.name}, symmetric, {groups} (torchao's IntxFakeQuantizeConfig numerics)"
        return f"{self.name.upper()} (llama.cpp's quantizer)"


def weight_quantizer(name: str, *, group_size: int | None = None) -> WeightQuantizer:
    """Validate a QAT weight format and build its quantizer.

    Args:
        name: one of `QAT_WEIGHT_FORMATS`, any case (``"q4_k"``, ``"Q4_K"``, ``"int4"``, ``"nf4"``).
        group_size: int8/int4 only: a power of two >= 2 dividing the rows (one scale per group), or None
            (one scale per output row, torchao's ``"per_channel"``).

    Returns:
        The `WeightQuantizer`.

    Raises:
        QuantizationError: an unknown name; a group_size for a format without one, below 2 or not a power of two.

    Example:
        >>> weight_quantizer("int4", group_size=32).describe()
        "int4, symmetric, groups of 32 (torchao's IntxFakeQuantizeConfig numerics)"
    """
    return WeightQuantizer(name.lower(), group_size)


def gguf_weight_quantizer(ggml_type: GGMLQuantizationType) -> WeightQuantizer:
    """The quantizer of a GGUF tensor type our exporter writes (F16, BF16, Q8_0, Q4_K, ...).

    Raises:
        QuantizationError: a type we do not write (F32 is not quantized: train without fake quantization).
    """
    return weight_quantizer(GGMLQuantizationType(ggml_type).name)


def straight_through(weight: torch.Tensor, fake: FakeQuantized) -> torch.Tensor:
    """The fake-quantized weight in the forward pass, the straight-through gradient in the backward pass.

    Args:
        weight: the float weight (a leaf or not, e.g. ``W + B @ A``), the one `fake` was computed from.
        fake: its `FakeQuantized`.

    Returns:
        ``fake.values`` cast to the weight's dtype, bit for bit; the gradient reaching `weight` is the incoming
        gradient times ``fake.keep_grad`` (unchanged where that is None).

    Raises:
        QuantizationError: the shapes differ.
    """
    if fake.values.shape != weight.shape:
        raise QuantizationError(
            f"straight_through: fake values {tuple(fake.values.shape)} do not match the weight "
            f"{tuple(weight.shape)}; fake-quantize this weight"
        )
    # (w.detach() - w) is +0 with gradient -1: v - (+0) is v bit for bit, -0.0 included (v + 0 would make it +0).
    zero = weight.detach() - weight
    if fake.keep_grad is not None:
        zero = zero * fake.keep_grad
    return fake.values.to(device=weight.device, dtype=weight.dtype) - zero


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token asymmetric int8 fake quantization of activations, differentiable.

    Values and gradients equal torchao's ``IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token",
    is_symmetric=False))`` (torchao 0.18, ``choose_qparams_affine`` + ``_fake_quantize_affine``): per token,
    in x's dtype, ``scale = max((max(x, 0) - min(x, 0)) / 255, eps)`` with eps the dtype's smallest normal,
    ``zero_point = clamp(-128 - round(min(x, 0) / scale), -128, 127)``; then in float32
    ``q = clamp(round(x * (1 / scale)) + zero_point, -128, 127)`` and ``(q - zero_point) * scale``. The gradient
    goes straight through round, is 0 where the clamp cut, and none flows through scale or zero point.

    Args:
        x: float32, bfloat16 or float16 tensor (..., features).

    Returns:
        tensor of x's shape and dtype.

    Raises:
        QuantizationError: x is empty, has no feature dimension, or has another dtype.
    """
    if x.dtype not in _FLOAT_DTYPES or x.dim() == 0 or x.numel() == 0:
        raise QuantizationError(
            f"fake_quantize_activations needs a non-empty float32/bfloat16/float16 tensor (..., features), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    with torch.no_grad():
        low = torch.clamp(x.amin(dim=-1, keepdim=True), max=0)
        high = torch.clamp(x.amax(dim=-1, keepdim=True), min=0)
        scale = torch.clamp((high - low) / float(_ACTIVATION_QMAX - _ACTIVATION_QMIN), min=_eps(x.dtype))
        zero_point = torch.clamp(_ACTIVATION_QMIN - torch.round(low / scale), _ACTIVATION_QMIN, _ACTIVATION_QMAX)
    values, _ = _fake_quantize_affine(x, scale.float(), zero_point.to(torch.int32), _ACTIVATION_QMIN, _ACTIVATION_QMAX)
    return values


def _eps(dtype: torch.dtype) -> float:
    """torchao's default minimum scale: the dtype's smallest normal number."""
    return torch.finfo(dtype).smallest_normal


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` with an identity gradient (torchao's ``_Round``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _fake_quantize_affine(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's ``_quantize_affine_no_dtype_cast`` then ``_dequantize_affine_no_dtype_check``, op for op.

    Args:
        x: values, float32/bfloat16/float16, grouped along the last dimension.
        scale: float32, broadcast against x (one per group).
        zero_point: int32, like scale.
        qmin: smallest integer.
        qmax: largest integer.

    Returns:
        (the de-quantized values in x's dtype, the bool mask of values the clamp kept: where the gradient passes).
    """
    unclamped = _RoundSTE.apply(x * (1.0 / scale)) + zero_point
    quantized = torch.clamp(unclamped, qmin, qmax)
    values = (quantized.to(x.dtype) - zero_point.to(x.dtype)) * scale
    keep = (unclamped >= qmin) & (unclamped <= qmax)  # torch.clamp's gradient mask (inclusive bounds)
    return values.to(x.dtype), keep


def _fake_quantize_int(weight: torch.Tensor, bits: int, group_size: int | None) -> FakeQuantized:
    """Symmetric intN fake quantization with torchao's numerics (``get_group_qparams_symmetric``).

    Per group, in the weight's dtype: ``scale = max(absmax / ((qmax - qmin) / 2), eps)``, e.g. absmax / 7.5 for
    int4 (qmin, qmax = -8, 7) and absmax / 127.5 for int8; the zero point is 0. A group's positive absmax maps to
    ``round(7.5) = 8`` and is clamped to 7, so its gradient is masked, as in torchao.
    """
    if weight.dtype not in _FLOAT_DTYPES:
        weight = weight.float()  # torchao takes only these three
    rows, columns = weight.shape
    size = columns if group_size is None else group_size
    if columns % size:
        raise QuantizationError(
            f"{size}-value groups do not divide rows of {columns} (weight {tuple(weight.shape)}); "
            "pick a group_size that divides it or None (per channel)"
        )
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    groups = weight.reshape(rows, columns // size, size)
    scale = torch.clamp(groups.abs().amax(dim=-1, keepdim=True) / ((qmax - qmin) / 2), min=_eps(weight.dtype))
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    values, keep = _fake_quantize_affine(groups, scale.float(), zero_point, qmin, qmax)
    return FakeQuantized(values.reshape(rows, columns).float(), keep.reshape(rows, columns))


def _fake_quantize_gguf(weight: torch.Tensor, ggml_type: GGMLQuantizationType) -> FakeQuantized:
    """What our GGUF exporter writes (`quantize_rows`, no importance matrix) and our reader de-quantizes."""
    block = GGML_QUANT_SIZES[ggml_type][0]
    if weight.shape[-1] % block:
        raise QuantizationError(
            f"{ggml_type.name} needs rows of whole {block}-value blocks, weight {tuple(weight.shape)} has rows of "
            f"{weight.shape[-1]}; fake-quantize it as the exporter's fallback type"
        )
    rows = weight.float().cpu()
    if not bool(torch.isfinite(rows).all()):
        raise QuantizationError(f"{ggml_type.name}: the weight holds NaN or inf values; fix it before quantizing")
    data = quantize_rows(rows, ggml_type)
    return FakeQuantized(dequantize(data, ggml_type, tuple(rows.shape)).to(weight.device), None)
