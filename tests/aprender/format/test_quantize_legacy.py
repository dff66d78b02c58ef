"""aprender.format.quantize_legacy: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 bytes equal llama.cpp's, block for block.

The oracle (``llamacpp`` tests, skipped without llama-cpp-python): ``ggml_quantize_chunk`` of the built ggml
library (`fixtures.ggml_quants.ggml_quantize`), with and without an importance matrix, on random data of several
kinds and on whole SmolLM2 tensors. A block passes when its bytes are identical; at least 99.9% must, and any
other block must reconstruct (after our `dequantize`) with a squared error within 1e-6 relative of llama.cpp's.
The other tests run everywhere and go through every code path: per-value error bounds of the round trip,
ggml's all-zero blocks, hand-computed bytes, bad shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from safetensors.torch import load_file

from aprender.errors import FormatError
from aprender.format import quant_search
from aprender.format.gguf_quants import dequantize
from aprender.format.quantize_legacy import quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1, quantize_q8_0
from fixtures.ggml_quants import assert_like_llama_cpp
from fixtures.threads import torch_threads

Quantizer = Callable[[torch.Tensor, torch.Tensor | None], np.ndarray]
QUANTIZERS: dict[T, Quantizer] = {
    T.Q4_0: quantize_q4_0,
    T.Q4_1: quantize_q4_1,
    T.Q5_0: quantize_q5_0,
    T.Q5_1: quantize_q5_1,
    T.Q8_0: quantize_q8_0,
}
KINDS = ("normal", "heavy_tailed", "sparse_blocks", "tiny", "constant_rows", "large", "small_integers")


def _data(kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, 512) test data of one kind (each row: sixteen 32-value blocks)."""
    shape = (16, 512)
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "heavy_tailed":  # Student-t with 2 degrees of freedom, plus 1% outliers 100x larger
        x = rng.standard_t(2, shape)
        return (x * np.where(rng.random(shape) < 0.01, 100.0, 1.0)).astype(np.float32)
    if kind == "sparse_blocks":  # whole zero blocks, and blocks with a single non-zero value
        x = np.zeros(shape, np.float32)
        x.reshape(-1, 32)[::2, 7] = rng.standard_normal(128).astype(np.float32)
        x[0] = rng.standard_normal(512)
        return x
    if kind == "tiny":  # scales far below fp16's smallest subnormal
        return (rng.standard_normal(shape) * 1e-8).astype(np.float32)
    if kind == "constant_rows":
        return np.repeat(rng.standard_normal((16, 1)).astype(np.float32), 512, axis=1)
    if kind == "large":  # fp16 scales up to and beyond 65504 (inf)
        return (rng.standard_normal(shape) * np.array([1e2, 1e4, 1e6, 1e7])[rng.integers(0, 4, (16, 1))]).astype(
            np.float32
        )
    if kind == "small_integers":  # many exact ties for the rounding and the searches
        return rng.integers(-8, 8, shape).astype(np.float32)
    raise AssertionError(kind)


def _imatrix(n: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible importance matrix: mean squared activations, skewed, with a few dead (zero) columns."""
    weights = (rng.random(n) ** 3 * 10).astype(np.float32)
    weights[rng.random(n) < 0.05] = 0
    return weights


def _quantize(qtype: T, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Our bytes; one torch thread, as the searches' many small steps run 5x slower on two busy cores."""
    with torch_threads(1):
        return QUANTIZERS[qtype](torch.from_numpy(x), None if imatrix is None else torch.from_numpy(imatrix))


@pytest.mark.llamacpp
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_bytes_equal_llama_cpp_on_random_data(qtype: T, kind: str, with_imatrix: bool) -> None:
    rng = np.random.default_rng(17)
    x = _data(kind, rng)
    assert_like_llama_cpp(qtype, x, _imatrix(x.shape[1], rng) if with_imatrix else None)


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_bytes_equal_llama_cpp_on_smollm2(qtype: T, smollm2_hf_dir: Path) -> None:
    """Whole tensors of the real model; with an imatrix, the embedding's first 2048 rows keep the test short."""
    state = load_file(smollm2_hf_dir / "model.safetensors")
    rng = np.random.default_rng(3)
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.embed_tokens.weight",
    ):
        x = state[name].float().numpy()
        assert_like_llama_cpp(qtype, x, None)
        assert_like_llama_cpp(qtype, x[:2048], _imatrix(x.shape[1], rng))


def _fp16_fields(blocks: np.ndarray, count: int) -> np.ndarray:
    """The leading fp16 fields (d, and m for the affine types) of each block, as float64: (n, count)."""
    return np.ascontiguousarray(blocks[:, : 2 * count]).view(np.float16).astype(np.float64)


@pytest.mark.parametrize(("qtype", "top"), [(T.Q4_0, 7), (T.Q5_0, 15), (T.Q8_0, 127)], ids=["Q4_0", "Q5_0", "Q8_0"])
def test_symmetric_round_trip_is_within_half_a_step(qtype: T, top: int) -> None:
    """x ~ d * q with q up to `top`: |x - x'| <= |d|/2, plus what rounding d to fp16 adds (|q| * |d| * 2**-11),
    except where x / d > top + 1/2: Q4_0 and Q5_0 map the largest magnitude to q = -8 (-16), so a value of the
    other sign and about the same size clamps to q = 7 (15), off by up to |d|."""
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    blocks = _quantize(qtype, x).reshape(-1, GGML_QUANT_SIZES[qtype][1])
    d = _fp16_fields(blocks, 1)
    values = x.reshape(-1, 32)
    error = np.abs(dequantize(blocks, qtype, x.shape).numpy().reshape(-1, 32) - values)
    clamped = values / d > top + 0.5
    step = np.where(clamped, 1.0, 0.5) * np.abs(d)
    assert np.all(error <= step + (top + 1) * np.abs(d) * 2.0**-11)
    assert clamped.any() == (qtype != T.Q8_0)


@pytest.mark.parametrize(("qtype", "nmax"), [(T.Q4_1, 15), (T.Q5_1, 31)], ids=["Q4_1", "Q5_1"])
def test_affine_round_trip_is_within_half_a_step(qtype: T, nmax: int) -> None:
    """|x - (d * q + m)| <= d/2 plus the fp16 rounding of d (times q <= nmax) and of m (|m| * 2**-11)."""
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    blocks = _quantize(qtype, x).reshape(-1, GGML_QUANT_SIZES[qtype][1])
    d, m = np.abs(_fp16_fields(blocks, 2)).T
    error = np.abs(dequantize(blocks, qtype, x.shape).numpy().reshape(-1, 32) - x.reshape(-1, 32))
    assert np.all(error <= (0.5 * d + (nmax * d + m) * 2.0**-11)[:, None])


@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_imatrix_round_trip_error_is_bounded(qtype: T) -> None:
    """Relative RMS error of normal weights quantized with an imatrix weighting even columns 100x more, measured:
    Q4_0 0.086, Q4_1 0.076, Q5_0 0.043, Q5_1 0.036, Q8_0 0.005 (about the same without one); the search moves
    error to the light columns: the heavy ones' mean squared error is 0.50-0.68x the light ones' (1.0 without)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    imatrix = np.where(np.arange(512) % 2 == 0, 10.0, 0.1).astype(np.float32)
    decoded = dequantize(_quantize(qtype, x, imatrix), qtype, x.shape).numpy()
    error = (decoded - x) ** 2
    bound = {T.Q4_0: 0.095, T.Q4_1: 0.085, T.Q5_0: 0.05, T.Q5_1: 0.04, T.Q8_0: 0.006}[qtype]
    assert np.sqrt(error.mean() / (x**2).mean()) < bound
    if qtype != T.Q8_0:  # Q8_0 ignores the imatrix
        assert error[:, ::2].mean() < 0.8 * error[:, 1::2].mean()


def test_q8_0_ignores_the_imatrix_and_rounds_ties_away_from_zero() -> None:
    """d = 127 / 127 = 1, so q = roundf(x): 0.5 -> 1, -0.5 -> -1, 2.5 -> 3 (round-half-even would give 0, 0, 2)."""
    x = np.zeros((1, 32), np.float32)
    x[0, :5] = [127.0, 0.5, -0.5, 2.5, -1.5]
    blocks = _quantize(T.Q8_0, x)
    assert blocks[0, :2].view(np.float16)[0] == 1.0
    assert blocks[0, 2:7].view(np.int8).tolist() == [127, 1, -1, 3, -2]
    np.testing.assert_array_equal(_quantize(T.Q8_0, x, np.linspace(0, 1, 32, dtype=np.float32)), blocks)


def test_q4_0_bytes_by_hand() -> None:
    """max = -8 (largest magnitude, negative) gives d = 1 and codes x + 8; +8 clamps to code 15 (7 after -8)."""
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [-8.0, 8.0, 3.0, -2.0]
    x[0, 16] = 5.0
    blocks = _quantize(T.Q4_0, x)
    assert blocks[0, :2].view(np.float16)[0] == 1.0
    assert blocks[0, 2:6].tolist() == [0 | 13 << 4, 15 | 8 << 4, 11 | 8 << 4, 6 | 8 << 4]


# ggml's bytes for an all-zero block, read from ggml_quantize_chunk: the round-to-nearest Q4_0/Q5_0 compute
# d = 0 / -8 = -0.0 (fp16 0x8000) and code 8 (16) for every zero; their imatrix searches and the other types
# write zeros.
ZERO_BLOCKS = {
    T.Q4_0: [0x00, 0x80] + [0x88] * 16,
    T.Q5_0: [0x00, 0x80, 0xFF, 0xFF, 0xFF, 0xFF] + [0x00] * 16,
}


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_zero_rows_give_ggml_zero_blocks(qtype: T, with_imatrix: bool) -> None:
    size = GGML_QUANT_SIZES[qtype][1]
    x = np.zeros((2, 64), np.float32)
    imatrix = np.ones(64, np.float32) if with_imatrix else None
    expected = [0] * size if with_imatrix or qtype not in ZERO_BLOCKS else ZERO_BLOCKS[qtype]
    assert _quantize(qtype, x, imatrix).reshape(-1, size).tolist() == [expected] * 4
    assert not dequantize(_quantize(qtype, x, imatrix), qtype, x.shape).any()


@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_output_shape_and_dtype(qtype: T) -> None:
    """float16/bfloat16 input is read as float32; the result is (rows, n_per_row / 32 * type_size) uint8."""
    out = QUANTIZERS[qtype](torch.randn(3, 96, dtype=torch.bfloat16), None)
    assert out.dtype == np.uint8
    assert out.shape == (3, 3 * GGML_QUANT_SIZES[qtype][1])


@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_chunks_of_rows_give_the_same_bytes(qtype: T, monkeypatch: pytest.MonkeyPatch) -> None:
    """ggml quantizes each row on its own, so chunking the rows (here one or two rows a chunk) changes nothing."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    imatrix = _imatrix(64, rng)
    whole = [_quantize(qtype, x), _quantize(qtype, x, imatrix)]
    monkeypatch.setattr(quant_search, "CHUNK_VALUES", 128)
    np.testing.assert_array_equal(_quantize(qtype, x), whole[0])
    np.testing.assert_array_equal(_quantize(qtype, x, imatrix), whole[1])
    assert _quantize(qtype, x[:0]).shape == (0, 64 // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1])


@pytest.mark.parametrize(
    ("shape", "imatrix_size", "message"),
    [
        ((64,), None, r"takes \(rows, n_per_row\) values, got shape \(64,\)"),
        ((2, 48), None, "rows hold whole blocks of 32 values, but rows have 48"),
        ((2, 0), None, "rows hold whole blocks of 32 values, but rows have 0"),
        ((2, 64), 32, r"one weight per column, shape \(64,\); got \(32,\)"),
    ],
    ids=["1-D", "partial block", "empty rows", "imatrix size"],
)
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_bad_shapes_raise_format_error(
    qtype: T, shape: tuple[int, ...], imatrix_size: int | None, message: str
) -> None:
    imatrix = None if imatrix_size is None else torch.ones(imatrix_size)
    with pytest.raises(FormatError, match=message) as info:
        QUANTIZERS[qtype](torch.zeros(shape), imatrix)
    assert "\n" not in str(info.value)
