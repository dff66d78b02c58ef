"""The search helpers of ggml's quantizers, vectorised over blocks and bit-exact with llama.cpp.

Ports of `nearest_int`, `make_qx_quants`, `make_qkx2_quants`, `make_qkx3_quants` and `make_qp_quants` from
llama.cpp's `ggml/src/ggml-quants.c` (https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c).
Each takes a whole `(n_blocks, block_len)` float32 matrix and does, for every block, the float32 operations the
C code does for one block, in the same order, so scales and levels come out bit-identical. Three things make
that hold: sums over a block's elements run one element after another (`sequential_sum`; `torch.sum` adds in a
tree), a float divided by a tensor is a true division (`rdiv`; torch's `c / t` multiplies by a reciprocal), and
every constant is the float32 value the C literal denotes (`0.1f`, not the double 0.1). `sqrtf` goes through
float64 because torch's float32 `sqrt` on CPU is not correctly rounded.

Loops run over the few search steps and over a block's positions, each step vectorised across all blocks.
`check_rows` validates a quantizer's input and `fp16_bytes` writes ggml's `GGML_FP32_TO_FP16`; the quantizers
in `quantize_legacy` and `quantize_k` share them.
"""

from __future__ import annotations

import numpy as np
import torch

from aprender.errors import FormatError

__all__ = [
    "GROUP_MAX_EPS",
    "cdiv",
    "check_rows",
    "f32",
    "first_extreme",
    "fp16_bytes",
    "fp16_round",
    "make_qkx2_quants",
    "make_qkx3_quants",
    "make_qp_quants",
    "make_qx_quants",
    "nearest_int",
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


def sequential_sum(values: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the last dimension in index order, in float32, as a C `for` loop does.

    Args:
        values: (..., k) float32.
        start: (...) the value the sum starts from; C's `float s = 0` when None. ggml's `make_qkx*_quants`
            start `sum_w` from `weights[0]` (pass `values[..., 1:]` and `start=values[..., 0]`).

    Returns:
        (...) float32, `((start + v[0]) + v[1]) + ...`.
    """
    columns = values.movedim(-1, 0).contiguous()
    total = torch.zeros_like(columns[0]) if start is None else start
    for column in columns:
        total = total + column
    return total


def first_extreme(x: torch.Tensor, largest: bool) -> torch.Tensor:
    """The value a C scan `if (x[i] > m) m = x[i]` (or `<`) keeps: (n, k) -> (n, 1), the first of equal extremes.

    It differs from `amax`/`amin` only in the sign of a zero, which reaches the bytes through an fp16 field.
    """
    extreme = x.amax(dim=-1, keepdim=True) if largest else x.amin(dim=-1, keepdim=True)
    first = (x == extreme).to(torch.uint8).argmax(dim=-1, keepdim=True)
    return x.gather(-1, first)


def check_rows(
    values: torch.Tensor, imatrix: torch.Tensor | None, block_size: int, type_name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a quantizer's input and return it as float32 (`values`, `imatrix`), contiguous, on its device.

    Args:
        values: (rows, n_per_row), any float dtype.
        imatrix: None, or (n_per_row,): the importance of each column (llama-quantize's `--imatrix`).
        block_size: the type's block length; n_per_row must be a multiple of it.
        type_name: the type's name for error messages (`"Q4_K"`).

    Raises:
        FormatError: values not 2-D, rows not whole blocks, or an imatrix of the wrong shape.
    """
    if values.ndim != 2:
        raise FormatError(f"{type_name} quantization takes (rows, n_per_row) values, got shape {tuple(values.shape)}")
    n_per_row = values.shape[1]
    if n_per_row % block_size:
        raise FormatError(f"{type_name} rows hold whole blocks of {block_size} values, but rows have {n_per_row}")
    if imatrix is not None and tuple(imatrix.shape) != (n_per_row,):
        raise FormatError(
            f"the imatrix must hold one weight per column, shape ({n_per_row},); got {tuple(imatrix.shape)}"
        )
    x = values.detach().to(torch.float32).contiguous()
    qw = None if imatrix is None else imatrix.detach().to(device=x.device, dtype=torch.float32).contiguous()
    return x, qw


def _signed_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`amax` and the signed value `max` of the first largest |x[i]|, as ggml's scans keep them: 2 x (n, 1)."""
    magnitude = x.abs()
    first = magnitude.argmax(dim=-1, keepdim=True)
    return magnitude.gather(-1, first), x.gather(-1, first)


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
    w = x * x if weights is None else weights
    amax, vmax = _signed_absmax(x)

    def fit(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = nearest_int(iscale * x).clamp(-nmax, nmax - 1)
        lf = levels.to(torch.float32)
        sumlx, suml2 = sequential_sum(torch.stack([w * x * lf, w * lf * lf]))
        return levels, sumlx, suml2

    best_levels, sumlx, suml2 = fit(rdiv(-float(nmax), vmax))
    scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        levels, sumlx, suml2 = fit(rdiv(-f32(nmax + f32(f32(0.1) * step)), vmax))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_levels = torch.where(better.unsqueeze(-1), levels, best_levels)
        scale = torch.where(better, sumlx / suml2, scale)
        best = torch.where(better, scale * sumlx, best)
    zero = amax.squeeze(-1) < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(-1), 0, best_levels + nmax)


def _weighted_error(
    scale: torch.Tensor, offset: torch.Tensor, levels: torch.Tensor, x: torch.Tensor, w: torch.Tensor, use_mad: bool
) -> torch.Tensor:
    """Sum of `w * |diff|` or `w * diff**2` with `diff = scale * L + min - x`, in C order: (n,) float32."""
    diff = scale.unsqueeze(-1) * levels.to(torch.float32) + offset.unsqueeze(-1) - x
    diff = diff.abs() if use_mad else diff * diff
    return sequential_sum(w * diff)


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
    sum_w = sequential_sum(weights[:, 1:], start=weights[:, 0])
    wx = weights * x
    sum_x = sequential_sum(wx[:, 1:], start=wx[:, 0])
    vmin = first_extreme(x, largest=False)
    vmin = torch.where(vmin > 0, 0.0, vmin)
    vmax = x.amax(dim=-1, keepdim=True)
    flat = (vmax == vmin).squeeze(-1)

    iscale = rdiv(float(nmax), vmax - vmin)
    scale = rdiv(1.0, iscale).squeeze(-1)
    offset = vmin.squeeze(-1)
    levels = nearest_int(iscale * (x - vmin)).clamp(0, nmax)
    best_error = _weighted_error(scale, offset, levels, x, weights, use_mad)
    for step in range(nstep + 1 if nstep >= 1 else 0):
        factor = f32(f32(f32(rmin) + f32(f32(rdelta) * step)) + nmax)
        current_min = offset.unsqueeze(-1)  # ggml's loop reads `min` after each improvement, not the block's min
        trial = nearest_int(rdiv(factor, vmax - current_min) * (x - current_min)).clamp(0, nmax)
        wl = weights * trial.to(torch.float32)
        sum_l, sum_l2, sum_xl = sequential_sum(torch.stack([wl, wl * trial.to(torch.float32), wl * x]))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clamp = this_min > 0
        this_min = torch.where(clamp, 0.0, this_min)
        this_scale = torch.where(clamp, sum_xl / sum_l2, this_scale)
        error = _weighted_error(this_scale, this_min, trial, x, weights, use_mad)
        better = (det > 0) & (error < best_error) & ~flat
        levels = torch.where(better.unsqueeze(-1), trial, levels)
        best_error = torch.where(better, error, best_error)
        scale = torch.where(better, this_scale, scale)
        offset = torch.where(better, this_min, offset)
    levels = torch.where(flat.unsqueeze(-1), 0, levels)
    return torch.where(flat, 0.0, scale), -offset, levels


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
    vmax = x.amax(dim=-1, keepdim=True)
    iscale = rdiv(float(nmax), vmax)
    levels = wrap_u8(nearest_int(iscale * x))
    best_scale = rdiv(1.0, iscale)
    diff = x - best_scale * levels.to(torch.float32)
    best_mse = sequential_sum(weights * diff * diff)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        trial_iscale = rdiv(f32(f32(f32(0.1) * step) + nmax), vmax)
        trial = nearest_int(trial_iscale * x).clamp(max=nmax).to(torch.float32)
        diff = x - rdiv(1.0, trial_iscale) * trial
        mse = sequential_sum(weights * diff * diff)
        better = mse < best_mse
        best_mse = torch.where(better, mse, best_mse)
        iscale = torch.where(better.unsqueeze(-1), trial_iscale, iscale)
    unwrapped = nearest_int(iscale * x).clamp(max=nmax)
    levels = wrap_u8(unwrapped)
    sumlx, suml2 = sequential_sum(torch.stack([weights * x * unwrapped, weights * unwrapped * unwrapped]))
    for _ in range(5):
        changed = torch.zeros_like(sumlx, dtype=torch.bool)
        for i in range(x.shape[-1]):
            xi, wi, li = x[:, i], weights[:, i], levels[:, i]
            lf = li.to(torch.float32)
            slx_rest = sumlx - wi * xi * lf
            sl2_rest = suml2 - wi * lf * lf
            new = nearest_int(xi * sl2_rest / slx_rest).clamp(max=nmax)
            nf = new.to(torch.float32)
            slx = slx_rest + wi * xi * nf
            sl2 = sl2_rest + wi * nf * nf
            accept = (slx_rest > 0) & (sl2_rest > 0) & (new != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            levels[:, i] = torch.where(accept, wrap_u8(new), li)
            sumlx = torch.where(accept, slx, sumlx)
            suml2 = torch.where(accept, sl2, suml2)
            changed |= accept
        if not bool(changed.any()):  # a pass that changes nothing leaves the state, so every later pass, as it was
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, 0.0)
    zero = vmax.squeeze(-1) < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(-1), 0, levels)
