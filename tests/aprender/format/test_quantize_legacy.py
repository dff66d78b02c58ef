"""aprender.format.quantize_legacy: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, the checks of these types alone.

What every quantized type shares is in test_quantize_k: the bytes against llama.cpp's (random data of every kind,
SmolLM2 tensors; with and without an importance matrix), the bounded round-trip error, ggml's all-zero blocks,
chunks of rows, shapes. Here, where they run everywhere: per-value error bounds of the round trip, Q8_0's ties and
its ignoring the importance matrix, hand-computed Q4_0 bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T

from aprender.format.gguf_quants import dequantize
from fixtures.ggml_quants import our_bytes


def _fp16_fields(blocks: np.ndarray, count: int) -> np.ndarray:
    """The leading fp16 fields (d, and m for the affine types) of each block, as float64: (n, count)."""
    return np.ascontiguousarray(blocks[:, : 2 * count]).view(np.float16).astype(np.float64)


@pytest.mark.parametrize(("qtype", "top"), [(T.Q4_0, 7), (T.Q5_0, 15), (T.Q8_0, 127)], ids=["Q4_0", "Q5_0", "Q8_0"])
def test_symmetric_round_trip_is_within_half_a_step(qtype: T, top: int) -> None:
    """x ~ d * q with q up to `top`: |x - x'| <= |d|/2, plus what rounding d to fp16 adds (|q| * |d| * 2**-11),
    except where x / d > top + 1/2: Q4_0 and Q5_0 map the largest magnitude to q = -8 (-16), so a value of the
    other sign and about the same size clamps to q = 7 (15), off by up to |d|."""
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    blocks = our_bytes(qtype, x).reshape(-1, GGML_QUANT_SIZES[qtype][1])
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
    blocks = our_bytes(qtype, x).reshape(-1, GGML_QUANT_SIZES[qtype][1])
    d, m = np.abs(_fp16_fields(blocks, 2)).T
    error = np.abs(dequantize(blocks, qtype, x.shape).numpy().reshape(-1, 32) - x.reshape(-1, 32))
    assert np.all(error <= (0.5 * d + (nmax * d + m) * 2.0**-11)[:, None])


def test_q8_0_ignores_the_imatrix_and_rounds_ties_away_from_zero() -> None:
    """d = 127 / 127 = 1, so q = roundf(x): 0.5 -> 1, -0.5 -> -1, 2.5 -> 3 (round-half-even would give 0, 0, 2)."""
    x = np.zeros((1, 32), np.float32)
    x[0, :5] = [127.0, 0.5, -0.5, 2.5, -1.5]
    blocks = our_bytes(T.Q8_0, x)
    assert blocks[0, :2].view(np.float16)[0] == 1.0
    assert blocks[0, 2:7].view(np.int8).tolist() == [127, 1, -1, 3, -2]
    np.testing.assert_array_equal(our_bytes(T.Q8_0, x, np.linspace(0, 1, 32, dtype=np.float32)), blocks)


def test_q4_0_bytes_by_hand() -> None:
    """max = -8 (largest magnitude, negative) gives d = 1 and codes x + 8; +8 clamps to code 15 (7 after -8)."""
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [-8.0, 8.0, 3.0, -2.0]
    x[0, 16] = 5.0
    blocks = our_bytes(T.Q4_0, x)
    assert blocks[0, :2].view(np.float16)[0] == 1.0
    assert blocks[0, 2:6].tolist() == [0 | 13 << 4, 15 | 8 << 4, 11 | 8 << 4, 6 | 8 << 4]
