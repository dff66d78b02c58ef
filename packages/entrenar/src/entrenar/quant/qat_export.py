"""What exporting a quantization-aware-trained model does to the rounding it trained for, in one line.

A ``qat:`` run records its format in ``final_model.json`` (`entrenar.train.qat.qat_record`). ``entrenar publish
--format gguf`` and ``entrenar quantize`` say, for each GGUF file they write from such a model, whether it stores
every weight with the quantizer the run trained with: the same GGUF file type without an importance matrix does
(`entrenar.train.qat` rounds with the exporter's own code), another type or calibration does not. Publishing a QAT
model whose format is a GGUF type writes that type when no ``--gguf-type`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from entrenar.constants import QAT_NON_GGUF_FORMATS

__all__ = ["export_line", "trained_format", "trained_gguf_type"]


def trained_format(record: Mapping[str, Any]) -> str | None:
    """The ``qat.format`` of a training record (``final_model.json``), or None without QAT."""
    qat = record.get("qat")
    if not isinstance(qat, Mapping) or not isinstance(qat.get("format"), str):
        return None
    return str(qat["format"])


def trained_gguf_type(record: Mapping[str, Any]) -> str | None:
    """The GGUF file type a QAT model trained for, or None (no QAT, or an nf4/int8/int4 format)."""
    fmt = trained_format(record)
    return None if fmt is None or fmt in QAT_NON_GGUF_FORMATS else fmt


def export_line(record: Mapping[str, Any], gguf_type: str, *, calibrated: bool = False) -> str | None:
    """What a GGUF file of type `gguf_type` keeps of the model's QAT; None for a model without QAT.

    Args:
        record: The model's ``final_model.json``.
        gguf_type: The file type written (any case).
        calibrated: Whether an importance matrix weighs the quantization.
    """
    fmt = trained_format(record)
    if fmt is None:
        return None
    written = gguf_type.upper()
    if fmt != gguf_type.lower():
        keep = f"; write {fmt} to keep them" if fmt not in QAT_NON_GGUF_FORMATS else ""
        return (
            f"note: the model was trained for {fmt} (qat:), so {written} rounds its weights differently from what it "
            f"trained for{keep}"
        )
    if calibrated:
        return (
            f"note: the model was trained for {written} without an importance matrix; --calibration rounds its weights "
            "differently from what it trained for (drop --calibration to keep them)"
        )
    return f"qat: {written} stores every weight with the quantizer the model trained with (qat.format {fmt})"
