"""NF4 (4-bit NormalFloat) block quantization and double quantization of the block scales, as in QLoRA.

Paper: Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", https://arxiv.org/abs/2305.14314
(section 3). Reference implementation: bitsandbytes ``functional.py`` (``create_normal_map``,
``quantize_4bit``, ``dequantize_4bit``, ``quantize_blockwise``).

Layout of a quantized tensor:

- The weight is flattened row-major and cut into blocks of `NF4_BLOCK_SIZE` = 64 values. When
  ``numel % 64 != 0`` the last block is zero-padded: padding zeros never raise a block's absmax and
  are dropped on de-quantization, so every shape quantizes (bitsandbytes also accepts a partial last
  block).
- Each block keeps its absmax (fp32) and, per value, the index 0..15 of the NF4 code value nearest to
  ``value / absmax``. A value exactly halfway between two code values takes the lower one.
- Two indices per byte, the first element in the HIGH nibble, as bitsandbytes packs them:
  ``byte[k] = index[2k] << 4 | index[2k + 1]``.

Double quantization (paper section 3, "Double Quantization"): the fp32 absmax values (one per 64
weights) minus their mean are quantized to int8 in blocks of `ABSMAX_BLOCK_SIZE` = 256, with one fp32
scale per block. bitsandbytes uses its 8-bit dynamic (sign, exponent, fraction) map for this step; we
use a signed linear absmax map (``code = round(x / scale)``, ``scale = max|x| / 127``): the centred
absmax values form a narrow, nearly symmetric distribution, for which a dynamic map's wide range buys
nothing, and the linear map's error has a simple bound, ``|error| <= scale / 2`` per absmax.
Storage: 4 + 8/64 + 32/(64 * 256) = 4.127 bits per weight (plus one fp32 mean per tensor).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from entrenar.errors import QuantizationError

__all__ = [
    "ABSMAX_BLOCK_SIZE",
    "NF4_BLOCK_SIZE",
    "NF4_CODE",
    "NF4_OFFSET",
    "DoubleQuantized",
    "NF4Quantized",
    "dequantize_nf4",
    "dequantize_nf4_blocks",
    "double_dequantize",
    "double_quantize",
    "nf4_code",
    "pack_4bit",
    "quantize_nf4",
    "unpack_4bit",
]

# The 16 NF4 code values exactly as bitsandbytes publishes them (functional.py, `get_4bit_type("nf4")`;
# paper appendix E). Definition (bitsandbytes `create_normal_map(offset=0.9677083)`): 8 positive values
# ndtri(linspace(offset, 0.5, 9)[:-1]) and 7 negative values -ndtri(linspace(offset, 0.5, 8)[:-1]) are
# quantiles of N(0, 1); with an exact 0 added, all 16 are divided by the largest, so the code spans
# [-1, 1], has one more positive than negative value, and represents 0 exactly. The linspace ran in
# float32, and the results are float32 numbers (printed here as the doubles they equal).
NF4_CODE: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# The outermost quantile level: the mean of 1 - 1/(2*15) and 1 - 1/(2*16) (paper section 3, "4-bit NormalFloat").
NF4_OFFSET = 0.9677083
NF4_BLOCK_SIZE = 64
ABSMAX_BLOCK_SIZE = 256
_INT8_MAX = 127


class NF4Quantized(NamedTuple):
    """An NF4-quantized tensor: ``packed`` uint8 (n_blocks * 32,), ``absmax`` float32 (n_blocks,)."""

    packed: torch.Tensor
    absmax: torch.Tensor


class DoubleQuantized(NamedTuple):
    """Double-quantized absmax values: ``codes`` int8 (n,), ``scales`` float32 (ceil(n / 256),), ``mean`` float32 ()."""

    codes: torch.Tensor
    scales: torch.Tensor
    mean: torch.Tensor


@functools.cache
def _code_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 tables on `device` (cached): the NF4 code (16,), the 15 midpoints between neighbouring code
    values, and the two code values of every packed byte (256, 2), high nibble first."""
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    byte = torch.arange(256, device=device)
    return code, (code[1:] + code[:-1]) / 2, torch.stack((code[byte >> 4], code[byte & 0x0F]), dim=1)


def nf4_code(device: str | torch.device = "cpu") -> torch.Tensor:
    """The 16 NF4 code values, ascending.

    Args:
        device: where to put the tensor.

    Returns:
        float32 tensor (16,) equal to `NF4_CODE`.
    """
    return _code_tables(torch.device(device))[0].clone()


def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit indices two per byte, the first of each pair in the high nibble (bitsandbytes order).

    Args:
        indices: uint8 tensor of any shape with an even number of values, each in 0..15 (read row-major).

    Returns:
        uint8 tensor (numel / 2,): ``out[k] = indices[2k] << 4 | indices[2k + 1]``.

    Raises:
        QuantizationError: wrong dtype, odd length, or a value above 15.
    """
    if indices.dtype != torch.uint8:
        raise QuantizationError(f"pack_4bit: indices must be uint8, got {indices.dtype}; convert with .to(torch.uint8)")
    if indices.numel() % 2:
        raise QuantizationError(f"pack_4bit: needs an even number of indices, got {indices.numel()}; pad with one 0")
    if indices.numel() and int(indices.max()) > 15:
        raise QuantizationError(f"pack_4bit: indices must be in 0..15, got {int(indices.max())}")
    pairs = indices.reshape(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_4bit`.

    Args:
        packed: uint8 tensor (n,).

    Returns:
        uint8 tensor (2n,) of indices 0..15, high nibble first.

    Raises:
        QuantizationError: `packed` is not a 1-D uint8 tensor.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise QuantizationError(
            f"unpack_4bit: needs a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    return torch.stack((packed >> 4, packed & 0x0F), dim=1).reshape(-1)


def _blocks(flat: torch.Tensor, size: int) -> torch.Tensor:
    """`flat` (n,) zero-padded to a multiple of `size` and viewed as (ceil(n / size), size)."""
    return F.pad(flat, (0, -flat.numel() % size)).view(-1, size)


def _check_float(tensor: torch.Tensor, what: str) -> None:
    if not tensor.is_floating_point():
        raise QuantizationError(f"{what}: must be a floating-point tensor, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise QuantizationError(f"{what}: is empty; there is nothing to quantize")


def _check_finite(absmax: torch.Tensor, what: str) -> None:
    # absmax is inf where a block holds an inf and NaN where it holds a NaN (amax propagates NaN).
    if not bool(torch.isfinite(absmax).all()):
        raise QuantizationError(f"{what}: holds NaN or inf values; fix the weights before quantizing")


def quantize_nf4(weight: torch.Tensor) -> NF4Quantized:
    """Quantize a tensor to NF4 in blocks of 64 (QLoRA, https://arxiv.org/abs/2305.14314).

    Args:
        weight: floating-point tensor of any shape (fp32, bf16 or fp16), read row-major.

    Returns:
        `NF4Quantized`: ``packed`` uint8 (ceil(numel / 64) * 32,) and ``absmax`` float32 (ceil(numel / 64),).

    Raises:
        QuantizationError: `weight` is empty, not floating point, or holds NaN/inf.
    """
    _check_float(weight, "quantize_nf4 weight")
    blocks = _blocks(weight.detach().reshape(-1).float(), NF4_BLOCK_SIZE)
    absmax = blocks.abs().amax(dim=1)
    _check_finite(absmax, "quantize_nf4 weight")
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block maps to code 0
    _, midpoints, _ = _code_tables(weight.device)
    indices = torch.bucketize(blocks / safe[:, None], midpoints, out_int32=True)
    return NF4Quantized(pack_4bit(indices.to(torch.uint8)), absmax)


def dequantize_nf4_blocks(packed: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """De-quantize whole NF4 blocks, padding included.

    Args:
        packed: uint8 (n_blocks * 32,) packed indices of consecutive blocks.
        absmax: float32 (n_blocks,) the absmax of each of those blocks.

    Returns:
        float32 (n_blocks * 64,): ``code[index] * absmax[block]``.

    Raises:
        QuantizationError: the sizes disagree.
    """
    if packed.numel() != absmax.numel() * NF4_BLOCK_SIZE // 2:
        raise QuantizationError(
            f"NF4 data: {packed.numel()} packed bytes do not fit {absmax.numel()} blocks of {NF4_BLOCK_SIZE}"
        )
    # One lookup per byte in a (256, 2) table: half the index traffic of unpacking, then gathering per value.
    # Each table row (two float32 values) is read as one int64, so the lookup is a 1-D `index_select`, the
    # fast gather path (about 15x faster on a CPU than indexing the (256, 2) float table, same bytes).
    pairs = _code_tables(packed.device)[2].view(torch.int64).view(-1)
    values = pairs.index_select(0, packed.int()).view(torch.float32).view(-1, NF4_BLOCK_SIZE)
    return values.mul_(absmax.float()[:, None]).view(-1)


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rebuild a tensor from `quantize_nf4` output.

    Args:
        packed: uint8 (ceil(numel / 64) * 32,).
        absmax: float32 (ceil(numel / 64),), exact or from `double_dequantize`.
        shape: the original shape.
        dtype: dtype of the result (computed in float32, then cast).

    Returns:
        tensor of `shape` and `dtype`.

    Raises:
        QuantizationError: `shape` does not match the number of blocks.
    """
    numel = math.prod(shape)
    if absmax.numel() != -(-numel // NF4_BLOCK_SIZE):
        raise QuantizationError(
            f"dequantize_nf4: shape {tuple(shape)} needs {-(-numel // NF4_BLOCK_SIZE)} blocks, got {absmax.numel()}"
        )
    return dequantize_nf4_blocks(packed, absmax)[:numel].view(shape).to(dtype)


def double_quantize(absmax: torch.Tensor) -> DoubleQuantized:
    """Quantize NF4 block absmax values: subtract their mean, then int8 in blocks of 256 (linear absmax map).

    See the module docstring for why the map is linear rather than bitsandbytes' dynamic map.
    Error bound: ``|double_dequantize(...) - absmax| <= scales[i // 256] / 2`` (plus float32 rounding).

    Args:
        absmax: float tensor (n,), finite.

    Returns:
        `DoubleQuantized`: ``codes`` int8 (n,), ``scales`` float32 (ceil(n / 256),) = max|absmax - mean| / 127
        per block, ``mean`` float32 ().

    Raises:
        QuantizationError: `absmax` is not a non-empty 1-D float tensor, or holds NaN/inf.
    """
    _check_float(absmax, "double_quantize absmax")
    if absmax.dim() != 1:
        raise QuantizationError(f"double_quantize absmax: must be 1-D, got shape {tuple(absmax.shape)}")
    _check_finite(absmax, "double_quantize absmax")
    absmax = absmax.float()
    mean = absmax.mean()
    blocks = _blocks(absmax - mean, ABSMAX_BLOCK_SIZE)
    scales = blocks.abs().amax(dim=1) / _INT8_MAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(blocks / safe[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return DoubleQuantized(codes.view(-1)[: absmax.numel()], scales, mean)


def double_dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    mean: torch.Tensor,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Rebuild absmax values ``codes[i] * scales[i // 256] + mean`` for ``start <= i < stop``.

    Args:
        codes: int8 (n,) from `double_quantize`.
        scales: float32 (ceil(n / 256),).
        mean: float32 ().
        start: first index to rebuild.
        stop: one past the last index (None: n).

    Returns:
        float32 (stop - start,).

    Raises:
        QuantizationError: the range is outside 0..n or `scales` has the wrong length.
    """
    n = codes.numel()
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise QuantizationError(f"double_dequantize: range [{start}, {stop}) is outside [0, {n}]")
    if scales.numel() != -(-n // ABSMAX_BLOCK_SIZE):
        raise QuantizationError(
            f"double_dequantize: {n} codes need {-(-n // ABSMAX_BLOCK_SIZE)} scales, got {scales.numel()}"
        )
    block = torch.arange(start, stop, device=codes.device) // ABSMAX_BLOCK_SIZE
    return codes[start:stop].float() * scales.float()[block] + mean.float()
