"""Importance matrix: how much each input channel of each decoder linear layer matters, from calibration text.

What llama.cpp's ``llama-imatrix`` computes and ``llama-quantize --imatrix`` reads: for every weight matrix inside
the decoder layers, the mean over all calibration tokens of the squared input of each column, ``mean_t x_tj²``
(the sums over tokens divided by their count; ``tools/imatrix/imatrix.cpp`` keeps ``blk.*`` weights only, so the
embedding and the output head get none). The quantizers weight each column's rounding error by it (with the
block's own values: ``ggml-quants.c``), so channels that carry large activations are rounded more carefully.

The model runs unquantized, in float32, over the calibration windows (`entrenar.prune.calibration`, the same
windows ``entrenar prune`` draws) `BATCH` windows at a time; `aprender.pruning.CalibrationCollector` sums
``x²`` per input channel of every ``nn.Linear`` in ``model.layers``. Keys are GGUF tensor names
(``blk.0.attn_q.weight``), as ``llama-imatrix`` writes them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aprender.format.gguf_export import gguf_tensor_name
from aprender.pruning import CalibrationCollector
from entrenar.models import CausalLM

__all__ = ["BATCH", "collect_imatrix"]

BATCH = 8
"""Calibration windows per forward pass."""


@torch.no_grad()
def collect_imatrix(model: CausalLM, windows: Tensor, *, batch: int = BATCH) -> dict[str, Tensor]:
    """The importance matrix of `model` on the calibration windows (module docstring).

    Args:
        model: The unquantized model, in eval mode, on the device the work runs on.
        windows: Token ids, shape (samples, T).
        batch: Windows per forward pass (the result does not depend on it).

    Returns:
        GGUF tensor name -> float32 (in_features,) mean squared input, on the CPU.
    """
    collector = CalibrationCollector(model, lambda name, module: name.startswith("model.layers."), hessian=False)
    device = model.model.embed_tokens.weight.device
    with collector:
        for chunk in windows.split(batch):
            model.forward_hidden(chunk.to(device))
    return {
        gguf_tensor_name(f"{name}.weight"): (stats.sq_sum / stats.count).float().cpu()
        for name, stats in collector.stats.items()
    }
