"""entrenar.quant.nf4: the NF4 code, packing, block quantization and double quantization."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.errors import QuantizationError
from entrenar.quant import (
    ABSMAX_BLOCK_SIZE,
    NF4_BLOCK_SIZE,
    NF4_CODE,
    NF4_OFFSET,
    dequantize_nf4,
    dequantize_nf4_blocks,
    double_dequantize,
    double_quantize,
    nf4_code,
    pack_4bit,
    quantize_nf4,
    unpack_4bit,
)

# bitsandbytes functional.py, get_4bit_type("nf4"), copied from its source (also QLoRA appendix E).
BNB_NF4 = [
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
]


def _normal_map(dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' create_normal_map(offset=0.9677083) recomputed with torch's N(0, 1) quantile (ndtri).

    The recipe: linspace in `dtype`, quantiles in float64, values stored in `dtype` and divided by their max.
    """
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=dtype)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=dtype)[:-1].double())
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).to(dtype).sort().values
    return values / values.max()


# --- the code ------------------------------------------------------------------------------------------


def test_code_equals_bitsandbytes_published_values() -> None:
    assert list(NF4_CODE) == BNB_NF4
    assert nf4_code().tolist() == BNB_NF4
    assert nf4_code().dtype == torch.float32


def test_code_recomputed_from_the_bitsandbytes_recipe() -> None:
    # bitsandbytes ran linspace and the normalisation in float32: the same steps give the published numbers
    # bit for bit.
    assert _normal_map(torch.float32).tolist() == BNB_NF4


def test_code_matches_the_exact_definition() -> None:
    # Exact quantiles (float64 throughout); the float32 linspace in the recipe moves a level by < 3e-8,
    # which ndtri's slope near the offset (~14) and the normalisation turn into < 5e-7.
    torch.testing.assert_close(
        _normal_map(torch.float64), torch.tensor(BNB_NF4, dtype=torch.float64), rtol=0, atol=5e-7
    )
    # The offset is the mean of 1 - 1/(2*15) and 1 - 1/(2*16) (QLoRA section 3), to the 7 digits published.
    assert abs(NF4_OFFSET - (1 - 1 / 30 + 1 - 1 / 32) / 2) < 5e-8


def test_code_shape_properties() -> None:
    code = torch.tensor(NF4_CODE)
    assert code.numel() == 16
    assert torch.all(code[1:] > code[:-1])
    assert (code[0], code[-1]) == (-1.0, 1.0)
    assert int((code == 0).sum()) == 1
    assert (int((code > 0).sum()), int((code < 0).sum())) == (8, 7)


# --- packing -------------------------------------------------------------------------------------------


def test_pack_hand_computed() -> None:
    # First element in the high nibble: (15, 0) -> 0xF0, (7, 8) -> 0x78, (1, 14) -> 0x1E.
    packed = pack_4bit(torch.tensor([15, 0, 7, 8, 1, 14], dtype=torch.uint8))
    assert packed.tolist() == [0xF0, 0x78, 0x1E]
    assert unpack_4bit(packed).tolist() == [15, 0, 7, 8, 1, 14]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=0, max_size=300).filter(lambda v: len(v) % 2 == 0))
def test_pack_round_trip(values: list[int]) -> None:
    indices = torch.tensor(values, dtype=torch.uint8)
    packed = pack_4bit(indices)
    assert packed.dtype == torch.uint8 and packed.numel() == len(values) // 2
    assert torch.equal(unpack_4bit(packed), indices)


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        (torch.tensor([1, 2], dtype=torch.int64), "must be uint8"),
        (torch.tensor([1, 2, 3], dtype=torch.uint8), "even number"),
        (torch.tensor([1, 16], dtype=torch.uint8), r"0\.\.15, got 16"),
    ],
)
def test_pack_rejects(indices: torch.Tensor, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        pack_4bit(indices)


@pytest.mark.parametrize("packed", [torch.zeros(4, dtype=torch.int8), torch.zeros(2, 2, dtype=torch.uint8)])
def test_unpack_rejects(packed: torch.Tensor) -> None:
    with pytest.raises(QuantizationError, match="1-D uint8"):
        unpack_4bit(packed)


# --- quantize / dequantize -----------------------------------------------------------------------------


def test_quantize_hand_computed_block() -> None:
    # absmax = 2; normalised: 1 -> 15, -1 -> 0, 0 -> 7, 0.25 -> nearest of 0.2461 (10) and 0.3379 (11) is 10,
    # 0.5 is nearer 0.4407 (|0.059|) than 0.5626 (|0.063|) -> 12. Padding after them is zeros (index 7).
    weight = torch.zeros(NF4_BLOCK_SIZE)
    weight[:6] = torch.tensor([2.0, -2.0, 0.0, 0.5, 1.0, 0.0])
    packed, absmax = quantize_nf4(weight)
    assert absmax.tolist() == [2.0]
    assert packed[:3].tolist() == [0xF0, 0x7A, 0xC7]
    assert packed[3:].tolist() == [0x77] * 29
    expected = torch.zeros(NF4_BLOCK_SIZE)
    expected[:6] = torch.tensor([2.0, -2.0, 0.0, BNB_NF4[10] * 2, BNB_NF4[12] * 2, 0.0])
    torch.testing.assert_close(dequantize_nf4(packed, absmax, weight.shape), expected, rtol=0, atol=0)


def test_ties_take_the_lower_code() -> None:
    # A value exactly on the float32 midpoint between codes 14 and 15 goes to 14.
    code = nf4_code()
    midpoint = ((code[14] + code[15]) / 2).item()
    weight = torch.zeros(NF4_BLOCK_SIZE)
    weight[0], weight[1] = 1.0, midpoint
    packed, _ = quantize_nf4(weight)
    assert unpack_4bit(packed)[:2].tolist() == [15, 14]


@st.composite
def _representable(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor whose every block is code values times a power of two, with a ±1 code in each block."""
    shape = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    numel = math.prod(shape)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    indices = torch.randint(0, 16, (numel,), generator=generator)
    indices[::NF4_BLOCK_SIZE] = 15 * torch.randint(0, 2, (indices[::NF4_BLOCK_SIZE].numel(),), generator=generator)
    exponents = torch.randint(-20, 21, (-(-numel // NF4_BLOCK_SIZE),), generator=generator)
    scale = torch.pow(2.0, exponents.double()).float().repeat_interleave(NF4_BLOCK_SIZE)[:numel]
    return (torch.tensor(BNB_NF4)[indices] * scale).view(shape), indices.to(torch.uint8)


@settings(max_examples=60, deadline=None)
@given(_representable())
def test_round_trip_exact_on_representable_values(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    # absmax is the block's power of two, so value / absmax is a code value exactly and comes back unchanged;
    # shapes with numel % 64 != 0 are included (zero-padded last block).
    weight, indices = case
    packed, absmax = quantize_nf4(weight)
    assert packed.numel() == -(-weight.numel() // NF4_BLOCK_SIZE) * NF4_BLOCK_SIZE // 2
    assert torch.equal(unpack_4bit(packed)[: weight.numel()], indices)
    assert torch.equal(dequantize_nf4(packed, absmax, weight.shape), weight)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_quantization_is_idempotent(numel: int, seed: int) -> None:
    weight = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    first = quantize_nf4(weight)
    again = quantize_nf4(dequantize_nf4(first.packed, first.absmax, weight.shape))
    assert torch.equal(again.packed, first.packed)
    torch.testing.assert_close(again.absmax, first.absmax, rtol=1e-6, atol=0)


def test_dtype_and_all_zero_blocks() -> None:
    weight = torch.zeros(2, 64, dtype=torch.bfloat16)
    weight[1] = torch.linspace(-3, 3, 64)
    packed, absmax = quantize_nf4(weight)
    assert absmax.dtype == torch.float32 and absmax.tolist() == [0.0, 3.0]
    assert torch.all(unpack_4bit(packed)[:64] == 7)  # the zero code
    out = dequantize_nf4(packed, absmax, weight.shape, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.all(out[0] == 0)


def _expected_nf4_mse(block: int = NF4_BLOCK_SIZE) -> float:
    """E[(w - absmax * Q(w / absmax))^2] for w ~ N(0, 1) in blocks of `block`, by numerical integration.

    Given the block's absmax M = m, the largest |w| is coded exactly (±1) and the other block - 1 values are
    N(0, 1) truncated to (-m, m). Over each code cell [m*lo, m*hi) with code c, the integral of (w - m*c)^2
    phi(w) has the closed form (Phi(b) - Phi(a))(1 + c'^2) + a phi(a) - b phi(b) - 2 c' (phi(a) - phi(b)),
    c' = m*c. M has density block * 2 phi(m) (2 Phi(m) - 1)^(block - 1), so the expectation is
    (block - 1) * integral of 2 phi(m) (2 Phi(m) - 1)^(block - 2) * inner(m) dm (trapezoid on a fine grid).
    """
    code = torch.tensor(BNB_NF4, dtype=torch.float64)
    mid = (code[1:] + code[:-1]) / 2
    lo = torch.cat([code[:1], mid])
    hi = torch.cat([mid, code[-1:]])
    m = torch.linspace(1e-6, 9.0, 20001, dtype=torch.float64)

    def phi(z: torch.Tensor) -> torch.Tensor:
        return torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    a, b, c = m[:, None] * lo, m[:, None] * hi, m[:, None] * code
    ndtr = torch.special.ndtr
    inner = ((ndtr(b) - ndtr(a)) * (1 + c * c) + a * phi(a) - b * phi(b) - 2 * c * (phi(a) - phi(b))).sum(1)
    density = (block - 1) * 2 * phi(m) * (2 * ndtr(m) - 1) ** (block - 2)
    return float(torch.trapezoid(density * inner, m))


@pytest.mark.parametrize("double_quant", [False, True])
def test_gaussian_error_matches_theory(double_quant: bool) -> None:
    # 1M weights ~ N(0, 0.02): per-weight MSE / sigma^2 vs the integral above (0.008460, i.e. RMSE 9.2% of
    # sigma). Tolerance: 4 standard errors of the sample mean over the 15625 independent blocks (SE ~0.2%).
    sigma = 0.02
    weight = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)) * sigma
    packed, absmax = quantize_nf4(weight)
    if double_quant:
        absmax = double_dequantize(*double_quantize(absmax))
    error = (dequantize_nf4(packed, absmax, weight.shape).double() - weight.double()) ** 2 / sigma**2
    per_block = error.view(-1, NF4_BLOCK_SIZE).mean(1)
    measured, stderr = per_block.mean().item(), (per_block.std() / math.sqrt(per_block.numel())).item()
    expected = _expected_nf4_mse()
    assert expected == pytest.approx(0.00846, rel=2e-3)
    assert stderr < 0.005 * expected
    assert abs(measured - expected) < 4 * stderr


def test_double_quant_error_bound_on_gaussian_absmax() -> None:
    # Absmax values of 1M N(0, 0.02) weights (15625 blocks, 62 scale blocks incl. a partial one). Bound:
    # |error| <= scale / 2 per value (round to nearest), plus float32 rounding of the multiply-add.
    weight = torch.randn(1_000_000, generator=torch.Generator().manual_seed(1)) * 0.02
    absmax = quantize_nf4(weight).absmax
    codes, scales, mean = double_quantize(absmax)
    assert (codes.dtype, codes.numel(), scales.numel()) == (torch.int8, 15625, 62)
    assert mean.item() == pytest.approx(absmax.double().mean().item(), rel=1e-6)
    rebuilt = double_dequantize(codes, scales, mean)
    bound = scales.repeat_interleave(ABSMAX_BLOCK_SIZE)[: absmax.numel()] / 2 + 1e-6 * absmax
    assert torch.all((rebuilt - absmax).abs() <= bound)
    # Centred absmax spreads ~2 sigma at most here, so the relative error stays below 2 / 254 / 1.5 ~ 0.5%.
    assert ((rebuilt - absmax).abs() / absmax).max().item() < 5e-3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False, width=32), min_size=1, max_size=700))
def test_double_quant_bound_property(values: list[float]) -> None:
    absmax = torch.tensor(values, dtype=torch.float32)
    codes, scales, mean = double_quantize(absmax)
    rebuilt = double_dequantize(codes, scales, mean)
    bound = scales.repeat_interleave(ABSMAX_BLOCK_SIZE)[: absmax.numel()] / 2
    assert torch.all((rebuilt - absmax).abs() <= bound + 1e-6 * (absmax.abs() + mean.abs()) + 1e-30)
    assert torch.all(codes.abs() <= 127)


def test_double_dequantize_range_is_a_slice() -> None:
    absmax = torch.rand(600, generator=torch.Generator().manual_seed(2))
    dq = double_quantize(absmax)
    full = double_dequantize(*dq)
    assert torch.equal(double_dequantize(*dq, start=250, stop=530), full[250:530])
    assert torch.equal(double_dequantize(*dq, start=600), full[600:])
    # hand case: codes (127, -127, 0) with scale 0.5 and mean 1 -> 64.5, -62.5, 1.
    rebuilt = double_dequantize(
        torch.tensor([127, -127, 0], dtype=torch.int8), torch.tensor([0.5]), torch.tensor(1.0), start=0, stop=3
    )
    assert rebuilt.tolist() == [64.5, -62.5, 1.0]


def test_dequantize_nf4_blocks_keeps_padding() -> None:
    packed, absmax = quantize_nf4(torch.arange(1.0, 71.0))
    values = dequantize_nf4_blocks(packed, absmax)
    assert values.shape == (128,)
    assert torch.all(values[70:] == 0)
    assert values[63].item() == 64.0 and values[69].item() == 70.0  # each block's absmax is coded exactly


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (torch.ones(3, dtype=torch.int32), "floating-point"),
        (torch.ones(0), "empty"),
        (torch.tensor([1.0, float("nan")]), "NaN or inf"),
        (torch.tensor([1.0, float("inf")]), "NaN or inf"),
    ],
)
def test_quantize_rejects(weight: torch.Tensor, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        quantize_nf4(weight)


def test_dequantize_rejects_mismatched_sizes() -> None:
    packed, absmax = quantize_nf4(torch.randn(128))
    with pytest.raises(QuantizationError, match=r"shape \(200,\) needs 4 blocks, got 2"):
        dequantize_nf4(packed, absmax, (200,))
    with pytest.raises(QuantizationError, match="packed bytes do not fit 1 blocks"):
        dequantize_nf4_blocks(packed, absmax[:1])


@pytest.mark.parametrize(
    ("absmax", "match"),
    [
        (torch.ones(2, 2), "must be 1-D"),
        (torch.tensor([1.0, float("nan")]), "NaN or inf"),
        (torch.ones(3, dtype=torch.int64), "floating-point"),
    ],
)
def test_double_quantize_rejects(absmax: torch.Tensor, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        double_quantize(absmax)


def test_double_dequantize_rejects() -> None:
    codes, scales, mean = double_quantize(torch.rand(300))
    with pytest.raises(QuantizationError, match=r"range \[5, 301\) is outside \[0, 300\]"):
        double_dequantize(codes, scales, mean, start=5, stop=301)
    with pytest.raises(QuantizationError, match=r"range \[9, 3\)"):
        double_dequantize(codes, scales, mean, start=9, stop=3)
    with pytest.raises(QuantizationError, match="300 codes need 2 scales, got 1"):
        double_dequantize(codes, scales[:1], mean)


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    weight = torch.randn(4096, 77, generator=torch.Generator().manual_seed(3))
    cpu = quantize_nf4(weight)
    gpu = quantize_nf4(weight.cuda())
    assert torch.equal(gpu.packed.cpu(), cpu.packed) and torch.equal(gpu.absmax.cpu(), cpu.absmax)
    dq_cpu, dq_gpu = double_quantize(cpu.absmax), double_quantize(gpu.absmax)
    assert torch.equal(dq_gpu.codes.cpu(), dq_cpu.codes)
    rebuilt = dequantize_nf4(gpu.packed, double_dequantize(*dq_gpu), weight.shape)
    torch.testing.assert_close(rebuilt.cpu(), dequantize_nf4(cpu.packed, double_dequantize(*dq_cpu), weight.shape))


@pytest.mark.parametrize(("shape", "seed"), [((96, 192), 0), ((7, 50), 1), ((1536, 576), 2)])
def test_codes_and_absmax_equal_bitsandbytes_quantize_4bit(shape: tuple[int, int], seed: int) -> None:
    # The oracle: bitsandbytes' own NF4 quantizer (CPU backend), blocks of 64, on the same weights.
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    packed, state = functional.quantize_4bit(weight, blocksize=NF4_BLOCK_SIZE, quant_type="nf4")
    ours = quantize_nf4(weight)
    # bitsandbytes stores ceil(numel / 2) bytes; ours fills the last block with code 7 (0.0) pairs.
    assert torch.equal(ours.packed[: packed.numel()], packed.view(-1))
    assert bool((ours.packed[packed.numel() :] == 0x77).all()) and NF4_CODE[7] == 0.0
    assert torch.equal(ours.absmax, state.absmax)
    expected = functional.dequantize_4bit(packed, state)
    assert torch.equal(dequantize_nf4(ours.packed, ours.absmax, weight.shape), expected)
