"""float32 rows -> the bytes a GGUF file stores for a GGML type: one entry point over our quantizers.

Every quantizer is ours (`aprender.format.quantize_legacy`, `quantize_k`, `quantize_k_low`), a vectorised port
of llama.cpp's reference code giving the same bytes (``ggml-quants.c``: without an importance matrix the
``quantize_row_*_ref`` functions, with one the importance-weighted searches ``llama-quantize --imatrix`` runs).
The unquantized types round as ggml does: F16 and BF16 to nearest even.

The quantizers run many small elementwise steps per block; torch's intra-op threads only add synchronisation to
them (on a 2-core machine two threads took 5 to 30 times the time of one), so they run on one thread and the
caller's setting is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from aprender.errors import FormatError
from aprender.format.quantize_k import quantize_q4_k, quantize_q5_k, quantize_q6_k
from aprender.format.quantize_k_low import quantize_q2_k, quantize_q3_k
from aprender.format.quantize_legacy import quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1, quantize_q8_0

__all__ = ["QUANTIZED_TYPES", "quantize_rows", "row_bytes"]

_T = GGMLQuantizationType
_Quantizer = Callable[[torch.Tensor, "torch.Tensor | None"], np.ndarray]
_QUANTIZERS: dict[GGMLQuantizationType, _Quantizer] = {
    _T.Q4_0: quantize_q4_0,
    _T.Q4_1: quantize_q4_1,
    _T.Q5_0: quantize_q5_0,
    _T.Q5_1: quantize_q5_1,
    _T.Q8_0: quantize_q8_0,
    _T.Q2_K: quantize_q2_k,
    _T.Q3_K: quantize_q3_k,
    _T.Q4_K: quantize_q4_k,
    _T.Q5_K: quantize_q5_k,
    _T.Q6_K: quantize_q6_k,
}
QUANTIZED_TYPES = tuple(_QUANTIZERS)
"""The block types we write."""


def row_bytes(ggml_type: GGMLQuantizationType, n_per_row: int) -> int:
    """Bytes of one row of `n_per_row` values."""
    block, size = GGML_QUANT_SIZES[ggml_type]
    return n_per_row // block * size


def quantize_rows(
    values: torch.Tensor, ggml_type: GGMLQuantizationType, imatrix: torch.Tensor | None = None
) -> np.ndarray:
    """Encode rows as `ggml_type`.

    Args:
        values: (rows, n_per_row) or (n,) values, cast to float32.
        ggml_type: F32, F16, BF16 or one of `QUANTIZED_TYPES`.
        imatrix: (n_per_row,) importance of each column, for the quantized types (ignored by Q8_0, as ggml
            ignores it); None: the reference quantizers.

    Returns:
        The bytes as a uint8 array, rows times `row_bytes` long (for a 1-D tensor, its values' bytes).

    Raises:
        FormatError: A type we do not write, or rows that are not whole blocks.
    """
    x = values.detach().to(torch.float32).cpu()
    if ggml_type == _T.F32:
        return x.contiguous().numpy().view(np.uint8).reshape(*x.shape[:-1], -1)
    if ggml_type == _T.F16:
        return x.to(torch.float16).contiguous().numpy().view(np.uint8).reshape(*x.shape[:-1], -1)
    if ggml_type == _T.BF16:
        return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8).reshape(*x.shape[:-1], -1)
    quantizer = _QUANTIZERS.get(ggml_type)
    if quantizer is None:
        raise FormatError(
            f"GGML type {ggml_type.name} is not one we write; use one of F32, F16, BF16, "
            + ", ".join(t.name for t in QUANTIZED_TYPES)
        )
    rows = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    weights = None if imatrix is None else imatrix.detach().to(torch.float32).cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return quantizer(rows, weights)
    finally:
        torch.set_num_threads(threads)
