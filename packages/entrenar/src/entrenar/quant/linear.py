"""Frozen quantized linear layers for QLoRA: `NF4Linear` (NF4, optional double quantization) and `Int8Linear`.

QLoRA (https://arxiv.org/abs/2305.14314) keeps the base weights frozen in 4 bits and trains LoRA adapters
beside them; gradients flow to the layer's input, never to the quantized weight. Both layers:

- store only the quantized state, as buffers (no parameters, no float copy of the weight);
- are built from a float weight with ``from_weight(weight, bias)``, or empty from the shape (``cls(in, out)``)
  to receive a ``state_dict`` saved earlier;
- de-quantize to the compute dtype in ``forward`` (``compute_dtype``, or the input's dtype when None) and run
  ``F.linear``; the output comes back in the input's dtype;
- de-quantize ``chunk_rows`` output rows at a time (None: the whole weight at once). A chunk of rows gives a
  slice of the output features, so the peak holds one chunk of de-quantized weight instead of all of it, at
  the cost of one extra matmul launch per chunk. Use it when the weight (out * in) is large next to the
  activations (tokens * chunk_rows);
- save nothing for backward but a reference to the layer: backward de-quantizes again (chunk by chunk) to
  compute ``grad_input = grad_output @ W``, as bitsandbytes' ``MatMul4Bit`` does. Without this, autograd would
  keep every layer's de-quantized weight alive from forward to backward, undoing the 4-bit saving;
- keep their float quantization state (absmax, scales, mean) in float32 under ``.to(dtype)`` / ``.half()``;
  only its device changes. The bias is converted like any float buffer.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from entrenar.errors import QuantizationError
from entrenar.quant.int8 import dequantize_int8_rowwise, quantize_int8_rowwise
from entrenar.quant.nf4 import (
    ABSMAX_BLOCK_SIZE,
    NF4_BLOCK_SIZE,
    dequantize_nf4_blocks,
    double_dequantize,
    double_quantize,
    quantize_nf4,
)

__all__ = ["Int8Linear", "NF4Linear"]


class _DequantizedLinear(torch.autograd.Function):
    """``y = x @ W.T + b`` with W de-quantized on the fly in forward and again in backward (nothing saved)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: _FrozenQuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer._linear(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.layer._input_grad(grad_output), None


class _FrozenQuantizedLinear(nn.Module, ABC):
    """What `NF4Linear` and `Int8Linear` share: chunked forward/backward, bytes, dtype-safe float32 state."""

    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        compute_dtype: torch.dtype | None,
        chunk_rows: int | None,
        device: str | torch.device | None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if in_features < 1 or out_features < 1:
            raise QuantizationError(
                f"{name}: in_features and out_features must be >= 1, got {in_features}, {out_features}"
            )
        if chunk_rows is not None and chunk_rows < 1:
            raise QuantizationError(f"{name}: chunk_rows must be >= 1 or None (all rows at once), got {chunk_rows}")
        if compute_dtype is not None and not compute_dtype.is_floating_point:
            raise QuantizationError(f"{name}: compute_dtype must be a float dtype or None, got {compute_dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.chunk_rows = chunk_rows
        self._float32_state: tuple[str, ...] = ()
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @abstractmethod
    def _dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``[start, stop)`` of the weight, de-quantized: (stop - start, in_features) of `dtype`."""

    def weight_dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole weight, de-quantized (for merging adapters into the base).

        Args:
            dtype: dtype of the result.

        Returns:
            tensor (out_features, in_features), a new tensor each call.
        """
        return self._dequantize_rows(0, self.out_features, dtype)

    def nbytes(self) -> int:
        """Bytes held by the layer: every parameter and buffer (quantized weight, its scales, bias)."""
        return sum(t.numel() * t.element_size() for t in itertools.chain(self.parameters(), self.buffers()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` with W de-quantized to the compute dtype.

        Args:
            x: float tensor (..., in_features).

        Returns:
            tensor (..., out_features) of x's dtype; differentiable with respect to x only.

        Raises:
            QuantizationError: x is not a float tensor or its last dimension is not in_features.
        """
        if not x.is_floating_point() or x.shape[-1:] != (self.in_features,):
            raise QuantizationError(
                f"{type(self).__name__}: input must be a float tensor (..., {self.in_features}), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        dtype = x.dtype if self.compute_dtype is None else self.compute_dtype
        out: torch.Tensor = _DequantizedLinear.apply(x.to(dtype), self)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"compute_dtype={self.compute_dtype}, chunk_rows={self.chunk_rows}"
        )

    def _spans(self) -> list[tuple[int, int]]:
        step = self.chunk_rows or self.out_features
        return [(start, min(start + step, self.out_features)) for start in range(0, self.out_features, step)]

    def _bias_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[start:stop].to(dtype)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        spans = self._spans()
        if len(spans) == 1:
            weight = self._dequantize_rows(0, self.out_features, x.dtype)
            return F.linear(x, weight, self._bias_rows(0, self.out_features, x.dtype))
        out = x.new_empty((*x.shape[:-1], self.out_features))
        for start, stop in spans:
            weight = self._dequantize_rows(start, stop, x.dtype)
            out[..., start:stop] = F.linear(x, weight, self._bias_rows(start, stop, x.dtype))
        return out

    def _input_grad(self, grad_output: torch.Tensor) -> torch.Tensor:
        spans = iter(self._spans())

        def part(start: int, stop: int) -> torch.Tensor:
            return grad_output[..., start:stop].matmul(self._dequantize_rows(start, stop, grad_output.dtype))

        grad = part(*next(spans))
        for start, stop in spans:
            grad += part(start, stop)
        return grad

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _FrozenQuantizedLinear:
        # Seen as int32 (same bytes), the float32 state is skipped by dtype conversions but still changes device.
        for name in self._float32_state:
            self._buffers[name] = self._float32(name).view(torch.int32)
        try:
            super()._apply(fn, recurse)
        finally:
            for name in self._float32_state:
                self._buffers[name] = self._float32(name).view(torch.float32)
        return self

    def _float32(self, name: str) -> torch.Tensor:
        tensor = self._buffers[name]
        assert tensor is not None  # registered with a tensor in __init__ and only ever replaced by one
        return tensor

    def _set_bias(self, bias: torch.Tensor | None) -> None:
        if bias is not None:
            self.bias = bias.detach().clone()

    @staticmethod
    def _check_weight(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int]:
        if not weight.is_floating_point() or weight.dim() != 2:
            raise QuantizationError(
                f"{name}: weight must be a 2-D float tensor, got {weight.dtype} {tuple(weight.shape)}"
            )
        if bias is not None and (not bias.is_floating_point() or bias.shape != weight.shape[:1]):
            raise QuantizationError(
                f"{name}: bias must be a float tensor ({weight.shape[0]},), got {bias.dtype} {tuple(bias.shape)}"
            )
        return weight.shape[0], weight.shape[1]


class NF4Linear(_FrozenQuantizedLinear):
    """A frozen linear layer whose weight is stored in NF4 (blocks of 64), with optional double quantization.

    Buffers: ``weight_packed`` uint8 (ceil(out * in / 64) * 32,); with ``double_quant``
    ``weight_absmax_codes`` int8 (n_blocks,), ``weight_absmax_scales`` float32 (ceil(n_blocks / 256),),
    ``weight_absmax_mean`` float32 (); without it ``weight_absmax`` float32 (n_blocks,); ``bias`` when present.
    Layout and error bounds: `entrenar.quant.nf4`.

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer has a (frozen) bias.
        double_quant: quantize the block absmax values to int8 (4.127 instead of 4.5 bits per weight).
        compute_dtype: dtype the weight is de-quantized to and the matmul runs in; None: the input's dtype.
        chunk_rows: output rows de-quantized at a time in forward and backward; None: all at once.
        device: where the buffers live.

    Raises:
        QuantizationError: a size or chunk_rows below 1, or a non-float compute_dtype.

    Example:
        >>> layer = NF4Linear.from_weight(torch.randn(128, 64), compute_dtype=torch.bfloat16)
        >>> layer(torch.randn(2, 64)).shape
        torch.Size([2, 128])
    """

    weight_packed: torch.Tensor
    weight_absmax: torch.Tensor
    weight_absmax_codes: torch.Tensor
    weight_absmax_scales: torch.Tensor
    weight_absmax_mean: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
        chunk_rows: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, chunk_rows, device)
        self.double_quant = double_quant
        n_blocks = -(-in_features * out_features // NF4_BLOCK_SIZE)
        n_packed = n_blocks * NF4_BLOCK_SIZE // 2
        self.register_buffer("weight_packed", torch.zeros(n_packed, dtype=torch.uint8, device=device))
        if double_quant:
            n_scales = -(-n_blocks // ABSMAX_BLOCK_SIZE)
            self.register_buffer("weight_absmax_codes", torch.zeros(n_blocks, dtype=torch.int8, device=device))
            self.register_buffer("weight_absmax_scales", torch.zeros(n_scales, dtype=torch.float32, device=device))
            self.register_buffer("weight_absmax_mean", torch.zeros((), dtype=torch.float32, device=device))
            self._float32_state = ("weight_absmax_scales", "weight_absmax_mean")
        else:
            self.register_buffer("weight_absmax", torch.zeros(n_blocks, dtype=torch.float32, device=device))
            self._float32_state = ("weight_absmax",)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
        chunk_rows: int | None = None,
    ) -> NF4Linear:
        """Quantize a float weight (out, in) and optional bias (out,) into a new layer on the weight's device.

        The layer keeps no reference to `weight`; `bias` is copied. Other arguments: see the class.

        Raises:
            QuantizationError: weight not 2-D float, bias of the wrong shape, or NaN/inf in the weight.
        """
        out_features, in_features = cls._check_weight(cls.__name__, weight, bias)
        layer = cls(
            in_features,
            out_features,
            bias is not None,
            double_quant=double_quant,
            compute_dtype=compute_dtype,
            chunk_rows=chunk_rows,
            device=weight.device,
        )
        layer.weight_packed, absmax = quantize_nf4(weight)
        if double_quant:
            layer.weight_absmax_codes, layer.weight_absmax_scales, layer.weight_absmax_mean = double_quantize(absmax)
        else:
            layer.weight_absmax = absmax
        layer._set_bias(bias)
        return layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, double_quant={self.double_quant}"

    def _absmax(self, first: int, last: int) -> torch.Tensor:
        if self.double_quant:
            return double_dequantize(
                self.weight_absmax_codes, self.weight_absmax_scales, self.weight_absmax_mean, first, last
            )
        return self.weight_absmax[first:last]

    def _dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        # Rows [start, stop) are the flat values [start * in, stop * in), which may begin and end inside a block.
        first = start * self.in_features // NF4_BLOCK_SIZE
        last = -(-stop * self.in_features // NF4_BLOCK_SIZE)
        half = NF4_BLOCK_SIZE // 2
        values = dequantize_nf4_blocks(self.weight_packed[first * half : last * half], self._absmax(first, last))
        offset = start * self.in_features - first * NF4_BLOCK_SIZE
        rows = values[offset : offset + (stop - start) * self.in_features]
        return rows.view(stop - start, self.in_features).to(dtype)


class Int8Linear(_FrozenQuantizedLinear):
    """A frozen linear layer whose weight is stored in int8 with one float32 absmax scale per output row.

    Buffers: ``weight_int8`` int8 (out, in), ``weight_scale`` float32 (out,), ``bias`` when present.
    Error bound per weight: ``weight_scale[row] / 2`` (`entrenar.quant.int8`).

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer has a (frozen) bias.
        compute_dtype: dtype the weight is de-quantized to and the matmul runs in; None: the input's dtype.
        chunk_rows: output rows de-quantized at a time in forward and backward; None: all at once.
        device: where the buffers live.

    Raises:
        QuantizationError: a size or chunk_rows below 1, or a non-float compute_dtype.
    """

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        compute_dtype: torch.dtype | None = None,
        chunk_rows: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, chunk_rows, device)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        self._float32_state = ("weight_scale",)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        compute_dtype: torch.dtype | None = None,
        chunk_rows: int | None = None,
    ) -> Int8Linear:
        """Quantize a float weight (out, in) and optional bias (out,) into a new layer on the weight's device.

        The layer keeps no reference to `weight`; `bias` is copied. Other arguments: see the class.

        Raises:
            QuantizationError: weight not 2-D float, bias of the wrong shape, or NaN/inf in the weight.
        """
        out_features, in_features = cls._check_weight(cls.__name__, weight, bias)
        layer = cls(
            in_features,
            out_features,
            bias is not None,
            compute_dtype=compute_dtype,
            chunk_rows=chunk_rows,
            device=weight.device,
        )
        layer.weight_int8, layer.weight_scale = quantize_int8_rowwise(weight)
        layer._set_bias(bias)
        return layer

    def _dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int8_rowwise(self.weight_int8[start:stop], self.weight_scale[start:stop], dtype)
