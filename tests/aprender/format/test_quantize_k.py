"""aprender.format.quantize_k (Q4_K, Q5_K, Q6_K) and the search helpers of quant_search; and, for every quantized
type (`aprender.format.gguf_quantize.QUANTIZED_TYPES`: quantize_legacy's and quantize_k_low's too), the checks the
types share.

The oracle (``llamacpp`` tests, skipped without llama-cpp-python): ``ggml_quantize_chunk`` of the built ggml
library (`fixtures.ggml_quants.ggml_quantize`), with and without an importance matrix, on random data of every
kind of `fixtures.ggml_quants.random_rows` and on whole SmolLM2 tensors. A block passes when its bytes are
identical; at least 99.9% must, and any other block must reconstruct (after our `dequantize`) with a squared error
within 1e-6 relative of llama.cpp's (`fixtures.ggml_quants.assert_like_llama_cpp`).
The other tests run everywhere: for every type, bounded round-trip errors, ggml's all-zero blocks, chunks of rows,
shapes; for the K-types, the float32 semantics the helpers reproduce (ties to even, sums in C order, true
division, correctly rounded sqrt), the searches on blocks they fit exactly, Q6_K bytes by hand. Each type's own
checks are in test_quantize_legacy and test_quantize_k_low.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from safetensors import safe_open

from aprender.errors import FormatError
from aprender.format import quant_search, quantize_k, quantize_k_low, quantize_legacy
from aprender.format.gguf_quantize import QUANTIZED_TYPES, row_bytes
from aprender.format.gguf_quants import dequantize
from fixtures.ggml_quants import DATA_KINDS, assert_like_llama_cpp, our_bytes, random_imatrix, random_rows

Quantizer = Callable[[torch.Tensor, torch.Tensor | None], np.ndarray]
QUANTIZERS: dict[T, Quantizer] = {
    T[name.removeprefix("quantize_").upper()]: getattr(module, name)
    for module in (quantize_legacy, quantize_k_low, quantize_k)
    for name in module.__all__
    if name.startswith("quantize_")
}
"""The quantizer modules' own functions, by type."""
TYPES = list(QUANTIZED_TYPES)
SMOLLM2_TENSORS = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.embed_tokens.weight",
)


def test_every_quantized_type_has_its_module_function() -> None:
    assert list(QUANTIZERS) == TYPES


@pytest.mark.llamacpp
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_equal_llama_cpp_on_random_data(qtype: T, kind: str, with_imatrix: bool) -> None:
    rng = np.random.default_rng(17)
    x = random_rows(kind, rng)
    assert_like_llama_cpp(qtype, x, random_imatrix(x.shape[1], rng) if with_imatrix else None)


@pytest.fixture(scope="module")
def smollm2_tensors(smollm2_hf_dir: Path) -> dict[str, np.ndarray]:
    """`SMOLLM2_TENSORS` of the real model, float32."""
    with safe_open(smollm2_hf_dir / "model.safetensors", "pt") as file:
        return {name: file.get_tensor(name).float().numpy() for name in SMOLLM2_TENSORS}


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_equal_llama_cpp_on_smollm2(qtype: T, with_imatrix: bool, smollm2_tensors: dict[str, np.ndarray]) -> None:
    """Layer 0's q_proj and down_proj and the embedding (28 M values), whole, as rows of 576, or of 2304 = 4 * 576
    where 576 is not whole blocks (the K-types); with an imatrix, the first 2**22 values of each, as the searches
    over the whole embedding would take minutes for all types."""
    rng = np.random.default_rng(3)
    for x in smollm2_tensors.values():
        x = x if x.shape[1] % GGML_QUANT_SIZES[qtype][0] == 0 else x.reshape(-1, 2304)
        if with_imatrix:
            x = x[: 2**22 // x.shape[1]]
        assert_like_llama_cpp(qtype, x, random_imatrix(x.shape[1], rng) if with_imatrix else None)


ROUND_TRIP_BOUNDS = {
    T.Q4_0: 0.095,
    T.Q4_1: 0.085,
    T.Q5_0: 0.05,
    T.Q5_1: 0.04,
    T.Q8_0: 0.006,
    T.Q2_K: 0.34,
    T.Q3_K: 0.175,
    T.Q4_K: 0.085,
    T.Q5_K: 0.042,
    T.Q6_K: 0.021,
}


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_round_trip_error_is_bounded(qtype: T, with_imatrix: bool) -> None:
    """Relative RMS error of normal weights after our `dequantize`, measured without an imatrix: Q4_0 0.086,
    Q4_1 0.078, Q5_0 0.042, Q5_1 0.038, Q8_0 0.005, Q2_K 0.30, Q3_K 0.15, Q4_K 0.071, Q5_K 0.036, Q6_K 0.018; an
    imatrix weighting even columns 100x more changes that by 0.008 at most but moves error to the light columns:
    the heavy ones' mean squared error is 0.37-0.68x the light ones' (1.0 without, and for Q8_0, which ignores it)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    imatrix = np.where(np.arange(512) % 2 == 0, 10.0, 0.1).astype(np.float32) if with_imatrix else None
    error = (dequantize(our_bytes(qtype, x, imatrix), qtype, x.shape).numpy() - x) ** 2
    assert np.sqrt(error.mean() / (x**2).mean()) < ROUND_TRIP_BOUNDS[qtype]
    ratio = error[:, ::2].mean() / error[:, 1::2].mean()
    assert ratio < 0.75 if with_imatrix and qtype != T.Q8_0 else 0.9 < ratio < 1.1


# ggml's bytes for an all-zero block, read from ggml_quantize_chunk: the round-to-nearest Q4_0/Q5_0 compute
# d = 0 / -8 = -0.0 (fp16 0x8000) and code 8 (16) for every zero; their imatrix searches and the other types
# write zeros.
ZERO_BLOCKS = {
    T.Q4_0: [0x00, 0x80] + [0x88] * 16,
    T.Q5_0: [0x00, 0x80, 0xFF, 0xFF, 0xFF, 0xFF] + [0x00] * 16,
}


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_zero_rows_give_ggml_zero_blocks(qtype: T, with_imatrix: bool) -> None:
    block, size = GGML_QUANT_SIZES[qtype]
    x = np.zeros((2, 512), np.float32)
    blocks = our_bytes(qtype, x, np.ones(512, np.float32) if with_imatrix else None)
    expected = [0] * size if with_imatrix or qtype not in ZERO_BLOCKS else ZERO_BLOCKS[qtype]
    assert blocks.reshape(-1, size).tolist() == [expected] * (x.size // block)
    assert not dequantize(blocks, qtype, x.shape).any()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_chunks_of_rows_give_the_same_bytes(qtype: T, monkeypatch: pytest.MonkeyPatch) -> None:
    """ggml quantizes each row on its own, so chunking the rows (`quant_search.CHUNK_VALUES`; here two rows a
    chunk) changes nothing."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 512)).astype(np.float32)
    imatrix = random_imatrix(512, rng)
    whole = [our_bytes(qtype, x), our_bytes(qtype, x, imatrix)]
    monkeypatch.setattr(quant_search, "CHUNK_VALUES", 1024)
    np.testing.assert_array_equal(our_bytes(qtype, x), whole[0])
    np.testing.assert_array_equal(our_bytes(qtype, x, imatrix), whole[1])
    assert our_bytes(qtype, x[:0]).shape == (0, row_bytes(qtype, 512))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_output_shape_and_dtype(qtype: T) -> None:
    """float16/bfloat16 input is read as float32; the result is (rows, n_per_row / block size * type size) uint8."""
    out = QUANTIZERS[qtype](torch.randn(3, 512, dtype=torch.bfloat16), None)
    assert out.dtype == np.uint8
    assert out.shape == (3, row_bytes(qtype, 512))


@pytest.mark.parametrize("case", ["1-D", "partial block", "empty rows", "imatrix size"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bad_shapes_raise_format_error(qtype: T, case: str) -> None:
    block = GGML_QUANT_SIZES[qtype][0]
    shape, imatrix_size, message = {
        "1-D": ((block,), None, rf"takes \(rows, n_per_row\) values, got shape \({block},\)"),
        "partial block": (
            (2, block + 16),
            None,
            f"rows hold whole blocks of {block} values, but rows have {block + 16}",
        ),
        "empty rows": ((2, 0), None, f"rows hold whole blocks of {block} values, but rows have 0"),
        "imatrix size": ((2, 2 * block), block, rf"one weight per column, shape \({2 * block},\); got \({block},\)"),
    }[case]
    imatrix = None if imatrix_size is None else torch.ones(imatrix_size)
    with pytest.raises(FormatError, match=message) as info:
        QUANTIZERS[qtype](torch.zeros(shape), imatrix)
    assert "\n" not in str(info.value)


def test_nearest_int_rounds_half_to_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999998, -4194303.0])
    assert quant_search.nearest_int(x).tolist() == [0, 2, 2, 0, -2, -2, 3, -4194303]


def test_sequential_sum_adds_in_c_order() -> None:
    """((0 + 1e8) + 1) rounds to 1e8 in float32, - 1e8 gives 0, + 1 gives 1; a pairwise sum gives 0."""
    values = torch.tensor([[1e8, 1.0, -1e8, 1.0]])
    assert quant_search.sequential_sum(values).tolist() == [1.0]
    assert quant_search.sequential_sum(values.t(), dim=0).tolist() == [1.0]
    assert quant_search.sequential_sum(values[:, 1:], start=values[:, 0]).tolist() == [1.0]
    assert (values[:, :2].sum() + values[:, 2:].sum()).item() == 0.0


def test_rdiv_and_sqrtf_round_like_c() -> None:
    """IEEE float32 results, as numpy computes them; torch's own `63 / t` and float32 sqrt are off at times."""
    x = torch.rand(4096) * 100 + 0.01
    expected_div = np.float32(63) / x.numpy()
    np.testing.assert_array_equal(quant_search.rdiv(63.0, x).numpy(), expected_div)
    assert ((63.0 / x).numpy() != expected_div).any()
    np.testing.assert_array_equal(quant_search.sqrtf(x).numpy(), np.sqrt(x.numpy()))


def test_make_qx_quants_fits_a_grid_exactly() -> None:
    """x = l / 4 for l in [-8, 7]: max = -2, iscale = -32 / -2 = 16, levels 4 * l (+ 32), scale exactly 1/16.
    No other step can beat an exact fit. An all-zero block gets scale 0 and levels 0."""
    levels = torch.arange(-8, 8)
    x = torch.stack([levels / 4, torch.zeros(16)])
    for weights in (None, torch.rand(2, 16) + 0.5):
        scale, codes = quant_search.make_qx_quants(x, 32, weights)
        assert scale.tolist() == [1 / 16, 0.0]
        assert codes.tolist() == [(4 * levels + 32).tolist(), [0] * 16]


@pytest.mark.parametrize("search", [quant_search.make_qkx2_quants, quant_search.make_qkx3_quants])
def test_make_qkx_quants_fits_an_affine_grid_exactly(search: Callable[..., tuple[torch.Tensor, ...]]) -> None:
    """x = 0.5 * q - 1 for q in [0, 15]: min -1, iscale = 15 / 7.5 = 2, levels q, scale 0.5, the_min 1, error 0.
    A constant negative block has max == min: scale 0, the_min = -min = 2, levels 0."""
    q = torch.arange(16)
    x = torch.stack([0.5 * q - 1, torch.full((16,), -2.0)])
    scale, the_min, levels = search(x, 15, torch.rand(2, 16) + 0.5, -1.0, 0.1, 20, False)
    assert scale.tolist() == [0.5, 0.0]
    assert the_min.tolist() == [1.0, 2.0]
    assert levels.tolist() == [q.tolist(), [0] * 16]
    assert torch.equal(quant_search.make_qkx3_quants(x, 15, None, -0.9, 0.05, 36, True)[2], levels)


def test_make_qp_quants_fits_multiples_exactly() -> None:
    """x = 9 * i, i in [0, 7], nmax 63: iscale = 63 / 63 = 1, levels x, scale 1. Values below 1e-15: all zero."""
    x = torch.stack([9.0 * torch.arange(8), torch.full((8,), 1e-16)])
    scale, levels = quant_search.make_qp_quants(x, 63, torch.rand(2, 8) + 0.5)
    assert scale.tolist() == [1.0, 0.0]
    assert levels.tolist() == [list(range(0, 64, 9)), [0] * 8]


def test_q6_k_reproduces_quarter_steps_exactly() -> None:
    """Values l / 4, l in [-32, 31], each 16-value sub-block starting with -8: make_qx_quants finds iscale
    -32 / -8 = 4 and scale 1/4 everywhere, so d = 1/(-512) and every 8-bit scale is -128; dequantizing gives the
    input back bit for bit."""
    levels = torch.randint(-32, 32, (1, 256), generator=torch.Generator().manual_seed(0))
    levels[:, ::16] = -32
    x = levels / 4
    blocks = quantize_k.quantize_q6_k(x)
    assert blocks[0, 208:].view(np.float16)[0] == np.float16(-1 / 512)
    assert blocks[0, 192:208].view(np.int8).tolist() == [-128] * 16
    assert torch.equal(dequantize(blocks, T.Q6_K, (1, 256)), x)
