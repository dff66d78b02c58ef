"""Quantize rows to GGML's 256-value K-quants Q4_K, Q5_K and Q6_K, byte-exact with llama.cpp.

Each function does what llama.cpp's `ggml_quantize_chunk` does for its type
(https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c): without an importance matrix the
`quantize_row_q*_K_ref` code, with one the `quantize_row_q*_K_impl` code. A super-block of 256 values holds
8 sub-blocks of 32 (Q4_K, Q5_K: 6-bit scale and min per sub-block, each scaled by the fp16 `d` and `dmin`) or
16 sub-blocks of 16 (Q6_K: signed 8-bit scales times `d`). After the search, every value is requantized with
the scales as stored (fp16 times 6- or 8-bit), except in sub-blocks whose stored scale is zero, which keep the
search's levels, as in ggml. Block layouts: `ggml-common.h`, decoded by `gguf_quants.dequantize`.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType

from aprender.format.gguf_quants import k_scales_mins
from aprender.format.quant_search import (
    GROUP_MAX_EPS,
    cdiv,
    fp16_bytes,
    fp16_round,
    largest_magnitude,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    quantize_rows,
    rdiv,
    sequential_sum,
    sqrtf,
    wrap_u8,
)

__all__ = ["quantize_q4_k", "quantize_q5_k", "quantize_q6_k"]

QK_K = 256

# make_qkx2_quants's (rmin, rdelta, nstep) in quantize_row_q4_K_ref / quantize_row_q5_K_ref, by nmax.
_REF_SEARCH = {15: (-1.0, 0.1, 20), 31: (-0.5, 0.1, 15)}


def _pack_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K's 12 scale bytes from 8 scales and 8 mins, as ggml's stores into `uint8_t` write them.

    Bytes 0-3: scale j (6 bits) and the top 2 bits of scale j + 4; bytes 4-7 the same for mins; bytes 8-11: the
    low nibbles of scale and min j + 4. Inputs (n, 8) int in [0, 255]; values above 63 spill as in the C code.
    """
    top_scales = wrap_u8(ls[:, :4] | ((ls[:, 4:] >> 4) << 6))
    top_mins = wrap_u8(lm[:, :4] | ((lm[:, 4:] >> 4) << 6))
    low = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return torch.cat([top_scales, top_mins, low], dim=-1)


def _ref_scales(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, ...]:
    """`quantize_row_q{4,5}_K_ref`'s search: d, dmin (n,), 6-bit scales and mins (n, 8), levels (n * 8, 32)."""
    columns = x.reshape(-1, 32).t().contiguous()  # positions first, as the search works; its .t() costs no copy
    av_x = sqrtf(cdiv(sequential_sum(columns * columns, dim=0), 32.0))
    rmin, rdelta, nstep = _REF_SEARCH[nmax]
    weights = av_x + columns.abs()
    scales, mins, levels = make_qkx2_quants(columns.t(), nmax, weights.t(), rmin, rdelta, nstep, False)
    scales, mins = scales.reshape(-1, 8), mins.reshape(-1, 8)
    max_scale = scales.amax(dim=-1, keepdim=True)
    max_scale = torch.where(max_scale > 0, max_scale, 0.0)  # C: `scale > max_scale` from +0.0
    max_min = mins.amax(dim=-1, keepdim=True)
    max_min = torch.where(max_min > 0, max_min, 0.0)
    inv_scale = torch.where(max_scale > 0, rdiv(63.0, max_scale), 0.0)
    inv_min = torch.where(max_min > 0, rdiv(63.0, max_min), 0.0)
    ls = wrap_u8(nearest_int(inv_scale * scales)).clamp(max=63)
    lm = wrap_u8(nearest_int(inv_min * mins)).clamp(max=63)
    return cdiv(max_scale, 63.0).squeeze(-1), cdiv(max_min, 63.0).squeeze(-1), ls, lm, levels


def _weighted_scales(x: torch.Tensor, qw: torch.Tensor, nmax: int) -> tuple[torch.Tensor, ...]:
    """`quantize_row_q{4,5}_K_impl`'s search with an imatrix; returns as `_ref_scales`."""
    sigma2 = cdiv(sequential_sum(x * x) * 2.0, float(QK_K)).unsqueeze(-1)
    columns = qw.reshape(-1, QK_K).repeat(x.shape[0] * QK_K // qw.numel(), 1)  # qw is per column of a row
    weights = (columns * sqrtf(sigma2 + x * x)).reshape(-1, 32)
    sub = x.reshape(-1, 32)
    sum_weights = sequential_sum(weights).reshape(-1, 8)
    scales, mins, levels = make_qkx3_quants(sub, nmax, weights, -0.9, 0.05, 36, False)
    d, ls = make_qp_quants(scales.reshape(-1, 8), 63, sum_weights)
    dmin, lm = make_qp_quants(mins.reshape(-1, 8), 63, sum_weights)
    if nmax == 31:  # Q5_K's impl clamps with MIN(63, ...); Q4_K's does not
        ls, lm = ls.clamp(max=63), lm.clamp(max=63)
    return d, dmin, ls, lm, levels


def _affine_k(x: torch.Tensor, qw: torch.Tensor | None, nmax: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Q4_K (nmax 15) and Q5_K (nmax 31): the fields d, dmin, scales (12 bytes) and the levels (n, 256)."""
    x = x.reshape(-1, QK_K)
    if qw is None:
        d, dmin, ls, lm, levels = _ref_scales(x, nmax)
    else:
        d, dmin, ls, lm, levels = _weighted_scales(x, qw, nmax)
    packed = _pack_scales(ls, lm).to(torch.uint8)
    sc, m = k_scales_mins(packed)
    dq = (fp16_round(d).unsqueeze(-1) * sc.to(torch.float32)).reshape(-1, 1)
    mq = (fp16_round(dmin).unsqueeze(-1) * m.to(torch.float32)).reshape(-1, 1)
    requantized = nearest_int((x.reshape(-1, 32) + mq) / dq).clamp_(0, nmax)
    return [fp16_bytes(d), fp16_bytes(dmin), packed], _unless_zero_step(dq, requantized, levels).reshape(-1, QK_K)


def _unless_zero_step(step: torch.Tensor, requantized: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """`requantized`, but the search's `levels` in sub-blocks whose `step` (n, 1) is 0 (the C's `if (!d) continue`)."""
    zero = step == 0
    return torch.where(zero, levels, requantized) if bool(zero.any()) else requantized  # int where: slow


def _nibble_pairs(levels: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K `qs`: each 64 values give 32 bytes, value l in the low nibble and l + 32 in the high: (n, 128)."""
    halves = (levels & 0x0F).reshape(-1, 4, 2, 32)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(-1, 128)


def _q4_k(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    fields, levels = _affine_k(x, qw, 15)
    return [*fields, _nibble_pairs(levels)]


def _q5_k(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    # Q4_K with 5-bit levels: bit 4 of value 32 * g + l is bit g of qh[l]
    fields, levels = _affine_k(x, qw, 31)
    high = (levels >> 4).reshape(-1, 8, 32) << torch.arange(8, device=levels.device).reshape(1, 8, 1)
    return [*fields, high.sum(dim=1), _nibble_pairs(levels)]


def _q6_k_bits(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q6_K `ql` (n, 128) and `qh` (n, 64) from levels (n, 256) in [0, 63], per 128-value half as in ggml."""
    quarters = levels.reshape(-1, 2, 4, 32)
    low = quarters & 0x0F
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=-1)
    high = (quarters >> 4) << torch.tensor([0, 2, 4, 6], dtype=levels.dtype, device=levels.device).reshape(1, 1, 4, 1)
    return ql.reshape(-1, 128), high.sum(dim=2).reshape(-1, 64)


def _q6_k(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
    # With an imatrix, ggml weights each element by its column's importance alone (no sqrt(sigma2 + x**2)).
    sub = x.reshape(-1, 16)
    weights = None if qw is None else qw.reshape(1, -1).expand(x.shape[0], -1).reshape(-1, 16)
    scales, levels = make_qx_quants(sub, 32, weights)
    scales = scales.reshape(-1, 16)
    max_scale, max_abs = largest_magnitude(scales, skip_nan=True)  # ggml's `fabsf(scale) > max_abs_scale` scan
    zero = max_abs < GROUP_MAX_EPS  # (n, 1): the block is written as 210 zero bytes
    iscale = rdiv(-128.0, max_scale)
    d = rdiv(1.0, iscale)
    q_scales = ((nearest_int(iscale * scales).clamp(max=127) + 128) & 0xFF) - 128  # stored as int8_t
    dq = (fp16_round(d) * q_scales.to(torch.float32)).reshape(-1, 1)
    requantized = nearest_int(sub / dq).clamp_(-32, 31).add_(32)
    ql, qh = _q6_k_bits(_unless_zero_step(dq, requantized, levels).reshape(-1, QK_K))
    fields = [f.to(torch.uint8) for f in (ql, qh, q_scales.to(torch.int8).view(torch.uint8), fp16_bytes(d.squeeze(-1)))]
    return [torch.where(zero, 0, f) for f in fields] if bool(zero.any()) else fields


def quantize_q4_k(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q4_K (`{fp16 d, dmin; u8 scales[12]; u8 qs[128]}`), as `ggml_quantize_chunk`.

    Value i of sub-block j decodes as `d * scale_j * q_i - dmin * min_j`, q in [0, 15].

    Args:
        values: (rows, n_per_row) float, n_per_row a multiple of 256.
        imatrix: optional (n_per_row,) importance of each column; selects ggml's weighted search.

    Returns:
        (rows, n_per_row // 256 * 144) uint8.

    Raises:
        FormatError: values not 2-D, n_per_row not a multiple of 256, or an imatrix of the wrong shape.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q4_K, _q4_k)


def quantize_q5_k(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q5_K (`{fp16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}`), as `ggml_quantize_chunk`.

    Q4_K with q in [0, 31]. Args, Raises: as `quantize_q4_k`. Returns (rows, n_per_row // 256 * 176) uint8.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q5_K, _q5_k)


def quantize_q6_k(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q6_K (`{u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d}`), as `ggml_quantize_chunk`.

    Value i of sub-block j (16 values) decodes as `d * scale_j * (q_i - 32)`, q in [0, 63].

    Args, Raises: as `quantize_q4_k`. Returns (rows, n_per_row // 256 * 210) uint8.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q6_K, _q6_k)
