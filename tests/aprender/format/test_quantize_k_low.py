"""aprender.format.quantize_k_low: Q2_K and Q3_K, the checks of these types alone.

What every quantized type shares is in test_quantize_k: the bytes against llama.cpp's (random data of every kind,
values whose squares overflow among them, and SmolLM2 tensors; with and without an importance matrix), the
round-trip error, all-zero rows, chunks of rows, shapes. Here, where they run everywhere: exactly representable
blocks, and `make_q3_quants` by hand and against its unrefined codes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

from aprender.format.gguf_quants import dequantize
from aprender.format.quantize_k_low import make_q3_quants, quantize_q2_k, quantize_q3_k


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
