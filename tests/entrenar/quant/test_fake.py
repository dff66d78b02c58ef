"""entrenar.quant.fake: each QAT fake quantizer against an independent oracle.

Oracles: the `gguf` package (de-quantizes our GGUF bytes; quantizes the legacy types itself), bitsandbytes'
CPU NF4 quantizer, torchao 0.18's ``IntxFakeQuantizer`` (weights and activations, values and gradients).
"""

from __future__ import annotations

from typing import Any

import gguf.quants
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from aprender.format.gguf_quantize import quantize_rows
from entrenar.errors import QuantizationError
from entrenar.quant.fake import (
    QAT_WEIGHT_FORMATS,
    FakeQuantized,
    WeightQuantizer,
    fake_quantize_activations,
    gguf_weight_quantizer,
    straight_through,
    weight_quantizer,
)

T = GGMLQuantizationType
GGUF_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.F16, T.BF16]
# The types `gguf.quants.quantize` implements (its K-quants raise NotImplementedError).
GGUF_QUANTIZABLE = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16]


def _weight(shape: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A real-looking linear weight: N(0, 0.02) with 1% outliers 20x larger."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen) * 0.02
    flat = weight.view(-1)
    outliers = torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 100)]
    flat[outliers] *= 20
    return weight.to(dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (so -0.0 and +0.0 differ)."""
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def _torchao_quantizer(dtype: torch.dtype, granularity: str | None = None, **kwargs: Any) -> Any:
    qat = pytest.importorskip("torchao.quantization.qat")
    return qat.IntxFakeQuantizer(qat.IntxFakeQuantizeConfig(dtype, granularity, **kwargs))


# --- names and validation ------------------------------------------------------------------------------------


def test_formats_are_the_ones_we_export() -> None:
    assert QAT_WEIGHT_FORMATS == (
        "nf4", "int8", "int4",
        "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16", "bf16",
    )  # fmt: skip
    assert {t.name.lower() for t in GGUF_TYPES} == set(QAT_WEIGHT_FORMATS) - {"nf4", "int8", "int4"}


def test_weight_quantizer_builds_and_lower_cases() -> None:
    assert weight_quantizer("Q4_K") == WeightQuantizer("q4_k", None)
    assert weight_quantizer("int4", group_size=32) == WeightQuantizer("int4", 32)
    assert gguf_weight_quantizer(T.Q6_K) == WeightQuantizer("q6_k", None)
    assert gguf_weight_quantizer(T.BF16).name == "bf16"


@pytest.mark.parametrize(
    ("name", "group_size", "match"),
    [
        ("q4_k_m", None, r"unknown QAT weight format 'q4_k_m'; use one of nf4, int8, int4, q4_0"),
        ("f32", None, "unknown QAT weight format 'f32'"),
        ("nf4", 64, "nf4 has a fixed block layout; drop group_size"),
        ("q8_0", 32, "q8_0 has a fixed block layout"),
        ("int4", 1, "power of two >= 2 .* got 1"),
        ("int8", 0, "got 0"),
        ("int4", 48, "got 48"),
        ("int4", -32, "got -32"),
        ("int4", True, "got True"),
    ],
)
def test_weight_quantizer_rejects(name: str, group_size: int | None, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        weight_quantizer(name, group_size=group_size)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(QuantizationError, match="unknown QAT weight format 'Q4_K'"):
        WeightQuantizer("Q4_K", None)
    with pytest.raises(QuantizationError, match="unknown QAT weight format 'f32'"):
        gguf_weight_quantizer(T.F32)


@pytest.mark.parametrize(
    "weight",
    [torch.zeros(64), torch.zeros(2, 2, 64), torch.zeros(0, 64), torch.zeros(2, 64, dtype=torch.int32)],
    ids=["1-D", "3-D", "empty", "int"],
)
@pytest.mark.parametrize("name", ["nf4", "int8", "q8_0"])
def test_call_rejects_what_is_not_a_2d_float_weight(name: str, weight: torch.Tensor) -> None:
    with pytest.raises(QuantizationError, match=f"{name} fake quantization needs a non-empty 2-D float weight"):
        weight_quantizer(name)(weight)


def test_describe() -> None:
    assert weight_quantizer("q4_k").describe() == "Q4_K (llama.cpp's quantizer)"
    assert weight_quantizer("bf16").describe() == "BF16 (llama.cpp's quantizer)"
    assert weight_quantizer("int4", group_size=32).describe() == (
        "int4, symmetric, groups of 32 (torchao's IntxFakeQuantizeConfig numerics)"
    )
    assert (
        weight_quantizer("int8").describe()
        == "int8, symmetric, per channel (torchao's IntxFakeQuantizeConfig numerics)"
    )
    assert weight_quantizer("nf4").describe() == (
        "NF4, blocks of 64, float32 absmax, no double quantization (bitsandbytes' load_in_4bit numerics)"
    )


# --- GGUF types ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", GGUF_TYPES, ids=lambda t: t.name)
def test_gguf_values_are_what_gguf_reads_from_our_bytes(ggml_type: GGMLQuantizationType) -> None:
    # The oracle de-quantizer: the gguf package's own numpy code on the bytes our exporter writes.
    weight = _weight((8, 512), seed=1)
    fake = gguf_weight_quantizer(ggml_type)(weight.clone().requires_grad_())
    expected = gguf.quants.dequantize(quantize_rows(weight, ggml_type), ggml_type).reshape(8, 512)
    assert fake.values.dtype == torch.float32 and not fake.values.requires_grad and fake.keep_grad is None
    assert np.array_equal(fake.values.numpy().view(np.int32), np.asarray(expected, dtype=np.float32).view(np.int32))
    assert 0 < float((fake.values - weight).abs().max()) < 0.5 * float(weight.abs().max())  # quantized, not copied


@pytest.mark.parametrize("ggml_type", GGUF_QUANTIZABLE, ids=lambda t: t.name)
@pytest.mark.parametrize("seed", [2, 3])
def test_gguf_values_equal_gguf_quantize_then_dequantize(ggml_type: GGMLQuantizationType, seed: int) -> None:
    # Independent of our quantizer: the gguf package quantizes (ggml's reference rounding) and de-quantizes.
    weight = _weight((8, 512), seed)
    expected = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), ggml_type), ggml_type)
    assert torch.equal(gguf_weight_quantizer(ggml_type)(weight).values, torch.from_numpy(expected))


def test_gguf_reads_a_bfloat16_weight_as_its_float32_values() -> None:
    weight = _weight((4, 256), seed=4, dtype=torch.bfloat16)
    fake = weight_quantizer("q4_k")(weight)
    assert torch.equal(fake.values, weight_quantizer("q4_k")(weight.float()).values)


def test_gguf_rows_that_are_not_whole_blocks_raise() -> None:
    with pytest.raises(QuantizationError, match=r"Q4_K needs rows of whole 256-value blocks, weight \(4, 320\)"):
        weight_quantizer("q4_k")(torch.zeros(4, 320))
    with pytest.raises(QuantizationError, match=r"Q8_0 needs rows of whole 32-value blocks, weight \(2, 48\)"):
        weight_quantizer("q8_0")(torch.zeros(2, 48))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gguf_and_nf4_reject_non_finite_weights(bad: float) -> None:
    weight = torch.zeros(2, 256)
    weight[1, 3] = bad
    with pytest.raises(QuantizationError, match="Q6_K: the weight holds NaN or inf values"):
        weight_quantizer("q6_k")(weight)
    with pytest.raises(QuantizationError, match="NaN or inf"):
        weight_quantizer("nf4")(weight)


# --- NF4 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "seed"), [((8, 512), 5), ((96, 192), 6), ((7, 50), 7)])
def test_nf4_values_equal_bitsandbytes(shape: tuple[int, int], seed: int) -> None:
    # The oracle: bitsandbytes' quantize_4bit/dequantize_4bit (CPU), blocks of 64, no double quantization.
    # (7, 50): 350 values, a partial last block, which bitsandbytes also accepts.
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = _weight(shape, seed)
    packed, state = functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    fake = weight_quantizer("nf4")(weight)
    assert fake.keep_grad is None
    assert torch.equal(_bits(fake.values), _bits(functional.dequantize_4bit(packed, state)))


def test_nf4_of_a_bfloat16_weight_equals_bitsandbytes_in_bfloat16() -> None:
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = _weight((16, 128), seed=8, dtype=torch.bfloat16)
    packed, state = functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    used = straight_through(weight, weight_quantizer("nf4")(weight))
    assert used.dtype == torch.bfloat16
    assert torch.equal(_bits(used), _bits(functional.dequantize_4bit(packed, state)))


# --- int8 / int4 (torchao) -----------------------------------------------------------------------------------

INT_CASES = [("int8", None), ("int4", 32), ("int4", 128), ("int8", 64), ("int4", None)]


def _torchao_weight_quantizer(name: str, group_size: int | None) -> Any:
    dtype = {"int8": torch.int8, "int4": torch.int4}[name]  # type: ignore[attr-defined]  # int4: no stub yet
    if group_size is None:
        return _torchao_quantizer(dtype, "per_channel", is_symmetric=True)
    return _torchao_quantizer(dtype, group_size=group_size, is_symmetric=True)


def _int_weight(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    weight = _weight((12, 256), seed=9)
    weight[2] = 0.0  # a row of zeros: scale = eps (float32's smallest normal)
    weight[5, 17] = 3.0  # one big outlier crushes the rest of its row or group
    weight[7, 40] = -3.0  # the negative twin: -absmax maps to qmin, inside the range
    weight[9] *= 4e-38 / weight[9].abs().max()  # a tiny row: absmax / 7.5 is below eps, so scale = eps
    return weight.to(dtype)


@pytest.mark.parametrize(("name", "group_size"), INT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_int_values_equal_torchao_bit_for_bit(name: str, group_size: int | None, dtype: torch.dtype) -> None:
    weight = _int_weight(dtype)
    expected = _torchao_weight_quantizer(name, group_size)(weight)
    fake = weight_quantizer(name, group_size=group_size)(weight)
    assert fake.values.dtype == torch.float32
    assert torch.equal(_bits(fake.values.to(dtype)), _bits(expected))
    assert torch.equal(fake.values, fake.values.to(dtype).float())  # torchao rounds to the weight's dtype
    assert bool((fake.values[2] == 0).all())


@pytest.mark.parametrize(("name", "group_size"), INT_CASES)
def test_int_gradients_equal_torchao(name: str, group_size: int | None) -> None:
    weight = _int_weight()
    upstream = torch.randn(weight.shape, generator=torch.Generator().manual_seed(10))
    reference = weight.clone().requires_grad_()
    torchao_quantizer = _torchao_weight_quantizer(name, group_size)
    torchao_quantizer(reference).backward(upstream)
    ours = weight.clone().requires_grad_()
    fake = weight_quantizer(name, group_size=group_size)(ours)
    straight_through(ours, fake).backward(upstream)
    assert fake.keep_grad is not None and fake.keep_grad.dtype == torch.bool
    assert ours.grad is not None and reference.grad is not None
    # Same mask: torchao's gradient is 0 exactly where the clamp cut.
    assert torch.equal(reference.grad != 0, fake.keep_grad) and not bool(fake.keep_grad.all())
    assert torch.equal(ours.grad, upstream * fake.keep_grad)
    # torchao's backward runs the chain rule through its dequantize (x scale) and quantize (x 1/scale) steps, so
    # its straight-through gradient is fl(fl(g * s) * fl(1 / s)), within 2 ulp of g; ours passes g itself.
    scale = torchao_quantizer.scale.float().repeat_interleave(group_size or weight.shape[1], dim=1)
    assert torch.equal(reference.grad, (ours.grad * scale) * (1.0 / scale))
    kept = fake.keep_grad.clone()
    kept[[2, 9]] = False  # rows with scale = eps: g * eps is subnormal in torchao's chain and loses bits
    torch.testing.assert_close(reference.grad[kept], ours.grad[kept], rtol=2.5e-7, atol=0)


@pytest.mark.parametrize(("name", "absmax"), [("int4", 7.5), ("int8", 127.5)])
def test_int_clamps_the_positive_absmax_and_masks_its_gradient(name: str, absmax: float) -> None:
    # Hand-computed: scale = absmax / ((qmax - qmin) / 2) = 1.0 exactly; absmax / scale = qmax + 0.5 rounds (half
    # to even) to qmax + 1 and is clamped back to qmax, so the largest positive value loses its gradient
    # (torchao does the same), while -absmax rounds to qmin, inside the range. 2.5 rounds to even, 2.
    qmax = absmax - 0.5
    weight = torch.tensor([[absmax, -absmax, 2.5, 0.4], [-absmax, qmax, 0.25, -1.0]])
    fake = weight_quantizer(name)(weight)
    assert fake.values.tolist() == [[qmax, -qmax - 1, 2.0, 0.0], [-qmax - 1, qmax, 0.0, -1.0]]
    assert fake.keep_grad is not None
    assert fake.keep_grad.tolist() == [[False, True, True, True], [True, True, True, True]]
    expected = _torchao_weight_quantizer(name, None)(weight)
    assert torch.equal(fake.values, expected)


def test_int_reads_other_float_dtypes_as_float32() -> None:
    weight = _int_weight()
    fake = weight_quantizer("int4", group_size=32)(weight.double())
    assert torch.equal(fake.values, weight_quantizer("int4", group_size=32)(weight).values)


def test_int_groups_must_divide_the_rows() -> None:
    with pytest.raises(QuantizationError, match=r"64-value groups do not divide rows of 96 \(weight \(4, 96\)\)"):
        weight_quantizer("int4", group_size=64)(torch.zeros(4, 96))
    assert weight_quantizer("int8")(torch.ones(3, 5)).values.shape == (3, 5)  # per channel: any row length


# --- straight_through ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_straight_through_forward_is_bit_exact_and_gradient_identity(dtype: torch.dtype) -> None:
    weight = _weight((8, 256), seed=11, dtype=dtype).requires_grad_()
    fake = weight_quantizer("q4_k")(weight)
    used = straight_through(weight, fake)
    assert used.dtype == dtype
    assert torch.equal(_bits(used), _bits(fake.values.to(dtype)))
    upstream = torch.randn(weight.shape, generator=torch.Generator().manual_seed(12)).to(dtype)
    used.backward(upstream)
    assert weight.grad is not None and torch.equal(weight.grad, upstream)


def test_straight_through_keeps_negative_zeros() -> None:
    # Q4_0 de-quantizes code 8 with a negative block scale d to 0 * d = -0.0: w + 0 would make it +0.0.
    weight = _weight((4, 64), seed=18)
    fake = weight_quantizer("q4_0")(weight)
    negative_zero = _bits(fake.values) == _bits(torch.tensor(-0.0))
    assert bool(negative_zero.any())
    assert torch.equal(_bits(straight_through(weight.requires_grad_(), fake)), _bits(fake.values))


def test_straight_through_masks_the_gradient() -> None:
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(13)).requires_grad_()
    keep = torch.rand(4, 8, generator=torch.Generator().manual_seed(14)) > 0.3
    fake = FakeQuantized(torch.round(weight.detach()), keep)
    used = straight_through(weight, fake)
    assert torch.equal(_bits(used), _bits(fake.values))
    used.sum().backward()
    assert weight.grad is not None and torch.equal(weight.grad, keep.float())


def test_straight_through_reaches_lora_factors_of_a_merged_weight() -> None:
    gen = torch.Generator().manual_seed(15)
    base = _weight((16, 64), seed=16)
    lora_a = (torch.randn(4, 64, generator=gen) * 0.1).requires_grad_()
    lora_b = (torch.randn(16, 4, generator=gen) * 0.1).requires_grad_()
    upstream = torch.randn(16, 64, generator=gen)
    merged = base + lora_b @ lora_a
    fake = weight_quantizer("int4", group_size=32)(merged)
    straight_through(merged, fake).backward(upstream)
    assert fake.keep_grad is not None
    # The reference: the same product with the masked gradient injected by hand.
    ref_a, ref_b = lora_a.detach().clone().requires_grad_(), lora_b.detach().clone().requires_grad_()
    ((base + ref_b @ ref_a) * (upstream * fake.keep_grad)).sum().backward()
    assert lora_a.grad is not None and lora_b.grad is not None and ref_a.grad is not None and ref_b.grad is not None
    assert torch.equal(lora_a.grad, ref_a.grad) and torch.equal(lora_b.grad, ref_b.grad)
    assert float(lora_a.grad.abs().sum()) > 0 and float(lora_b.grad.abs().sum()) > 0


def test_straight_through_rejects_another_shape() -> None:
    fake = weight_quantizer("int8")(torch.ones(4, 8))
    with pytest.raises(QuantizationError, match=r"fake values \(4, 8\) do not match the weight \(8, 4\)"):
        straight_through(torch.ones(8, 4), fake)


# --- activations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 64), (7, 96)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_activations_values_and_gradients_equal_torchao(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(17)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    tokens = x.view(-1, shape[-1])
    tokens[0] = 0.0  # an all-zero token: scale = eps, zero point -128
    tokens[1] = 0.5  # a constant positive token
    tokens[2] = -0.75  # a constant negative token
    tokens[3, 5] = 40.0  # an outlier token
    upstream = torch.randn(shape, generator=gen).to(dtype)
    reference = x.clone().requires_grad_()
    expected = _torchao_quantizer(torch.int8, "per_token", is_symmetric=False)(reference)
    expected.backward(upstream)
    ours = x.clone().requires_grad_()
    values = fake_quantize_activations(ours)
    values.backward(upstream)
    assert values.dtype == dtype and values.shape == x.shape
    assert torch.equal(_bits(values), _bits(expected))
    assert ours.grad is not None and reference.grad is not None
    assert torch.equal(_bits(ours.grad), _bits(reference.grad))
    assert bool((values.view(-1, shape[-1])[0] == 0).all())
    assert not torch.equal(values, x)


@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(4, 8, dtype=torch.float64),
        torch.zeros(4, 8, dtype=torch.int32),
        torch.tensor(1.0),
        torch.zeros(0, 8),
    ],
    ids=["float64", "int", "0-d", "empty"],
)
def test_activations_reject(x: torch.Tensor) -> None:
    with pytest.raises(QuantizationError, match="fake_quantize_activations needs a non-empty float32/bfloat16/float16"):
        fake_quantize_activations(x)
