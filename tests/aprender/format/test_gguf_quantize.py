"""aprender.format.gguf_quantize: one entry point over our quantizers (each checked against llama.cpp in its own
tests); the unquantized types give the gguf package's bytes; the caller's thread count is kept."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

from aprender.errors import FormatError
from aprender.format import quantize_k, quantize_k_low, quantize_legacy
from aprender.format.gguf_quantize import QUANTIZED_TYPES, quantize_rows, row_bytes

VALUES = torch.randn(4, 512, generator=torch.Generator().manual_seed(0))
IMATRIX = torch.rand(512, generator=torch.Generator().manual_seed(1)) + 0.1


@pytest.mark.parametrize("ggml_type", QUANTIZED_TYPES, ids=lambda t: t.name)
def test_each_type_goes_to_its_quantizer(ggml_type: T) -> None:
    module = next(
        m for m in (quantize_legacy, quantize_k, quantize_k_low) if hasattr(m, f"quantize_{ggml_type.name.lower()}")
    )
    quantizer = getattr(module, f"quantize_{ggml_type.name.lower()}")
    for imatrix in (None, IMATRIX):
        got = quantize_rows(VALUES, ggml_type, imatrix)
        assert np.array_equal(got, quantizer(VALUES, imatrix)) and got.shape == (4, row_bytes(ggml_type, 512))


@pytest.mark.parametrize("ggml_type", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_unquantized_types_round_as_ggml(ggml_type: T) -> None:
    ours = quantize_rows(VALUES, ggml_type)
    theirs = gguf.quants.quantize(VALUES.numpy(), ggml_type)
    assert ours.tobytes() == theirs.tobytes() and ours.shape == (4, row_bytes(ggml_type, 512))
    assert quantize_rows(VALUES[0], ggml_type).tobytes() == theirs[0].tobytes()  # a 1-D tensor (norms)


def test_other_types_are_refused_and_threads_are_restored() -> None:
    with pytest.raises(FormatError, match=r"GGML type IQ2_XXS is not one we write; use one of F32, F16, BF16, Q4_0"):
        quantize_rows(VALUES, T.IQ2_XXS)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        quantize_rows(VALUES, T.Q4_K)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
