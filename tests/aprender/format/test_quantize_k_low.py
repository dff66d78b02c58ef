"""aprender.format.quantize_k_low: Q2_K and Q3_K bytes equal llama.cpp's, block for block.

The oracle (``llamacpp`` tests, skipped without llama-cpp-python): ``ggml_quantize_chunk`` of the built ggml
library (`fixtures.ggml_quants.ggml_quantize`), with and without an importance matrix, on random data of
several kinds and on whole SmolLM2 tensors. A block passes when its bytes are identical; at least 99.9% must,
and any other block must reconstruct (after our `dequantize`) with a squared error within 1e-6 relative of
llama.cpp's. The other tests run everywhere and go through every code path of the module: a round trip
with a bounded error, exactly representable blocks, all-zero rows, the search helpers by hand, bad shapes.
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
from aprender.format import quantize_k_low
from aprender.format.gguf_quants import dequantize
from aprender.format.quantize_k_low import make_q3_quants, quantize_q2_k, quantize_q3_k
from fixtures.ggml_quants import assert_like_llama_cpp

Quantizer = Callable[[torch.Tensor, torch.Tensor | None], np.ndarray]
QUANTIZERS: dict[T, Quantizer] = {T.Q2_K: quantize_q2_k, T.Q3_K: quantize_q3_k}


def _data(kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, 1024) test data of one kind (each row: four 256-value blocks)."""
    if kind == "normal":
        return rng.standard_normal((32, 1024)).astype(np.float32)
    if kind == "heavy_tailed":  # Student-t with 2 degrees of freedom, plus 1% outliers 100x larger
        x = rng.standard_t(2, (32, 1024))
        return (x * np.where(rng.random(x.shape) < 0.01, 100.0, 1.0)).astype(np.float32)
    if kind == "sparse_blocks":  # whole zero blocks, and blocks with a single non-zero value
        x = np.zeros((16, 1024), np.float32)
        x.reshape(-1, 256)[::2, 37] = rng.standard_normal(32).astype(np.float32) * 3
        x[0] = rng.standard_normal(1024)
        return x
    if kind == "tiny":
        return (rng.standard_normal((16, 1024)) * 1e-8).astype(np.float32)
    if kind == "constant_rows":
        return np.repeat(rng.standard_normal((16, 1)).astype(np.float32), 1024, axis=1)
    if kind == "large":
        return (rng.standard_normal((16, 1024)) * 1e4).astype(np.float32)
    raise AssertionError(kind)


KINDS = ("normal", "heavy_tailed", "sparse_blocks", "tiny", "constant_rows", "large")


def _imatrix(n: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible importance matrix: mean squared activations, skewed, with a few dead (zero) columns."""
    weights = (rng.random(n) ** 3 * 10).astype(np.float32)
    weights[rng.random(n) < 0.05] = 0
    return weights


def _quantize(qtype: T, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
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
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_bytes_equal_llama_cpp_on_smollm2(qtype: T, with_imatrix: bool, smollm2_hf_dir: Path) -> None:
    """Layer 0's q_proj and down_proj and the embedding, whole (129 600 blocks); rows of 576 are not whole K-blocks,
    so each tensor is read as rows of 2304 = 4 * 576."""
    state = load_file(smollm2_hf_dir / "model.safetensors")
    rng = np.random.default_rng(3)
    tensors = {
        "q_proj": state["model.layers.0.self_attn.q_proj.weight"],
        "down_proj": state["model.layers.0.mlp.down_proj.weight"],
        "embed_tokens": state["model.embed_tokens.weight"],
    }
    for tensor in tensors.values():
        x = tensor.float().numpy().reshape(-1, 2304)
        assert_like_llama_cpp(qtype, x, _imatrix(x.shape[1], rng) if with_imatrix else None)


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize(("qtype", "bound"), [(T.Q2_K, 0.40), (T.Q3_K, 0.20)], ids=["Q2_K", "Q3_K"])
def test_round_trip_error_is_bounded(qtype: T, bound: float, with_imatrix: bool) -> None:
    """Relative RMS error of normal weights after our dequantize: measured 0.33 (Q2_K) and 0.15 (Q3_K) without an
    imatrix; an imatrix shifts the error between columns but not its size."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    imatrix = _imatrix(512, rng) + 0.1 if with_imatrix else None
    decoded = dequantize(_quantize(qtype, x, imatrix), qtype, x.shape)
    error = torch.linalg.vector_norm(decoded - torch.from_numpy(x)) / np.linalg.norm(x)
    assert 0.05 < float(error) < bound


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
def test_q3_k_reproduces_levels_times_a_power_of_two(with_imatrix: bool) -> None:
    """Values 0.25 * l, every l in [-4, 3] in each sub-block: scale 0.25, scale code 0 (-32), d = -0.25 / 32, exact."""
    levels = torch.arange(256) % 8 - 4
    x = (0.25 * levels).reshape(1, 256).float()
    imatrix = torch.linspace(0.5, 2.0, 256) if with_imatrix else None
    blocks = quantize_q3_k(x, imatrix)
    assert blocks.shape == (1, 110)
    assert blocks[0, 108:].view(np.float16)[0] == np.float16(-0.25 / 32)
    assert not blocks[0, 96:108].any()  # all 16 six-bit codes 0, i.e. -32 after the offset
    assert torch.equal(dequantize(blocks, T.Q3_K, (1, 256)), x)


def test_q2_k_levels_0_to_3() -> None:
    """Values l in [0, 3]: sub-block scale 1 and min 0, so every scale code is 15, d = fp16(1 / 15) = 0x2C44,
    dmin = 0, and the qs bytes carry the levels (l, l + 32, l + 64, l + 96 share l % 4: byte 85 * (l % 4))."""
    x = (torch.arange(256) % 4).reshape(1, 256).float()
    blocks = quantize_q2_k(x)
    assert blocks[0, :16].tolist() == [15] * 16
    assert blocks[0, 16:80].tolist() == [0, 85, 170, 255] * 16
    assert blocks[0, 80:].tolist() == [0x44, 0x2C, 0, 0]


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_all_zero_rows_give_zero_bytes(qtype: T, with_imatrix: bool) -> None:
    x = np.zeros((3, 512), np.float32)
    blocks = _quantize(qtype, x, np.ones(512, np.float32) if with_imatrix else None)
    assert blocks.shape == (3, 2 * GGML_QUANT_SIZES[qtype][1])
    assert not blocks.any()


@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_slices_of_rows_give_the_bytes_of_one_pass(qtype: T, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are quantized in slices of about `_CHUNK_BLOCKS` blocks; slices of 3 rows (6 blocks) change nothing."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 512)).astype(np.float32)
    imatrix = _imatrix(512, rng)
    whole = [_quantize(qtype, x, None), _quantize(qtype, x, imatrix)]
    monkeypatch.setattr(quantize_k_low, "_CHUNK_BLOCKS", 6)
    assert np.array_equal(_quantize(qtype, x, None), whole[0])
    assert np.array_equal(_quantize(qtype, x, imatrix), whole[1])
    assert _quantize(qtype, x[:0], None).shape == (0, 2 * GGML_QUANT_SIZES[qtype][1])


def test_make_q3_quants_by_hand() -> None:
    """0.5 * l for l = -4..3 (twice): the first largest magnitude is -2, so iscale = -4 / -2 = 2, the codes are
    exact (l + 4) and both scales are 0.5; an all-zero group gives scale 0 and codes 0."""
    x = torch.stack([0.5 * (torch.arange(16.0) % 8 - 4), torch.zeros(16)])
    for do_rmse in (True, False):
        scale, levels = make_q3_quants(x, 4, do_rmse=do_rmse)
        assert scale.tolist() == [0.5, 0.0]
        assert levels.tolist() == [list(range(8)) * 2, [0] * 16]


def test_make_q3_quants_refinement_lowers_the_weighted_error() -> None:
    """The coordinate descent never raises the x**2-weighted squared error of the starting codes, and lowers it
    for most random groups."""
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((500, 16)).astype(np.float32))

    def error(scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return (x * x * (scale.unsqueeze(-1) * (levels - 4) - x) ** 2).sum(dim=1)

    refined = error(*make_q3_quants(x, 4))
    plain = error(*make_q3_quants(x, 4, do_rmse=False))
    assert torch.all(refined <= plain * (1 + 1e-6))
    assert (refined < plain * 0.999).float().mean() > 0.9


@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("shape", "imatrix_len", "match"),
    [
        ((2, 300), None, "256"),
        ((512,), None, r"\(rows, n_per_row\)"),
        ((2, 512), 256, r"imatrix.*\(512,\)"),
    ],
)
def test_bad_shapes_raise(qtype: T, shape: tuple[int, ...], imatrix_len: int | None, match: str) -> None:
    imatrix = None if imatrix_len is None else torch.ones(imatrix_len)
    with pytest.raises(FormatError, match=match) as caught:
        QUANTIZERS[qtype](torch.zeros(shape), imatrix)
    assert "\n" not in str(caught.value)


@pytest.mark.llamacpp
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", list(QUANTIZERS), ids=lambda t: t.name)
def test_values_whose_squares_overflow(qtype: T, with_imatrix: bool) -> None:
    # ~1e19: sums of squares overflow to inf and Q3_K's sub-block scales become NaN, which ggml's `fabsf(x) > amax`
    # scan skips (quant_search.make_qx_quants must not pick them either)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 1024)) * 1e19).astype(np.float32)
    assert_like_llama_cpp(qtype, x, _imatrix(x.shape[1], rng) if with_imatrix else None)
