"""entrenar.quant.int8: row-wise absmax int8."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.errors import QuantizationError
from entrenar.quant import dequantize_int8_rowwise, quantize_int8_rowwise


def test_hand_computed_rows() -> None:
    # Row 0: absmax 127 -> scale 1, values rounded half to even (3.5 -> 4, -50.4 -> -50).
    # Row 1: all zero -> scale 0, codes 0. Row 2: absmax 254 -> scale 2, 3 / 2 = 1.5 -> 2.
    weight = torch.tensor([[127.0, -50.4, 3.5], [0.0, 0.0, 0.0], [-254.0, 3.0, 100.0]])
    values, scales = quantize_int8_rowwise(weight)
    assert values.dtype == torch.int8 and scales.dtype == torch.float32
    assert scales.tolist() == [1.0, 0.0, 2.0]
    assert values.tolist() == [[127, -50, 4], [0, 0, 0], [-127, 2, 50]]
    assert dequantize_int8_rowwise(values, scales).tolist() == [[127, -50, 4], [0, 0, 0], [-254, 4, 100]]
    half = dequantize_int8_rowwise(values, scales, dtype=torch.float16)
    assert half.dtype == torch.float16 and half[2, 0].item() == -254.0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(1, 50), st.integers(0, 2**31 - 1), st.floats(1e-6, 1e6))
def test_error_bound(rows: int, cols: int, seed: int, magnitude: float) -> None:
    # |w - dq(q(w))| <= scale / 2 per value (round to nearest), plus float32 rounding of w / scale and q * scale.
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * magnitude
    values, scales = quantize_int8_rowwise(weight)
    error = (dequantize_int8_rowwise(values, scales) - weight).abs()
    assert torch.all(error <= scales[:, None] / 2 + 1e-6 * weight.abs().amax(1, keepdim=True))
    assert torch.equal(values.abs().amax(1), torch.full((rows,), 127, dtype=torch.int8))  # each row's max hits 127


def test_bfloat16_input() -> None:
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    values, scales = quantize_int8_rowwise(weight)
    torch.testing.assert_close(scales, weight.float().abs().amax(1) / 127, rtol=0, atol=0)
    assert values.shape == (4, 8)


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (torch.ones(3), "2-D float"),
        (torch.ones(2, 2, dtype=torch.int32), "2-D float"),
        (torch.ones(0, 3), "non-empty"),
        (torch.tensor([[1.0, float("inf")]]), "NaN or inf"),
        (torch.tensor([[1.0, float("nan")]]), "NaN or inf"),
    ],
)
def test_quantize_rejects(weight: torch.Tensor, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        quantize_int8_rowwise(weight)


def test_dequantize_rejects_mismatched_scales() -> None:
    values, scales = quantize_int8_rowwise(torch.randn(3, 4))
    with pytest.raises(QuantizationError, match=r"need scales of shape \(3,\), got \(2,\)"):
        dequantize_int8_rowwise(values, scales[:2])
    with pytest.raises(QuantizationError, match="need scales"):
        dequantize_int8_rowwise(values.view(-1), scales)
