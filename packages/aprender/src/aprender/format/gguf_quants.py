"""Decode GGML tensor data (plain and block-quantized) into torch tensors.

Block layouts and arithmetic follow ggml's reference code: the `block_*` structs in `ggml-common.h`
and the `dequantize_row_*` functions in `ggml-quants.c`
(https://github.com/ggml-org/ggml/blob/master/src/ggml-quants.c). Each own decoder below works on a
whole `(n_blocks, type_size)` byte matrix at once and performs the same float32 operations in the
same order as the reference, so its output is bit-identical to ggml's.

Own implementations: F32, F16, BF16, F64, I8, I16, I32, I64 (plain casts), Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Every other type the `gguf` package can dequantize (IQ*, TQ*,
MXFP4, ...) goes through `gguf.quants.dequantize`; the rest raise `FormatError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gguf.quants
import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from aprender.errors import FormatError

_T = GGMLQuantizationType

# Plain types: element dtype in the file (little-endian) -> torch dtype holding it exactly.
_PLAIN: dict[int, tuple[np.dtype, torch.dtype]] = {
    _T.F32: (np.dtype("<f4"), torch.float32),
    _T.F16: (np.dtype("<f2"), torch.float16),
    _T.BF16: (np.dtype("<i2"), torch.bfloat16),  # read as int16 bits, then reinterpreted
    _T.F64: (np.dtype("<f8"), torch.float64),
    _T.I8: (np.dtype("i1"), torch.int8),
    _T.I16: (np.dtype("<i2"), torch.int16),
    _T.I32: (np.dtype("<i4"), torch.int32),
    _T.I64: (np.dtype("<i8"), torch.int64),
}


def ggml_type_name(ggml_type: int) -> str:
    """Name of a GGML type id (`"Q4_1"`), or `"unknown"` for ids the gguf package does not define."""
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return "unknown"


def _unpack(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Split each byte into `8 // bits` fields, lowest bits first.

    (..., k) uint8 -> (..., 8 // bits, k) uint8 where out[..., i, j] = (x[..., j] >> (i * bits)) & mask.
    """
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8).reshape(-1, 1)
    return (x.unsqueeze(-2) >> shifts) & ((1 << bits) - 1)


def _le_bits(x: torch.Tensor) -> torch.Tensor:
    """Bits of little-endian words: (n, k) uint8 -> (n, 8 * k) uint8, bit i of the word at index i."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((x.unsqueeze(-1) >> shifts) & 1).reshape(x.shape[0], -1)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 field at byte `start` of every block: (n, type_size) uint8 -> (n, 1) float32."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # block_q4_0 {fp16 d; u8 qs[16]}: x[j] = (qs[j] & 15) - 8, x[j + 16] = (qs[j] >> 4) - 8; y = x * d
    q = _unpack(b[:, 2:], 4).reshape(-1, 32).to(torch.int8) - 8
    return _f16(b, 0) * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    # block_q4_1 {fp16 d, m; u8 qs[16]}: y = x * d + m with unsigned 4-bit x
    q = _unpack(b[:, 4:], 4).reshape(-1, 32).float()
    return _f16(b, 0) * q + _f16(b, 2)


def _q5(b: torch.Tensor, qh_at: int) -> torch.Tensor:
    """5-bit codes of Q5_0/Q5_1: the low nibbles of qs plus bit j of the u32 qh as bit 4 of x[j]."""
    low = _unpack(b[:, qh_at + 4 :], 4).reshape(-1, 32)
    return low | (_le_bits(b[:, qh_at : qh_at + 4]) << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    # block_q5_0 {fp16 d; u8 qh[4]; u8 qs[16]}: y = (x - 16) * d
    return _f16(b, 0) * (_q5(b, 2).to(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    # block_q5_1 {fp16 d, m; u8 qh[4]; u8 qs[16]}: y = x * d + m
    return _f16(b, 0) * _q5(b, 4).float() + _f16(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # block_q8_0 {fp16 d; i8 qs[32]}: y = qs * d
    return _f16(b, 0) * b[:, 2:].view(torch.int8).float()


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    # block_q2_K {u8 scales[16]; u8 qs[64]; fp16 d, dmin}: 16 groups of 16, 2-bit codes.
    # Each 32-byte half of qs holds 4 bit planes; group g uses scale nibble (scales[g] & 15) and min (scales[g] >> 4).
    n = b.shape[0]
    sc = b[:, :16]
    dl = (_f16(b, 80) * (sc & 0x0F).float()).reshape(n, 16, 1)
    ml = (_f16(b, 82) * (sc >> 4).float()).reshape(n, 16, 1)
    q = _unpack(b[:, 16:80].reshape(n, 2, 32), 2).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, 256)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    # block_q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}: 6-bit signed scales (offset 32),
    # 2-bit low codes as in Q2_K, and bit k of hmask[l] clear meaning "subtract 4" in plane k.
    n = b.shape[0]
    s = b[:, 96:108]
    low = _unpack(s[:, :8], 4).reshape(n, 16)
    high = _unpack(s[:, 8:12], 2).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (_f16(b, 108) * scales).reshape(n, 16, 1)
    ql = _unpack(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 16, 16)
    hm = _unpack(b[:, :32].reshape(n, 1, 32), 1).reshape(n, 16, 16)
    q = (ql.to(torch.int8) - ((hm ^ 1) << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, 256)


def k_scales_mins(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 6-bit scales and mins packed in 12 bytes (`get_scale_min_k4`): (n, 12) -> 2 x (n, 8) uint8."""
    sd, sm, smd = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = torch.cat([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], dim=-1)
    mins = torch.cat([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], dim=-1)
    return scales, mins


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K output y = (d * scale) * q - dmin * min for codes q: (n, 8, 32) float32 -> (n, 256)."""
    n = b.shape[0]
    scales, mins = k_scales_mins(b[:, 4:16])
    dl = (_f16(b, 0) * scales.float()).reshape(n, 8, 1)
    ml = (_f16(b, 2) * mins.float()).reshape(n, 8, 1)
    return (dl * q - ml).reshape(n, 256)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # block_q4_K {fp16 d, dmin; u8 scales[12]; u8 qs[128]}: each 32-byte chunk gives two groups (low, high nibbles)
    q = _unpack(b[:, 16:].reshape(-1, 4, 32), 4).reshape(-1, 8, 32).float()
    return _k_affine(b, q)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # block_q5_K {fp16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K codes plus bit g of qh[l] as bit 4
    low = _unpack(b[:, 48:].reshape(-1, 4, 32), 4).reshape(-1, 8, 32)
    high = _unpack(b[:, 16:48].reshape(-1, 1, 32), 1).reshape(-1, 8, 32)
    return _k_affine(b, (low | (high << 4)).float())


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # block_q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d}: per 128-value half, 4 nibble planes from ql
    # and 4 2-bit planes from qh give 6-bit codes (offset 32); 16 groups of 16 with signed 8-bit scales.
    n = b.shape[0]
    dl = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).reshape(n, 16, 1)
    ql = _unpack(b[:, :128].reshape(n, 2, 64), 4).reshape(n, 2, 128)
    qh = _unpack(b[:, 128:192].reshape(n, 2, 32), 2).reshape(n, 2, 128)
    q = ((ql | (qh << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, 256)


_OWN: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q8_0: _q8_0,
    _T.Q2_K: _q2_k,
    _T.Q3_K: _q3_k,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
    _T.Q6_K: _q6_k,
}


def _checked_bytes(data: np.ndarray | bytes, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Validate type, shape and byte count; return the data as a flat uint8 array (no copy)."""
    name = ggml_type_name(ggml_type)
    if ggml_type not in GGML_QUANT_SIZES:
        raise FormatError(f"GGML type id {ggml_type} is unknown; the tensor cannot be decoded")
    if not shape or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise FormatError(f"shape {shape} is invalid for a {name} tensor: give one or more positive dimensions")
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    if shape[-1] % block_size:
        raise FormatError(
            f"{name} rows hold whole blocks of {block_size} values, but shape {shape} has rows of {shape[-1]}"
        )
    raw = (
        np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data).reshape(-1).view(np.uint8)
    )
    expected = math.prod(shape) // block_size * type_size
    if raw.size != expected:
        raise FormatError(f"a {name} tensor of shape {shape} needs {expected} bytes, got {raw.size}")
    return raw


def _dequantize_blocks(raw: np.ndarray, ggml_type: int) -> torch.Tensor:
    """Quantized bytes -> flat float32 values, with an own decoder or the gguf package's."""
    qtype = GGMLQuantizationType(ggml_type)
    blocks = raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    own = _OWN.get(ggml_type)
    if own is not None:
        return own(torch.from_numpy(blocks.copy())).reshape(-1)
    try:
        values = gguf.quants.dequantize(blocks, qtype)
    except NotImplementedError as exc:
        raise FormatError(
            f"GGML type {qtype.name} cannot be dequantized (neither aprender nor the gguf package supports it); "
            "convert the model to F16, Q8_0 or a K-quant"
        ) from exc
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(-1)


def decode(data: np.ndarray | bytes, ggml_type: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Decode GGML tensor bytes into a new torch tensor of `dtype`.

    Plain types (F32, F16, BF16, F64, I8..I64) are cast straight from their stored values, so for
    example an I32 tensor read as `torch.int32` or an F64 one read as `torch.float64` is exact.
    Quantized types are dequantized to float32 first, then cast.

    Args:
        data: the tensor's raw bytes, `math.prod(shape) / block_size * type_size` of them.
        ggml_type: a `gguf.GGMLQuantizationType` value.
        shape: row-major (torch order) shape; the last dimension is the GGML row (`ne[0]`).
        dtype: the dtype of the result.

    Returns:
        A tensor of `shape` and `dtype` that shares no memory with `data`.

    Raises:
        FormatError: unknown or undecodable type, invalid shape, or a byte count that does not match.
    """
    raw = _checked_bytes(data, ggml_type, shape)
    plain = _PLAIN.get(ggml_type)
    if plain is None:
        return _dequantize_blocks(raw, ggml_type).reshape(shape).to(dtype)
    np_dtype, torch_dtype = plain
    values = torch.from_numpy(raw.view(np_dtype).astype(np_dtype.newbyteorder("=")))
    return values.view(torch_dtype).reshape(shape).to(dtype)


def dequantize(data: np.ndarray | bytes, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Dequantize GGML tensor bytes to float32.

    Reference layouts: https://github.com/ggml-org/ggml/blob/master/src/ggml-quants.c (`dequantize_row_*`).

    Args:
        data: raw tensor bytes (e.g. `GGUFFile.raw(name)`), any numpy array or `bytes`.
        ggml_type: a `gguf.GGMLQuantizationType` value.
        shape: row-major shape of the result; the last dimension must be a multiple of the type's block size.

    Returns:
        float32 tensor of `shape`.

    Raises:
        FormatError: unknown or undecodable type, invalid shape, or a byte count that does not match.

    Example:
        >>> import numpy as np
        >>> dequantize(np.array([0, 60], dtype=np.uint8), 1, (1,))  # F16 0x3C00 == 1.0
        tensor([1.])
    """
    return decode(data, ggml_type, shape, torch.float32)
