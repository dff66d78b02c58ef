"""entrenar.quant.qat_export: what a GGUF file keeps of a model's quantization-aware training, by hand."""

from __future__ import annotations

from typing import Any

import pytest

from entrenar.quant.qat_export import export_line, trained_format, trained_gguf_type


@pytest.mark.parametrize(
    ("record", "fmt", "gguf"),
    [
        ({}, None, None),
        ({"qat": None}, None, None),
        ({"qat": {"format": 4}}, None, None),
        ({"qat": {"format": "q4_k_m"}}, "q4_k_m", "q4_k_m"),
        ({"qat": {"format": "int4"}}, "int4", None),
        ({"qat": {"format": "nf4"}}, "nf4", None),
    ],
)
def test_trained_format(record: dict[str, Any], fmt: str | None, gguf: str | None) -> None:
    assert (trained_format(record), trained_gguf_type(record)) == (fmt, gguf)


def test_export_lines() -> None:
    q4 = {"qat": {"format": "q4_k_m"}}
    assert export_line({}, "q4_k_m") is None
    assert export_line(q4, "Q4_K_M") == (
        "qat: Q4_K_M stores every weight with the quantizer the model trained with (qat.format q4_k_m)"
    )
    assert export_line(q4, "q4_k_m", calibrated=True) == (
        "note: the model was trained for Q4_K_M without an importance matrix; --calibration rounds its weights "
        "differently from what it trained for (drop --calibration to keep them)"
    )
    assert export_line(q4, "q8_0") == (
        "note: the model was trained for q4_k_m (qat:), so Q8_0 rounds its weights differently from what it trained "
        "for; write q4_k_m to keep them"
    )
    assert export_line({"qat": {"format": "int4"}}, "q4_0") == (
        "note: the model was trained for int4 (qat:), so Q4_0 rounds its weights differently from what it trained for"
    )
