"""Quantize rows to GGML's 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, byte-exact with llama.cpp.

Each function does what llama.cpp's `ggml_quantize_chunk` does for its type
(https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c): without an importance matrix the
`quantize_row_*_ref` round-to-nearest code; with one (`quantize_row_*_impl`) a weighted search whose element
weights are `imatrix[j] * sqrt(sigma2 + x[j]**2)`, sigma2 being the mean square of the whole row. Q8_0 has no
weighted variant: ggml ignores the imatrix for it, and so do we. Block layouts: the `block_*` structs of
`ggml-common.h`, decoded by `gguf_quants.dequantize`.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType

from aprender.format.quant_search import (
    cdiv,
    first_extreme,
    fp16_bytes,
    largest_magnitude,
    make_qkx3_quants,
    make_qx_quants,
    quantize_rows,
    rdiv,
    sequential_sum,
    sqrtf,
)

__all__ = ["quantize_q4_0", "quantize_q4_1", "quantize_q5_0", "quantize_q5_1", "quantize_q8_0"]

QK = 32
_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))


def _nibbles(codes: torch.Tensor) -> torch.Tensor:
    """`qs[j] = L[j] | L[j + 16] << 4`: (n, 32) codes -> (n, 16)."""
    return (codes[:, :16] & 0x0F) | ((codes[:, 16:] & 0x0F) << 4)


def _high_bits(codes: torch.Tensor) -> torch.Tensor:
    """Q5's `qh`: bit j of a little-endian u32 is bit 4 of code j: (n, 32) codes -> (n, 4) bytes."""
    bits = (codes & 16).to(torch.float32).reshape(-1, 4, 8)  # 16 * bit 4
    return bits @ (2.0 ** torch.arange(-4.0, 4.0, device=codes.device))  # exact: sums of distinct powers of two


def _row_weights(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """`qw[j] * sqrtf(sigma2 + x[j]*x[j])` with sigma2 the row's mean square: (rows, n) -> (rows * n / 32, 32)."""
    sq = x * x
    sigma2 = cdiv(sequential_sum(sq), float(x.shape[1])).unsqueeze(-1)
    return (qw * sqrtf(sigma2 + sq)).reshape(-1, QK)


def _trunc(v: torch.Tensor) -> torch.Tensor:
    """C's float -> integer conversion (toward zero), as int32."""
    return v.to(torch.int32)


def _symmetric(x: torch.Tensor, qw: torch.Tensor | None, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 (nmax 8) and Q5_0 (nmax 16): scale and codes in [0, 2 * nmax - 1], ref or imatrix-weighted."""
    blocks = x.reshape(-1, QK)
    if qw is not None:
        return make_qx_quants(blocks, nmax, _row_weights(x, qw))
    vmax, amax = largest_magnitude(blocks)
    vmax = torch.where(amax > 0, vmax, 0.0)  # `amax < |v|` from 0: +0.0 for all-zero blocks
    d = cdiv(vmax, float(-nmax))
    inv = torch.where(d != 0, rdiv(1.0, d), 0.0)
    codes = _trunc((blocks * inv).add_(nmax + 0.5)).clamp_(max=2 * nmax - 1)
    return d.squeeze(-1), codes


def _affine(x: torch.Tensor, qw: torch.Tensor | None, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 (nmax 15) and Q5_1 (nmax 31): scale, min and codes in [0, nmax], ref or imatrix-weighted."""
    blocks = x.reshape(-1, QK)
    if qw is not None:
        d, the_min, codes = make_qkx3_quants(blocks, nmax, _row_weights(x, qw), -0.9, 0.05, 36, False)
        return d, -the_min, codes  # ggml stores m = -the_min
    vmin = first_extreme(blocks, largest=False)
    d = cdiv(first_extreme(blocks, largest=True) - vmin, float(nmax))
    inv = torch.where(d != 0, rdiv(1.0, d), 0.0)
    codes = _trunc((blocks - vmin) * inv + 0.5)
    if nmax == 15:  # Q4_1 clamps with MIN(15, ...); Q5_1's ref does not
        codes = codes.clamp(max=nmax)
    return d.squeeze(-1), vmin.squeeze(-1), codes


def _q4_0(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    d, codes = _symmetric(x, qw, 8)
    return [fp16_bytes(d), _nibbles(codes)]


def _q5_0(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    d, codes = _symmetric(x, qw, 16)
    return [fp16_bytes(d), _high_bits(codes), _nibbles(codes)]


def _q4_1(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    d, m, codes = _affine(x, qw, 15)
    return [fp16_bytes(d), fp16_bytes(m), _nibbles(codes)]


def _q5_1(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    d, m, codes = _affine(x, qw, 31)
    return [fp16_bytes(d), fp16_bytes(m), _high_bits(codes), _nibbles(codes)]


def _q8_0(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    # ggml's quantize_q8_0 ignores the imatrix: `q = roundf(x / d)`, d = max|x| / 127, ties away from zero
    blocks = x.reshape(-1, QK)
    d = cdiv(blocks.abs().amax(dim=-1, keepdim=True), 127.0)
    scaled = blocks * torch.where(d != 0, rdiv(1.0, d), 0.0)
    # |s| + 0.49999997 (the float below 0.5) truncates to roundf(|s|), ties and 0.49999997 itself included
    q = scaled.abs().add_(_BELOW_HALF).trunc_().copysign_(scaled)
    return [fp16_bytes(d.squeeze(-1)), q.to(torch.int8).view(torch.uint8)]


def quantize_q4_0(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q4_0 (`block_q4_0 {fp16 d; u8 qs[16]}`: y = d * (q - 8)), as `ggml_quantize_chunk`.

    Args:
        values: (rows, n_per_row) float, n_per_row a multiple of 32.
        imatrix: optional (n_per_row,) importance of each column; selects ggml's weighted search.

    Returns:
        (rows, n_per_row // 32 * 18) uint8.

    Raises:
        FormatError: values not 2-D, n_per_row not a multiple of 32, or an imatrix of the wrong shape.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q4_0, _q4_0)


def quantize_q5_0(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q5_0 (`{fp16 d; u8 qh[4]; u8 qs[16]}`: y = d * (q - 16)), as `ggml_quantize_chunk`.

    Args, Raises: as `quantize_q4_0`. Returns (rows, n_per_row // 32 * 22) uint8.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q5_0, _q5_0)


def quantize_q4_1(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q4_1 (`{fp16 d, m; u8 qs[16]}`: y = d * q + m), as `ggml_quantize_chunk`.

    Args, Raises: as `quantize_q4_0`. Returns (rows, n_per_row // 32 * 20) uint8.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q4_1, _q4_1)


def quantize_q5_1(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q5_1 (`{fp16 d, m; u8 qh[4]; u8 qs[16]}`: y = d * q + m), as `ggml_quantize_chunk`.

    Args, Raises: as `quantize_q4_0`. Returns (rows, n_per_row // 32 * 24) uint8.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q5_1, _q5_1)


def quantize_q8_0(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q8_0 (`{fp16 d; i8 qs[32]}`: y = d * q), as `ggml_quantize_chunk`.

    `q = roundf(x / d)` with d = max|x| / 127, rounding half away from zero. The imatrix is validated, then
    ignored, as ggml's `quantize_q8_0` ignores it.

    Args, Raises: as `quantize_q4_0`. Returns (rows, n_per_row // 32 * 34) uint8.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q8_0, _q8_0)
