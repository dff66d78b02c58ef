"""The search helpers of ggml's quantizers, vectorised over blocks and bit-exact with llama.cpp.

Ports of `nearest_int`, `make_qx_quants`, `make_qkx2_quants`, `make_qkx3_quants` and `make_qp_quants` from
llama.cpp's `ggml/src/ggml-quants.c` (https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c).
Each takes a whole `(n_blocks, block_len)` float32 matrix and does, for every block, the float32 operations the
C code does for one block, in the same order, so scales and levels come out bit-identical. What makes that hold:
sums over a block's elements run one element after another (`sequential_sum`; `torch.sum` adds in a tree), a
float divided by a tensor is a true division (`rdiv`, `cdiv`; torch's `c / t` multiplies by a reciprocal),
`sqrtf` goes through float64 (torch's float32 `sqrt` on CPU is not correctly rounded), and every constant is the
float32 value the C literal denotes (`0.1f`, not the double 0.1).

Loops run over the few search steps and over a block's positions, each step vectorised across all blocks, in
place in buffers made once per chunk of rows; a step rounds with `torch.round` where its values are provably small
enough for that to equal `nearest_int`, and a search keeps each block's best scale (and shift), not its levels,
which it rounds again at the end. Operations keep their operand order (`iscale * (x - min)`, not the reverse):
which of two NaNs survives depends on it, and NaN payloads reach the bytes through fp16 fields and `nearest_int`.
`quantize_rows` is the quantizers' common frame (validation by `check_rows`, chunks of rows, byte layout) and
`fp16_bytes` writes ggml's `GGML_FP32_TO_FP16`; `quantize_legacy` and `quantize_k` build on them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from aprender.errors import FormatError

__all__ = [
    "GROUP_MAX_EPS",
    "BlockFields",
    "cdiv",
    "check_rows",
    "f32",
    "first_extreme",
    "fp16_bytes",
    "fp16_round",
    "largest_magnitude",
    "make_qkx2_quants",
    "make_qkx3_quants",
    "make_qp_quants",
    "make_qx_quants",
    "nearest_int",
    "quantize_rows",
    "rdiv",
    "sequential_sum",
    "sqrtf",
    "wrap_u8",
]

GROUP_MAX_EPS = float(np.float32(1e-15))
"""ggml's `GROUP_MAX_EPS`: a block whose largest magnitude is below it is all zero."""


def f32(value: float) -> float:
    """The float32 nearest `value`, as a Python float (the value a C `float` literal or expression holds)."""
    return float(np.float32(value))


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    """ggml's `nearest_int`: float32 -> int32, rounding half to even by adding 1.5 * 2**23 and reading the bits.

    The bit trick itself is emulated, so inputs beyond ggml's range (|x| > 4194303, inf) give the same
    meaningless value as the C code rather than a different one.
    """
    biased = x + 12582912.0
    return (biased.view(torch.int32) & 0x007FFFFF) - 0x00400000


def wrap_u8(levels: torch.Tensor) -> torch.Tensor:
    """An int stored into a C `uint8_t` (modulo 256), kept as int32."""
    return levels & 0xFF


def rdiv(numerator: float, denominator: torch.Tensor) -> torch.Tensor:
    """`numerator / denominator` as one IEEE division per element (torch's `c / t` is `t.reciprocal() * c`)."""
    return denominator.new_tensor(numerator) / denominator


def cdiv(numerator: torch.Tensor, denominator: float) -> torch.Tensor:
    """`numerator / denominator` as one IEEE division per element (CUDA turns `t / c` into `t * (1 / c)`)."""
    return numerator / numerator.new_tensor(denominator)


def sqrtf(x: torch.Tensor) -> torch.Tensor:
    """C's `sqrtf`, correctly rounded: through float64, as torch's float32 sqrt on CPU is off by an ulp at times."""
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """`GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x))`: float32 rounded to the nearest fp16 (ties to even), as float32."""
    return x.to(torch.float16).to(torch.float32)


def fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """`GGML_FP32_TO_FP16` as stored in a block: (n,) float32 -> (n, 2) uint8, little-endian."""
    return x.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def sequential_sum(values: torch.Tensor, start: torch.Tensor | float = 0.0, dim: int = -1) -> torch.Tensor:
    """Sum over `dim` in index order, in float32, as a C `for` loop does.

    On the CPU, one `np.add.reduce` over the slowest axis, which numpy adds one slice after another (its pairwise
    summation is for the fastest axis only). Slices of one value each, and sums ending in NaN, take a loop of torch
    adds instead: numpy keeps the first of two NaNs, torch the second, and NaN payloads reach the bytes.

    Args:
        values: float32, summed over `dim` (fastest when `dim` is 0 of a contiguous tensor: no copy).
        start: the value the sums start from: shaped as the result, or one float for all (0.0: C's `float s = 0`;
            -0.0 adds nothing to any float, so the sums start at `v[0]` itself, as ggml's `make_qkx*_quants` start
            `sum_w = weights[0]`).
        dim: the dimension summed over.

    Returns:
        `values` without `dim`: `((start + v[0]) + v[1]) + ...`.
    """
    rows = values.movedim(dim, 0)
    if rows.device.type == "cpu" and rows.dtype == torch.float32 and not rows.requires_grad and rows[0].numel() > 1:
        stacked = torch.cat([start.unsqueeze(0), rows]) if isinstance(start, torch.Tensor) else rows
        flat = stacked.contiguous().numpy().reshape(stacked.shape[0], -1)
        initial = -0.0 if isinstance(start, torch.Tensor) else start  # -0.0 + start is start, bit for bit
        with np.errstate(over="ignore", invalid="ignore"):  # ggml's sums overflow alike
            total = np.add.reduce(flat, axis=0, initial=initial)
        if not np.isnan(total).any():
            return torch.from_numpy(total).reshape(rows.shape[1:])
    total = start.clone() if isinstance(start, torch.Tensor) else torch.full_like(rows[0], start)
    for piece in rows:
        total += piece
    return total


def first_extreme(x: torch.Tensor, largest: bool, dim: int = -1) -> torch.Tensor:
    """The value a C scan `if (x[i] > m) m = x[i]` (or `<`) keeps over `dim`, kept as a size-1 dimension.

    It differs from `amax`/`amin` only in the sign of a zero, which reaches the bytes through an fp16 field, and
    where a NaN makes `amax` NaN: then the first value, as this port has always taken.
    """
    extreme = x.amax(dim=dim, keepdim=True) if largest else x.amin(dim=dim, keepdim=True)
    unsure = (extreme == 0) | extreme.isnan()
    if bool(unsure.any()):  # rare in real weights; argmax is 20-50x slower than amax
        first = (x == extreme).to(torch.uint8).argmax(dim=dim, keepdim=True)
        extreme = torch.where(unsure, x.gather(dim, first), extreme)
    return extreme


def largest_magnitude(x: torch.Tensor, dim: int = -1, skip_nan: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` where `|x|` first reaches its maximum over `dim`, and that maximum, as size-1 dimensions of 2-D `x`.

    `x.gather(dim, x.abs().argmax(dim))` (ggml's scan for the value of largest magnitude) through `amax` and `amin`,
    as argmax and `aminmax` are 10-50x slower: only blocks holding both +max and -max, a NaN or nothing but zeros
    take argmax.
    `skip_nan`: the magnitudes are `x.abs().nan_to_num(nan=0.0)` (ggml's `fabsf(x) > amax` never picks a NaN),
    else `x.abs()`, where argmax takes a NaN as the largest.
    """
    low, high = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    peak = torch.maximum(high, -low)
    positive, negative = high == peak, low == -peak
    value = torch.where(positive, peak, -peak)
    ties = positive == negative
    if skip_nan:  # `nan_to_num` makes an infinite magnitude the largest float, which a finite one may equal
        ties |= peak.isinf()
    ties = ties.flatten().nonzero().squeeze(1)
    if len(ties):
        rows = x.movedim(dim, -1)[ties]
        magnitude = rows.abs().nan_to_num(nan=0.0) if skip_nan else rows.abs()
        first = magnitude.argmax(dim=-1, keepdim=True)
        value.view(-1)[ties] = rows.gather(-1, first).squeeze(-1)
        peak.view(-1)[ties] = magnitude.gather(-1, first).squeeze(-1)
    return value, peak


BlockFields = Callable[[torch.Tensor, torch.Tensor | None], list[torch.Tensor]]
"""A type's quantizer proper: float32 (rows, n_per_row) and the imatrix (or None) -> its block fields, each
(rows * blocks_per_row, field_bytes) of values in [0, 255], in the order the block struct lays them out."""

CHUNK_VALUES = 1 << 19
"""Rows are quantized in chunks of about this many values (2 MB per float32 intermediate), so a search's working set
stays in the CPU caches: Q4_K took 1.3x the time with 4x larger chunks and 1.2x with 4x smaller ones."""


def check_rows(
    values: torch.Tensor, imatrix: torch.Tensor | None, block_size: int, type_name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a quantizer's input and return it as float32 (`values`, `imatrix`), contiguous, on its device.

    Args:
        values: (rows, n_per_row), any float dtype.
        imatrix: None, or (n_per_row,): the importance of each column (llama-quantize's `--imatrix`).
        block_size: the type's block length; n_per_row must be a positive multiple of it.
        type_name: the type's name for error messages (`"Q4_K"`).

    Raises:
        FormatError: values not 2-D, rows not whole blocks, or an imatrix of the wrong shape.
    """
    if values.ndim != 2:
        raise FormatError(f"{type_name} quantization takes (rows, n_per_row) values, got shape {tuple(values.shape)}")
    n_per_row = values.shape[1]
    if n_per_row % block_size or not n_per_row:
        raise FormatError(f"{type_name} rows hold whole blocks of {block_size} values, but rows have {n_per_row}")
    if imatrix is not None and tuple(imatrix.shape) != (n_per_row,):
        raise FormatError(
            f"the imatrix must hold one weight per column, shape ({n_per_row},); got {tuple(imatrix.shape)}"
        )
    x = values.detach().to(torch.float32).contiguous()
    qw = None if imatrix is None else imatrix.detach().to(device=x.device, dtype=torch.float32).contiguous()
    return x, qw


def quantize_rows(
    values: torch.Tensor, imatrix: torch.Tensor | None, ggml_type: GGMLQuantizationType, fields: BlockFields
) -> np.ndarray:
    """Validate the input (`check_rows`), quantize it with `fields` in chunks of whole rows, lay out ggml's bytes.

    ggml quantizes each row on its own (the imatrix searches use the row's mean square), so chunks of rows give
    the same bytes as the whole tensor at once.

    Args:
        values: (rows, n_per_row), any float dtype (read as float32).
        imatrix: None, or (n_per_row,): the importance of each column (llama-quantize's `--imatrix`).
        ggml_type: the target type; n_per_row must be a positive multiple of its block size.
        fields: the type's quantizer (see `BlockFields`).

    Returns:
        (rows, n_per_row // block_size * type_size) uint8.

    Raises:
        FormatError: values not 2-D, rows not whole blocks, or an imatrix of the wrong shape.
    """
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    x, qw = check_rows(values, imatrix, block_size, ggml_type.name)
    rows, n_per_row = x.shape
    out = np.empty((rows, n_per_row // block_size * type_size), dtype=np.uint8)
    step = max(1, CHUNK_VALUES // n_per_row)
    for start in range(0, rows, step):
        chunk = x[start : start + step]
        packed = torch.cat([f.to(torch.uint8) for f in fields(chunk, qw)], dim=-1)
        out[start : start + step] = packed.reshape(chunk.shape[0], -1).cpu().numpy()
    return out


def _positions_first(x: torch.Tensor) -> torch.Tensor:
    """(n_blocks, k) -> (k, n_blocks) contiguous: a block's elements down a column, so sums add whole rows."""
    return x.t().contiguous()


_TORCH_ROUND_EXACT = 2.0**21
"""Below this magnitude `torch.round` (half to even) gives what `nearest_int`'s bias trick gives (below 2**22)."""


def _rounded_levels(v: torch.Tensor, lo: int, hi: int, bounded: bool) -> torch.Tensor:
    """`nearest_int(v).clamp(lo, hi)` as float32, in place in `v`; `bounded`: every |v| < `_TORCH_ROUND_EXACT`."""
    if bounded:
        return v.round_().clamp_(lo, hi)
    return v.copy_(nearest_int(v).clamp_(lo, hi))


def _bounded(iscale: torch.Tensor, ends: torch.Tensor, ignored: torch.Tensor) -> bool:
    """Whether `|iscale * ends|` stays below `_TORCH_ROUND_EXACT` in every block but the `ignored` ones.

    `ends`: (2, n), each block's smallest and largest x (or x - shift); `iscale * (x - shift)` rounds monotonically
    in x, so they bound it. A NaN or an infinity fails the test.
    """
    return bool(((iscale * ends).abs().amax(dim=0) < _TORCH_ROUND_EXACT).logical_or(ignored).all())


def make_qx_quants(
    x: torch.Tensor, nmax: int, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric levels in [-nmax, nmax - 1] and the scale minimising the weighted squared error (`make_qx_quants`).

    ggml's `make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`: the only `rmse_type` its quantizers use. Starts from
    `iscale = -nmax / max` (max: the signed value of largest magnitude) and tries 18 nearby scales
    `-(nmax + 0.1 * is) / max`, keeping the one whose least-squares scale explains most of the weighted energy.

    Args:
        x: (n_blocks, block_len) float32.
        nmax: half the number of levels (Q4_0: 8, Q5_0: 16, Q6_K: 32, Q3_K: 4).
        weights: (n_blocks, block_len) float32 weight of each element; None means `x * x`.

    Returns:
        `scale` (n_blocks,) float32 and `levels` (n_blocks, block_len) int32 in [0, 2 * nmax - 1], so that
        `x ~ scale * (levels - nmax)`. Blocks whose largest magnitude is below `GROUP_MAX_EPS` get scale 0 and
        levels 0 (not nmax), as in ggml.
    """
    xt = _positions_first(x)
    w = xt * xt if weights is None else _positions_first(weights)
    wx = w * xt
    vmax, peak = largest_magnitude(xt, dim=0, skip_nan=True)
    zero = peak < GROUP_MAX_EPS  # all-zero blocks: written as zeros whatever their search found
    ends = torch.cat([xt.amin(dim=0, keepdim=True), xt.amax(dim=0, keepdim=True)])
    levels = torch.empty_like(xt)
    product = torch.empty_like(xt)  # one buffer for each product in turn: the working set stays in cache

    def fit(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lf = _rounded_levels(torch.mul(iscale, xt, out=levels), -nmax, nmax - 1, _bounded(iscale, ends, zero))
        sumlx = sequential_sum(torch.mul(wx, lf, out=product), dim=0)
        return sumlx, sequential_sum(torch.mul(w, lf, out=product).mul_(lf), dim=0)

    best_iscale = rdiv(-float(nmax), vmax)
    sumlx, suml2 = fit(best_iscale)
    scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = rdiv(-f32(nmax + f32(f32(0.1) * step)), vmax)
        sumlx, suml2 = fit(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = torch.where(better, iscale, best_iscale)
        scale = torch.where(better, sumlx / suml2, scale)
        best = torch.where(better, scale * sumlx, best)
    levels = nearest_int(best_iscale * xt).clamp_(-nmax, nmax - 1).add_(nmax)  # the C rounds the best scale again
    levels = (torch.where(zero, 0, levels) if bool(zero.any()) else levels).t().contiguous()  # int where: slow
    return torch.where(zero, 0.0, scale).squeeze(0), levels


def make_qkx2_quants(
    x: torch.Tensor,
    nmax: int,
    weights: torch.Tensor,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine levels in [0, nmax] with a scale and a min fitted by weighted least squares (`make_qkx2_quants`).

    Starts from the block's range (min clamped to <= 0) and tries `nstep + 1` scales
    `(rmin + rdelta * is + nmax) / (max - min)`, refitting scale and min for each level assignment and
    keeping the assignment of smallest weighted error (absolute with `use_mad`, squared otherwise). As in ggml,
    `min` in that formula (and in `x - min`) is the best fit so far, so each step depends on the ones before.

    Args:
        x: (n_blocks, block_len) float32.
        nmax: the largest level (Q2_K: 3, Q4_K: 15, Q5_K: 31).
        weights: (n_blocks, block_len) float32, the weight of each element.
        rmin, rdelta, nstep, use_mad: ggml's search parameters, e.g. Q4_K's `-1.0, 0.1, 20, False`; `rmin` and
            `rdelta` are read as the float32 literals `-1.f`, `0.1f`.

    Returns:
        `scale` (n_blocks,), `the_min` (n_blocks,) and `levels` (n_blocks, block_len) int32 in [0, nmax], so that
        `x ~ scale * levels - the_min`; `the_min` is ggml's output `*the_min = -min`, >= 0. Constant blocks with
        min >= 0 get scale 0 and levels 0.
    """
    xt, w = _positions_first(x), _positions_first(weights)
    levels, wl, product = torch.empty_like(xt), torch.empty_like(xt), torch.empty_like(xt)
    torch.mul(w, xt, out=product)
    sum_w = sequential_sum(w, start=-0.0, dim=0)  # C starts both sums from element 0
    sum_x = sequential_sum(product, start=-0.0, dim=0)
    vmin = first_extreme(xt, largest=False, dim=0)
    offset = torch.where(vmin > 0, 0.0, vmin)  # (1, n): ggml's `min`, updated with each better fit
    vmax = xt.amax(dim=0, keepdim=True)
    flat = vmax == offset  # constant blocks: written as zeros whatever their search found
    ends = torch.cat([vmin, vmax])

    def trial(iscale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """`nearest_int(iscale * (x - shift)).clamp(0, nmax)` as float32, in `levels`."""
        bounded = _bounded(iscale, ends - shift, flat)
        return _rounded_levels(torch.mul(iscale, torch.sub(xt, shift, out=levels), out=levels), 0, nmax, bounded)

    def weighted_error(scale: torch.Tensor, shift: torch.Tensor, lf: torch.Tensor) -> torch.Tensor:
        """Sum over positions of `w * |d|` or `w * d**2`, `d = scale * l + shift - x`, in C order: (n,)."""
        diff = torch.mul(scale, lf, out=product).add_(shift).sub_(xt)
        return sequential_sum(torch.mul(w, diff.abs_() if use_mad else diff.mul_(diff), out=diff), dim=0)

    best_iscale, best_shift = rdiv(float(nmax), vmax - offset), offset
    scale = rdiv(1.0, best_iscale)
    best_error = weighted_error(scale, offset, trial(best_iscale, offset))
    for step in range(nstep + 1 if nstep >= 1 else 0):
        iscale = rdiv(f32(f32(f32(rmin) + f32(f32(rdelta) * step)) + nmax), vmax - offset)
        lf = trial(iscale, offset)
        sum_l = sequential_sum(torch.mul(w, lf, out=wl), dim=0)
        sum_l2 = sequential_sum(torch.mul(wl, lf, out=product), dim=0)
        sum_xl = sequential_sum(torch.mul(wl, xt, out=product), dim=0)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clamp = this_min > 0
        this_min = torch.where(clamp, 0.0, this_min)
        this_scale = torch.where(clamp, sum_xl / sum_l2, this_scale)
        error = weighted_error(this_scale, this_min, lf)
        better = (det > 0) & (error < best_error) & ~flat
        best_error = torch.where(better, error, best_error)
        scale = torch.where(better, this_scale, scale)
        best_iscale = torch.where(better, iscale, best_iscale)
        best_shift = torch.where(better, offset, best_shift)
        offset = torch.where(better, this_min, offset)
    levels = trial(best_iscale, best_shift).to(torch.int32)  # the search keeps scales; the levels come again
    levels = (torch.where(flat, 0, levels) if bool(flat.any()) else levels).t().contiguous()  # int where: slow
    return torch.where(flat, 0.0, scale).squeeze(0), -offset.squeeze(0), levels


def make_qkx3_quants(
    x: torch.Tensor,
    nmax: int,
    weights: torch.Tensor | None,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`make_qkx3_quants`: `make_qkx2_quants` with weights defaulting to `x * x`.

    ggml's two functions differ only there and in `max <= min` against `max == min` for the constant-block test,
    which agree once min is clamped to <= 0. The importance-weighted Q4_1, Q5_1, Q2_K, Q4_K and Q5_K call it with
    `rmin, rdelta, nstep, use_mad = -0.9, 0.05, 36, False`.

    Args and returns: as `make_qkx2_quants`, with `weights` (n_blocks, block_len) float32 or None.
    """
    return make_qkx2_quants(x, nmax, x * x if weights is None else weights, rmin, rdelta, nstep, use_mad)


def make_qp_quants(x: torch.Tensor, nmax: int, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels in [0, nmax] for non-negative values (a super-block's scales or mins) and their scale (`make_qp_quants`).

    Tries `iscale = (nmax + 0.1 * is) / max` for is in [-4, 4], keeps the one of least weighted squared error,
    then refines each level in turn (up to 5 passes) while the least-squares fit improves.

    Args:
        x: (n_blocks, n) float32, e.g. the 8 sub-block scales of each Q4_K super-block.
        nmax: the largest level (Q4_K/Q5_K: 63, Q2_K: 15).
        weights: (n_blocks, n) float32, e.g. the sum of the element weights of each sub-block.

    Returns:
        `scale` (n_blocks,) float32 and `levels` (n_blocks, n) int32, so that `x ~ scale * levels`. Levels are
        what ggml stores in its `uint8_t` array: in [0, nmax], or wrapped modulo 256 where a negative input gave a
        negative level. Blocks whose largest value is below `GROUP_MAX_EPS` get scale 0 and levels 0.
    """
    xt, w = _positions_first(x), _positions_first(weights)
    vmax = xt.amax(dim=0, keepdim=True)
    iscale = rdiv(float(nmax), vmax)
    diff = xt - rdiv(1.0, iscale) * wrap_u8(nearest_int(iscale * xt)).to(torch.float32)
    best_mse = sequential_sum(w * diff * diff, dim=0)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        trial_iscale = rdiv(f32(f32(f32(0.1) * step) + nmax), vmax)
        trial = nearest_int(trial_iscale * xt).clamp(max=nmax).to(torch.float32)
        diff = xt - rdiv(1.0, trial_iscale) * trial
        mse = sequential_sum(w * diff * diff, dim=0)
        better = mse < best_mse
        best_mse = torch.where(better, mse, best_mse)
        iscale = torch.where(better, trial_iscale, iscale)
    unwrapped = nearest_int(iscale * xt).clamp(max=nmax)
    levels = wrap_u8(unwrapped)
    sumlx = sequential_sum(w * xt * unwrapped, dim=0)
    suml2 = sequential_sum(w * unwrapped * unwrapped, dim=0)
    for _ in range(5):
        changed = torch.zeros_like(sumlx, dtype=torch.bool)
        for i in range(xt.shape[0]):
            xi, wi, li = xt[i], w[i], levels[i]
            lf = li.to(torch.float32)
            slx_rest = sumlx - wi * xi * lf
            sl2_rest = suml2 - wi * lf * lf
            new = nearest_int(xi * sl2_rest / slx_rest).clamp(max=nmax)
            nf = new.to(torch.float32)
            slx = slx_rest + wi * xi * nf
            sl2 = sl2_rest + wi * nf * nf
            accept = (slx_rest > 0) & (sl2_rest > 0) & (new != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            levels[i] = torch.where(accept, wrap_u8(new), li)
            sumlx = torch.where(accept, slx, sumlx)
            suml2 = torch.where(accept, sl2, suml2)
            changed |= accept
        if not bool(changed.any()):  # a pass that changes nothing leaves the state, so every later pass, as it was
            break
    zero = vmax.squeeze(0) < GROUP_MAX_EPS
    scale = torch.where(suml2 > 0, sumlx / suml2, 0.0)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, levels).t().contiguous()
