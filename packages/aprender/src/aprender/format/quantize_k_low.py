"""Q2_K and Q3_K quantizers that write the same bytes as llama.cpp.

Ports of ``quantize_row_q2_K_ref`` / ``quantize_row_q3_K_ref`` and, with an importance matrix,
``quantize_row_q2_K_impl`` / ``quantize_row_q3_K_impl`` from llama.cpp's ``ggml/src/ggml-quants.c``
(https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c), vectorised over all 256-value
blocks at once. Bytes match because every step does the C's float32 operations in the C's order (see
`aprender.format.quant_search`, whose search helpers these build on); `make_q3_quants`, used by Q3_K alone,
lives here.

Block layouts (``ggml-common.h``), 16 sub-blocks of 16 values each:
``block_q2_K {u8 scales[16]; u8 qs[64]; fp16 d, dmin}`` (84 bytes; scale and min codes as nibbles) and
``block_q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}`` (110 bytes; 6-bit signed scales).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType

from aprender.format.quant_search import (
    GROUP_MAX_EPS,
    BlockFields,
    cdiv,
    fp16_bytes,
    fp16_round,
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

__all__ = ["make_q3_quants", "quantize_q2_k", "quantize_q3_k"]

QK_K = 256


def _running_max(values: torch.Tensor, magnitude: bool = False) -> torch.Tensor:
    """The C scan ``if (v > m) m = v;`` from ``m = 0`` over the last dimension: (n, k) -> (n,) float32.

    With `magnitude`, the scan compares ``fabsf(v)`` but keeps the signed v (Q3_K's largest scale).
    Unlike ``amax`` it skips NaN (a comparison with NaN is false) and gives 0 when nothing exceeds 0.
    """
    best = torch.zeros_like(values[:, 0])
    kept = best
    for v in values.t():
        key = v.abs() if magnitude else v
        take = key > best
        best = torch.where(take, key, best)
        kept = torch.where(take, v, kept)
    return kept


def make_q3_quants(x: torch.Tensor, nmax: int, do_rmse: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's ``make_q3_quants``: a signed scale and codes in [0, 2 * nmax) per block, weighted by x**2.

    Codes start at ``nearest_int(-nmax / max * x)`` (max: the first value of largest magnitude). With
    `do_rmse`, up to five passes then move single codes to their least-squares optimum while that raises
    ``sumlx**2 / suml2`` (lowers the x**2-weighted error), and the scale is the weighted least-squares fit
    ``sumlx / suml2``; without it the scale is ``-max / nmax``. Q3_K's reference path calls it with nmax 4.

    Args:
        x: float32 (n_blocks, n).
        nmax: codes are ``l + nmax`` for l in [-nmax, nmax - 1].
        do_rmse: refine the codes and fit the scale as above.

    Returns:
        `scale` (n_blocks,) float32 and `levels` (n_blocks, n) int32 in [0, 2 * nmax - 1], so that
        ``x ~ scale * (levels - nmax)``; a block whose largest magnitude is below `GROUP_MAX_EPS` gets scale 0
        and levels 0 (not nmax), as in ggml.
    """
    columns = x.t().contiguous()  # one contiguous row per element position
    signed_max = _running_max(x, magnitude=True)
    iscale = rdiv(float(-nmax), signed_max)
    codes = nearest_int(iscale * columns).clamp(-nmax, nmax - 1)
    if do_rmse:
        w = columns * columns
        wx = w * columns
        floats = codes.to(torch.float32)
        sumlx = sequential_sum((wx * floats).t())
        suml2 = sequential_sum((w * floats * floats).t())
        for _ in range(5):
            changed = torch.zeros_like(sumlx, dtype=torch.bool)
            for i in range(columns.shape[0]):
                li = codes[i].to(torch.float32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                new = nearest_int(columns[i] * sl2 / slx).clamp(-nmax, nmax - 1)
                accept = (slx > 0) & (new != codes[i])
                nf = new.to(torch.float32)
                slx = slx + wx[i] * nf
                sl2 = sl2 + w[i] * nf * nf
                accept &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                codes[i] = torch.where(accept, new, codes[i])
                sumlx = torch.where(accept, slx, sumlx)
                suml2 = torch.where(accept, sl2, suml2)
                changed |= accept
            if not bool(changed.any()):  # a pass that changes nothing leaves the state, so every later pass, as it was
                break
        scale = torch.where(suml2 > 0, sumlx / suml2, 0.0)
    else:
        scale = rdiv(1.0, iscale)
    zero = signed_max.abs() < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(-1), 0, codes.t() + nmax)


def _requantize(
    x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, levels: torch.Tensor, lo: int, hi: int
) -> torch.Tensor:
    """The final pass of every K-quant: ``clamp(nearest_int((x + offset) / step), lo, hi) - lo`` per value.

    Sub-blocks whose `step` is 0 keep their `levels` (the C skips them with ``if (!d) continue;``).

    Args:
        x, levels: (n_blocks, 256) float32 values and int32 levels from the search.
        step, offset: (n_blocks, 16) float32, one per sub-block of 16 (`offset` None: 0).
        lo, hi: the clamp range of ``nearest_int``.
    """
    values = x.reshape(-1, 16, 16)
    if offset is not None:
        values = values + offset.unsqueeze(-1)
    new = nearest_int(values / step.unsqueeze(-1)).clamp(lo, hi) - lo
    return torch.where((step != 0).unsqueeze(-1), new, levels.reshape(-1, 16, 16)).reshape(-1, QK_K)


def _pack_2bit(levels: torch.Tensor) -> torch.Tensor:
    """``qs[64]`` of Q2_K and Q3_K from (n, 256) levels in [0, 3]: value 128h + 32k + l at bits 2k of byte 32h + l."""
    planes = levels.reshape(-1, 2, 4, 32).to(torch.uint8)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=levels.device).reshape(1, 1, 4, 1)
    return (planes << shifts).sum(dim=2, dtype=torch.uint8).reshape(-1, 64)


def _pack_q3_scales(six_bit: torch.Tensor) -> torch.Tensor:
    """Q3_K ``scales[12]`` from (n, 16) codes in [0, 63].

    Byte j < 8 holds the low nibbles of scales j (bits 0-3) and j + 8 (bits 4-7); byte 8 + k holds the two
    high bits of scales k, k + 4, k + 8 and k + 12 at bits 0, 2, 4 and 6.
    """
    s = six_bit.to(torch.uint8)
    low = (s[:, :8] & 0xF) | ((s[:, 8:] & 0xF) << 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=s.device).reshape(1, 4, 1)
    high = ((s >> 4).reshape(-1, 4, 4) << shifts).sum(dim=1, dtype=torch.uint8)
    return torch.cat([low, high], dim=1)


def _pack_q3(levels: torch.Tensor, six_bit: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """block_q3_K bytes from (n, 256) levels in [0, 7], (n, 16) 6-bit scales and (n, 2) fp16 bytes of d.

    ``hmask``: bit k of byte m is the high bit (level > 3) of value 32k + m; ``qs``: the low two bits.
    """
    high = (levels > 3).to(torch.uint8).reshape(-1, 8, 32)
    shifts = torch.arange(8, dtype=torch.uint8, device=levels.device).reshape(1, 8, 1)
    hmask = (high << shifts).sum(dim=1, dtype=torch.uint8)
    return torch.cat([hmask, _pack_2bit(levels & 3), _pack_q3_scales(six_bit), d], dim=1)


def _sigma_weights(x: torch.Tensor, qw: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The importance-matrix weights ``qw * sqrtf(sigma2 + x**2)``, ``sigma2 = factor * sum(x**2) / 256`` per block.

    Returns the (n, 256) weights and their (n, 16) sums per sub-block (ggml's ``sw``).
    """
    sigma2 = cdiv(factor * sequential_sum(x * x), float(QK_K))
    weights = qw * sqrtf(sigma2.unsqueeze(-1) + x * x)
    return weights, sequential_sum(weights.reshape(-1, 16, 16))


def _q3_k_blocks(x: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    """``quantize_row_q3_K_ref`` (qw None) or ``quantize_row_q3_K_impl``: (n, 256) float32 -> (n, 110) bytes."""
    if qw is None:
        scales, levels = make_q3_quants(x.reshape(-1, 16), 4)
        scales = scales.reshape(-1, 16)
        max_scale = _running_max(scales, magnitude=True)
        iscale = rdiv(-32.0, max_scale)
        six_bit = nearest_int(iscale.unsqueeze(-1) * scales)
        six_bit = ((six_bit + 128) & 0xFF) - 128  # the C keeps nearest_int in an int8_t
        six_bit = torch.where((max_scale != 0).unsqueeze(-1), six_bit.clamp(-32, 31) + 32, 0)
        d = torch.where(max_scale != 0, rdiv(1.0, iscale), 0.0)
    else:
        weights, sw = _sigma_weights(x, qw, 2.0)
        scales, levels = make_qx_quants(x.reshape(-1, 16), 4, weights.reshape(-1, 16))
        d, six_bit = make_qx_quants(scales.reshape(-1, 16), 32, sw)
    step = fp16_round(d).unsqueeze(-1) * (six_bit - 32).to(torch.float32)
    levels = _requantize(x, step, None, levels.reshape(-1, QK_K), -4, 3)
    return _pack_q3(levels, six_bit, fp16_bytes(d))


def _q2_k_blocks(x: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    """``quantize_row_q2_K_ref`` (qw None) or ``quantize_row_q2_K_impl``: (n, 256) float32 -> (n, 84) bytes."""
    groups = x.reshape(-1, 16)
    if qw is None:
        scales, mins, levels = make_qkx2_quants(groups, 3, groups.abs(), -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(-1, 16), mins.reshape(-1, 16)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        scale_codes = torch.where(
            (max_scale > 0).unsqueeze(-1), nearest_int(rdiv(15.0, max_scale).unsqueeze(-1) * scales), 0
        )
        min_codes = torch.where((max_min > 0).unsqueeze(-1), nearest_int(rdiv(15.0, max_min).unsqueeze(-1) * mins), 0)
        d = torch.where(max_scale > 0, cdiv(max_scale, 15.0), 0.0)
        dmin = torch.where(max_min > 0, cdiv(max_min, 15.0), 0.0)
    else:
        weights, sw = _sigma_weights(x, qw, 1.0)
        scales, mins, levels = make_qkx3_quants(groups, 3, weights.reshape(-1, 16), -0.9, 0.05, 36, False)
        d, scale_codes = make_qp_quants(scales.reshape(-1, 16), 15, sw)
        dmin, min_codes = make_qp_quants(mins.reshape(-1, 16), 15, sw)
    packed = wrap_u8(scale_codes | (min_codes * 16))  # the C's `scales[j] = l | (m << 4)` into a uint8_t
    step = fp16_round(d).unsqueeze(-1) * (packed & 0xF).to(torch.float32)
    offset = fp16_round(dmin).unsqueeze(-1) * (packed >> 4).to(torch.float32)
    levels = _requantize(x, step, offset, levels.reshape(-1, QK_K), 0, 3)
    return torch.cat([packed.to(torch.uint8), _pack_2bit(levels), fp16_bytes(d), fp16_bytes(dmin)], dim=1)


def _row_blocks(blocks_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> BlockFields:
    """`blocks_fn` ((n, 256) values and their weights -> (n, type_size) bytes) as `quantize_rows` takes it: rows
    read as 256-value blocks, the imatrix repeated for each row."""

    def fields(x: torch.Tensor, qw: torch.Tensor | None) -> list[torch.Tensor]:
        weights = None if qw is None else qw.reshape(1, -1).expand(x.shape[0], -1).reshape(-1, QK_K)
        return [blocks_fn(x.reshape(-1, QK_K), weights)]

    return fields


def quantize_q2_k(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q2_K, byte for byte as llama.cpp's ``ggml_quantize_chunk``.

    Each sub-block of 16 gets 2-bit levels with a 4-bit scale and min code; the block stores fp16 ``d`` and
    ``dmin`` for them. Without an imatrix the sub-block fit weighs values by |x| (``quantize_row_q2_K_ref``);
    with one, by ``imatrix * sqrt(mean(x**2) + x**2)`` (``quantize_row_q2_K_impl``).

    Args:
        values: (rows, n_per_row) float (read as float32), n_per_row a multiple of 256.
        imatrix: optional (n_per_row,), the importance of each column (llama-quantize's ``--imatrix``).

    Returns:
        uint8 (rows, n_per_row // 256 * 84): the block_q2_K bytes of each row.

    Raises:
        FormatError: values not 2-D, rows not whole 256-value blocks, or an imatrix of another shape.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q2_K, _row_blocks(_q2_k_blocks))


def quantize_q3_k(values: torch.Tensor, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """Quantize rows to Q3_K, byte for byte as llama.cpp's ``ggml_quantize_chunk``.

    Each sub-block of 16 gets signed 3-bit levels and a 6-bit signed scale code; the block stores fp16 ``d``.
    Without an imatrix the fit weighs values by x**2 (``quantize_row_q3_K_ref``, `make_q3_quants`); with one, by
    ``imatrix * sqrt(2 * mean(x**2) + x**2)`` (``quantize_row_q3_K_impl``, `make_qx_quants`).

    Args, Raises: as `quantize_q2_k`. Returns uint8 (rows, n_per_row // 256 * 110): the block_q3_K bytes of each row.
    """
    return quantize_rows(values, imatrix, GGMLQuantizationType.Q3_K, _row_blocks(_q3_k_blocks))
