"""aprender.format.gguf_quants: our dequantization kernels against `gguf.quants` (the oracle).

Every comparison is exact (`rtol=0, atol=0`, NaNs equal): our torch kernels perform the same float32
operations in the same order as ggml's reference `dequantize_row_*`, which `gguf.quants` mirrors.
"""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import FormatError
from aprender.format.gguf_quants import decode, dequantize, ggml_type_name

T = GGMLQuantizationType
OWN_QUANTIZED = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
QUANTIZABLE = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16)  # gguf.quants.quantize supports these
PLAIN = {T.F32: "<f4", T.F16: "<f2", T.F64: "<f8", T.I8: "i1", T.I16: "<i2", T.I32: "<i4", T.I64: "<i8"}
# Byte offsets of the fp16 scale fields in each block (ggml-common.h block structs).
FP16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}  # fmt: skip

finite_f16 = st.floats(min_value=-1000, max_value=1000, width=16, allow_nan=False, allow_infinity=False)


def _oracle(blocks: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.array(gguf.quants.dequantize(blocks, qtype), dtype=np.float32).reshape(shape))


def _assert_exact(ours: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 5),
    blocks_per_row=st.integers(1, 4),
    scale=st.sampled_from([1e-3, 1.0, 100.0]),
)
def test_quantized_weights_match_gguf(
    qtype: GGMLQuantizationType, seed: int, rows: int, blocks_per_row: int, scale: float
) -> None:
    """Quantize random weights with gguf, dequantize with both: identical; and close to the weights."""
    weights = np.random.default_rng(seed).standard_normal((rows, 32 * blocks_per_row)).astype(np.float32) * scale
    quantized = gguf.quants.quantize(weights, qtype)
    ours = dequantize(quantized, qtype, weights.shape)
    _assert_exact(ours, _oracle(quantized, qtype, weights.shape))
    # Sanity against the source weights: 4-bit codes err by at most ~one step, (max - min) / 15 per block.
    assert torch.allclose(ours, torch.from_numpy(weights), atol=float(np.ptp(weights)) / 7, rtol=0)


@pytest.mark.parametrize("qtype", OWN_QUANTIZED, ids=lambda t: t.name)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_blocks=st.integers(1, 6), scales=st.lists(finite_f16, min_size=2, max_size=2))
def test_random_blocks_with_finite_scales_match_gguf(
    qtype: GGMLQuantizationType, seed: int, n_blocks: int, scales: list[float]
) -> None:
    """Random block bytes (every code, scale and min pattern) with finite fp16 scale fields."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = np.random.default_rng(seed).integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for at, value in zip(FP16_FIELDS[qtype], scales, strict=False):
        blocks[:, at : at + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
    shape = (n_blocks, block_size)
    ours = dequantize(blocks, qtype, shape)
    assert torch.isfinite(ours).all()
    _assert_exact(ours, _oracle(blocks, qtype, shape))


@pytest.mark.parametrize("qtype", OWN_QUANTIZED, ids=lambda t: t.name)
def test_fully_random_bytes_match_gguf_including_nan_and_inf(qtype: GGMLQuantizationType) -> None:
    """Raw random bytes, so fp16 scales include NaN, inf and subnormals: still bit-identical."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = np.random.default_rng(int(qtype)).integers(0, 256, size=(512, type_size), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = _oracle(blocks, qtype, (8, 64 * block_size))
    _assert_exact(dequantize(blocks.tobytes(), qtype, (8, 64 * block_size)), expected)


def test_q4_0_hand_computed() -> None:
    # d = 0.5 (fp16 0x3800); qs[j] = 0x9F for all j: low nibble 15 -> (15 - 8) * 0.5 = 3.5 for x[0:16],
    # high nibble 9 -> (9 - 8) * 0.5 = 0.5 for x[16:32].
    block = bytes([0x00, 0x38]) + bytes([0x9F] * 16)
    assert dequantize(block, T.Q4_0, (32,)).tolist() == [3.5] * 16 + [0.5] * 16


def test_q8_0_hand_computed() -> None:
    # d = 2.0 (fp16 0x4000); qs = 0, 1, ..., 31 as int8 except qs[31] = -128: y = 2 * qs.
    qs = [*range(31), -128]
    block = bytes([0x00, 0x40]) + np.array(qs, dtype=np.int8).tobytes()
    assert dequantize(block, T.Q8_0, (32,)).tolist() == [2.0 * q for q in qs]


def test_q5_1_hand_computed() -> None:
    # d = 1.0 (0x3C00), m = -16.0 (0xCC00); qh = 0xFFFF0000: bit 4 set for x[16:32] only;
    # qs[j] = 0x21: low nibble 1 for x[0:16], high nibble 2 for x[16:32].
    # y = x * d + m: x[0:16] = 1 -> -15; x[16:32] = 2 + 16 = 18 -> 2.
    block = bytes([0x00, 0x3C, 0x00, 0xCC]) + (0xFFFF0000).to_bytes(4, "little") + bytes([0x21] * 16)
    assert dequantize(block, T.Q5_1, (32,)).tolist() == [-15.0] * 16 + [2.0] * 16


def test_q2_k_hand_computed() -> None:
    # scales[g] = 0x21 (scale 1, min 2) for all 16 groups; qs bytes 0xE4 = 0b11_10_01_00, so bit plane p
    # (bits 2p..2p+1) holds code p; d = 1.0, dmin = 0.5. Each 128-value half is 4 planes of 32 values:
    # y = d * 1 * p - dmin * 2 = p - 1 -> [-1] * 32 + [0] * 32 + [1] * 32 + [2] * 32, twice.
    block = bytes([0x21] * 16) + bytes([0xE4] * 64) + bytes([0x00, 0x3C, 0x00, 0x38])
    expected = [float(p - 1) for p in range(4) for _ in range(32)] * 2
    assert dequantize(block, T.Q2_K, (256,)).tolist() == expected


def test_q4_k_hand_computed() -> None:
    # d = 1.0, dmin = 1.0. Scales bytes: [1, 2, 3, 4 | 0, 0, 0, 1 | 0x05, 0x06, 0x07, 0x08]:
    # groups 0-3: scale 1..4, min 0, 0, 0, 1; groups 4-7: scale = low nibble of bytes 8-11 (5..8),
    # min = high nibble (0). qs = 0x31 everywhere: groups 0, 2, 4, 6 (low nibbles) code 1, odd groups code 3.
    # y = scale * code - min: g0 1, g1 6, g2 3, g3 12 - 1 = 11, g4 5, g5 18, g6 7, g7 24.
    block = bytes([0x00, 0x3C, 0x00, 0x3C, 1, 2, 3, 4, 0, 0, 0, 1, 5, 6, 7, 8]) + bytes([0x31] * 128)
    expected = [float(v) for v in (1, 6, 3, 11, 5, 18, 7, 24) for _ in range(32)]
    assert dequantize(block, T.Q4_K, (256,)).tolist() == expected


def test_q6_k_hand_computed() -> None:
    # ql = 0x00, qh = 0xAA (= 0b10_10_10_10: high bits 2 in every plane) -> code (2 << 4) - 32 = 0 everywhere
    # except: set ql[0] = 0x0F -> y[0] code 15 + 32 - 32 = 15. scales[0] = -2, d = 0.5 -> y[0] = 0.5 * -2 * 15.
    ql = bytearray(128)
    ql[0] = 0x0F
    scales = np.full(16, -2, dtype=np.int8).tobytes()
    block = bytes(ql) + bytes([0xAA] * 64) + scales + bytes([0x00, 0x38])
    expected = [-15.0] + [-0.0] * 255
    assert dequantize(block, T.Q6_K, (256,)).tolist() == expected


@pytest.mark.parametrize("qtype", list(PLAIN), ids=lambda t: t.name)
def test_plain_types_are_exact_casts(qtype: GGMLQuantizationType) -> None:
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((3, 4)) * 100).astype(np.dtype(PLAIN[qtype]))
    ours = dequantize(values.view(np.uint8), qtype, (3, 4))
    assert ours.dtype == torch.float32
    assert torch.equal(ours, torch.from_numpy(values.astype(np.float32)))
    native = torch.from_numpy(values.astype(values.dtype.newbyteorder("=")))
    assert torch.equal(decode(values.tobytes(), qtype, (3, 4), native.dtype), native)  # no float32 detour


def test_bf16_matches_gguf_and_keeps_bits() -> None:
    weights = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    quantized = gguf.quants.quantize(weights, T.BF16)
    _assert_exact(dequantize(quantized, T.BF16, (2, 8)), _oracle(quantized, T.BF16, (2, 8)))
    bf16 = decode(quantized, T.BF16, (2, 8), torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.view(torch.int16).numpy().tobytes() == quantized.tobytes()


def test_every_gguf_type_decodes_like_gguf_or_raises() -> None:
    """Types gguf can dequantize (IQ*, TQ*, MXFP4, ...) give its values; the others raise FormatError."""
    unsupported = []
    for qtype in GGML_QUANT_SIZES:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        blocks = np.random.default_rng(int(qtype)).integers(0, 256, size=(4, type_size), dtype=np.uint8)
        shape = (2, 2 * block_size)
        if qtype in PLAIN:
            continue
        try:
            with np.errstate(invalid="ignore", over="ignore"):
                expected = _oracle(blocks, qtype, shape)
        except NotImplementedError:
            with pytest.raises(FormatError, match=rf"{qtype.name} cannot be dequantized"):
                dequantize(blocks, qtype, shape)
            unsupported.append(qtype.name)
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            _assert_exact(dequantize(blocks, qtype, shape), expected)
    assert "Q4_K" not in unsupported and len(unsupported) < len(GGML_QUANT_SIZES) // 4  # nearly all types decode


@pytest.mark.parametrize(
    ("data", "qtype", "shape", "match"),
    [
        (bytes(18), 4, (32,), r"GGML type id 4 is unknown"),
        (bytes(18), T.Q4_0, (16,), r"Q4_0 rows hold whole blocks of 32 values, but shape \(16,\)"),
        (bytes(17), T.Q4_0, (32,), r"needs 18 bytes, got 17"),
        (bytes(8), T.F32, (3,), r"needs 12 bytes, got 8"),
        (bytes(4), T.F32, (), r"shape \(\) is invalid"),
        (bytes(4), T.F32, (1, 0), r"shape \(1, 0\) is invalid"),
    ],
)
def test_invalid_input_raises_format_error(data: bytes, qtype: int, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(FormatError, match=match):
        dequantize(data, qtype, shape)


def test_ggml_type_name() -> None:
    assert ggml_type_name(3) == "Q4_1"
    assert ggml_type_name(4) == "unknown"
