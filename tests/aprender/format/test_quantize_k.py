"""aprender.format.quantize_k (Q4_K, Q5_K, Q6_K) and the search helpers of quant_search, against llama.cpp.

The oracle (``llamacpp`` tests, skipped without llama-cpp-python): ``ggml_quantize_chunk`` of the built ggml
library (`fixtures.ggml_quants.ggml_quantize`), with and without an importance matrix, on random data of several
kinds and on whole SmolLM2 tensors. A block passes when its bytes are identical; at least 99.9% must, and any
other block must reconstruct (after our `dequantize`) with a squared error within 1e-6 relative of llama.cpp's.
The other tests run everywhere: the float32 semantics the helpers reproduce (ties to even, sums in C order, true
division, correctly rounded sqrt), the searches on blocks they fit exactly, round-trip errors, zero rows, shapes.
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
from aprender.format.quant_search import (
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    rdiv,
    sequential_sum,
    sqrtf,
)
from aprender.format.quantize_k import quantize_q4_k, quantize_q5_k, quantize_q6_k
from fixtures.ggml_quants import assert_like_llama_cpp
from fixtures.threads import torch_threads

Quantizer = Callable[[torch.Tensor, torch.Tensor | None], np.ndarray]
QUANTIZERS: dict[T, Quantizer] = {T.Q4_K: quantize_q4_k, T.Q5_K: quantize_q5_k, T.Q6_K: quantize_q6_k}
KINDS = ("normal", "heavy_tailed", "sparse_blocks", "tiny", "constant_rows", "large", "small_integers")


def _data(kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, 1024) test data of one kind (each row: four 256-value super-blocks)."""
    shape = (8, 1024)
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "heavy_tailed":  # Student-t with 2 degrees of freedom, plus 1% outliers 100x larger
        x = rng.standard_t(2, shape)
        return (x * np.where(rng.random(shape) < 0.01, 100.0, 1.0)).astype(np.float32)
    if kind == "sparse_blocks":  # zero sub-blocks and super-blocks, and ones with a single non-zero value
        x = np.zeros(shape, np.float32)
        x.reshape(-1, 32)[::3, 5] = rng.standard_normal(86).astype(np.float32)
        x[0] = rng.standard_normal(1024)
        return x
    if kind == "tiny":  # fp16 d and dmin underflow to zero: sub-blocks keep the search's levels
        return (rng.standard_normal(shape) * 1e-8).astype(np.float32)
    if kind == "constant_rows":
        return np.repeat(rng.standard_normal((8, 1)).astype(np.float32), 1024, axis=1)
    if kind == "large":  # fp16 scales up to and beyond 65504 (inf)
        scale = np.array([1e2, 1e4, 1e6, 1e7])[rng.integers(0, 4, (8, 1))]
        return (rng.standard_normal(shape) * scale).astype(np.float32)
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
    """Whole tensors of the real model; rows of 576 are not whole super-blocks, so they are read as rows of 2304."""
    state = load_file(smollm2_hf_dir / "model.safetensors")
    rng = np.random.default_rng(3)
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.embed_tokens.weight",
    ):
        x = state[name].float().numpy()
        x = x if x.shape[1] % 256 == 0 else x.reshape(-1, 2304)
        assert_like_llama_cpp(qtype, x, None)
        assert_like_llama_cpp(qtype, x[:1024], _imatrix(x.shape[1], rng))


def test_nearest_int_rounds_half_to_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999998, -4194303.0])
    assert nearest_int(x).tolist() == [0, 2, 2, 0, -2, -2, 3, -4194303]


def test_sequential_sum_adds_in_c_order() -> None:
    """((0 + 1e8) + 1) rounds to 1e8 in float32, - 1e8 gives 0, + 1 gives 1; a pairwise sum gives 0."""
    values = torch.tensor([[1e8, 1.0, -1e8, 1.0]])
    assert sequential_sum(values).tolist() == [1.0]
    assert sequential_sum(values.t(), dim=0).tolist() == [1.0]
    assert sequential_sum(values[:, 1:], start=values[:, 0]).tolist() == [1.0]
    assert (values[:, :2].sum() + values[:, 2:].sum()).item() == 0.0


def test_rdiv_and_sqrtf_round_like_c() -> None:
    """IEEE float32 results, as numpy computes them; torch's own `63 / t` and float32 sqrt are off at times."""
    x = torch.rand(4096) * 100 + 0.01
    expected_div = np.float32(63) / x.numpy()
    np.testing.assert_array_equal(rdiv(63.0, x).numpy(), expected_div)
    assert ((63.0 / x).numpy() != expected_div).any()
    np.testing.assert_array_equal(sqrtf(x).numpy(), np.sqrt(x.numpy()))


def test_make_qx_quants_fits_a_grid_exactly() -> None:
    """x = l / 4 for l in [-8, 7]: max = -2, iscale = -32 / -2 = 16, levels 4 * l (+ 32), scale exactly 1/16.
    No other step can beat an exact fit. An all-zero block gets scale 0 and levels 0."""
    levels = torch.arange(-8, 8)
    x = torch.stack([levels / 4, torch.zeros(16)])
    for weights in (None, torch.rand(2, 16) + 0.5):
        scale, codes = make_qx_quants(x, 32, weights)
        assert scale.tolist() == [1 / 16, 0.0]
        assert codes.tolist() == [(4 * levels + 32).tolist(), [0] * 16]


@pytest.mark.parametrize("search", [make_qkx2_quants, make_qkx3_quants])
def test_make_qkx_quants_fits_an_affine_grid_exactly(search: Callable[..., tuple[torch.Tensor, ...]]) -> None:
    """x = 0.5 * q - 1 for q in [0, 15]: min -1, iscale = 15 / 7.5 = 2, levels q, scale 0.5, the_min 1, error 0.
    A constant negative block has max == min: scale 0, the_min = -min = 2, levels 0."""
    q = torch.arange(16)
    x = torch.stack([0.5 * q - 1, torch.full((16,), -2.0)])
    scale, the_min, levels = search(x, 15, torch.rand(2, 16) + 0.5, -1.0, 0.1, 20, False)
    assert scale.tolist() == [0.5, 0.0]
    assert the_min.tolist() == [1.0, 2.0]
    assert levels.tolist() == [q.tolist(), [0] * 16]
    assert torch.equal(make_qkx3_quants(x, 15, None, -0.9, 0.05, 36, True)[2], levels)


def test_make_qp_quants_fits_multiples_exactly() -> None:
    """x = 9 * i, i in [0, 7], nmax 63: iscale = 63 / 63 = 1, levels x, scale 1. Values below 1e-15: all zero."""
    x = torch.stack([9.0 * torch.arange(8), torch.full((8,), 1e-16)])
    scale, levels = make_qp_quants(x, 63, torch.rand(2, 8) + 0.5)
    assert scale.tolist() == [1.0, 0.0]
    assert levels.tolist() == [list(range(0, 64, 9)), [0] * 8]


def test_q6_k_reproduces_quarter_steps_exactly() -> None:
    """Values l / 4, l in [-32, 31], each 16-value sub-block starting with -8: make_qx_quants finds iscale
    -32 / -8 = 4 and scale 1/4 everywhere, so d = 1/(-512) and every 8-bit scale is -128; dequantizing gives the
    input back bit for bit."""
    levels = torch.randint(-32, 32, (1, 256), generator=torch.Generator().manual_seed(0))
    levels[:, ::16] = -32
    x = levels / 4
    blocks = quantize_q6_k(x)
    assert blocks[0, 208:].view(np.float16)[0] == np.float16(-1 / 512)
    assert blocks[0, 192:208].view(np.int8).tolist() == [-128] * 16
    assert torch.equal(dequantize(blocks, T.Q6_K, (1, 256)), x)


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_round_trip_error_is_bounded(qtype: T, with_imatrix: bool) -> None:
    """Relative RMS error of normal weights, measured: Q4_K 0.071, Q5_K 0.036, Q6_K 0.018 (with an imatrix weighting
    even columns 100x more: 0.076, 0.037, 0.019). The imatrix moves error to the light columns: the heavy ones'
    mean squared error is 0.52-0.65x the light ones' (1.0 without)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    imatrix = np.where(np.arange(512) % 2 == 0, 10.0, 0.1).astype(np.float32) if with_imatrix else None
    error = (dequantize(_quantize(qtype, x, imatrix), qtype, x.shape).numpy() - x) ** 2
    bound = {T.Q4_K: 0.085, T.Q5_K: 0.042, T.Q6_K: 0.021}[qtype]
    assert np.sqrt(error.mean() / (x**2).mean()) < bound
    ratio = error[:, ::2].mean() / error[:, 1::2].mean()
    assert ratio < 0.75 if with_imatrix else 0.9 < ratio < 1.1


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_zero_rows_give_zero_blocks(qtype: T, with_imatrix: bool) -> None:
    """ggml writes all-zero K-blocks for zero input (read from ggml_quantize_chunk), with or without an imatrix."""
    x = np.zeros((2, 512), np.float32)
    blocks = _quantize(qtype, x, np.ones(512, np.float32) if with_imatrix else None)
    assert blocks.shape == (2, 2 * GGML_QUANT_SIZES[qtype][1])
    assert not blocks.any()


@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_chunks_of_rows_give_the_same_bytes(qtype: T, monkeypatch: pytest.MonkeyPatch) -> None:
    """ggml quantizes each row on its own, so chunking the rows (here one or two rows a chunk) changes nothing."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 512)).astype(np.float32)
    imatrix = _imatrix(512, rng)
    whole = [_quantize(qtype, x), _quantize(qtype, x, imatrix)]
    monkeypatch.setattr(quant_search, "CHUNK_VALUES", 1024)
    np.testing.assert_array_equal(_quantize(qtype, x), whole[0])
    np.testing.assert_array_equal(_quantize(qtype, x, imatrix), whole[1])
    assert _quantize(qtype, x[:0]).shape == (0, 512 // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1])


@pytest.mark.parametrize(
    ("shape", "imatrix_size", "message"),
    [
        ((256,), None, r"takes \(rows, n_per_row\) values, got shape \(256,\)"),
        ((2, 576), None, "rows hold whole blocks of 256 values, but rows have 576"),
        ((2, 512), 256, r"one weight per column, shape \(512,\); got \(256,\)"),
    ],
    ids=["1-D", "partial block", "imatrix size"],
)
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_bad_shapes_raise_format_error(
    qtype: T, shape: tuple[int, ...], imatrix_size: int | None, message: str
) -> None:
    imatrix = None if imatrix_size is None else torch.ones(imatrix_size)
    with pytest.raises(FormatError, match=message) as info:
        QUANTIZERS[qtype](torch.zeros(shape), imatrix)
    assert "\n" not in str(info.value)
