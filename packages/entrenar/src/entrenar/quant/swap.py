"""Swap a model's dense linear layers for frozen quantized ones, chosen by a filter (as torchao's `quantize_`).

``quantize_linears(model, "nf4", filter_fn=...)`` replaces, in place, every ``nn.Linear`` for which
``filter_fn(path, module)`` is true by an `NF4Linear` (optionally with double quantization) or an
`Int8Linear` built from its weight. QLoRA quantizes every linear layer but the LM head
(`not_output_head`), then adds adapters. On the ``meta`` device (size estimates) the quantized layers are
created empty with the same buffers.

After the swap, `release_checkpoint_pages` gives the tensors left their own memory, so a memory-mapped
checkpoint's pages (those of the replaced weights included) can leave RAM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from aprender.errors import InvalidArgumentError
from entrenar.constants import QUANT_TYPES
from entrenar.quant.linear import Int8Linear, NF4Linear

__all__ = ["QUANT_TYPES", "LinearFilter", "not_output_head", "quantize_linears", "release_checkpoint_pages"]

LinearFilter = Callable[[str, nn.Linear], bool]
"""``filter_fn(path, module)``: whether the linear layer at `path` is quantized."""

LM_HEAD = "lm_head"


def not_output_head(path: str, module: nn.Linear) -> bool:
    """The QLoRA filter: every linear layer but the LM head (it stays dense, as in bitsandbytes' QLoRA)."""
    return path != LM_HEAD


def quantize_linears(
    model: nn.Module, quant_type: str, *, filter_fn: LinearFilter = not_output_head, double_quant: bool = True
) -> list[str]:
    """Replace the ``nn.Linear`` layers `filter_fn` selects by frozen quantized layers, in place.

    Args:
        model: Any module.
        quant_type: ``"nf4"`` (https://arxiv.org/abs/2305.14314) or ``"int8"`` (row-wise absmax).
        filter_fn: Which layers to quantize (default: all but ``lm_head``).
        double_quant: NF4 only: also quantize the block scales.

    Returns:
        The paths of the replaced layers, in model order.

    Raises:
        InvalidArgumentError: An unknown `quant_type`.
    """
    if quant_type not in QUANT_TYPES:
        raise InvalidArgumentError(f"quant_type {quant_type!r} is not one of {', '.join(QUANT_TYPES)}")
    paths = [
        path
        for path, module in model.named_modules()
        if path and isinstance(module, nn.Linear) and filter_fn(path, module)
    ]
    for path in paths:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, leaf, _quantized(getattr(parent, leaf), quant_type, double_quant))
    return paths


def _quantized(dense: nn.Linear, quant_type: str, double_quant: bool) -> nn.Module:
    bias = None if dense.bias is None else dense.bias.detach()
    if dense.weight.is_meta:
        sizes = (dense.in_features, dense.out_features, bias is not None)
        if quant_type == "nf4":
            return NF4Linear(*sizes, double_quant=double_quant, device="meta")
        return Int8Linear(*sizes, device="meta")
    if quant_type == "nf4":
        return NF4Linear.from_weight(dense.weight.detach(), bias, double_quant=double_quant)
    return Int8Linear.from_weight(dense.weight.detach(), bias)


def release_checkpoint_pages(model: nn.Module) -> None:
    """Give every CPU parameter and buffer its own memory, so the checkpoint file's memory map can go.

    On the CPU the loader's tensors are views of the safetensors file's memory map, which stays mapped (its
    pages read so far resident, and counted in the process RSS) while any tensor from it lives. After
    `quantize_linears` the dense linear weights are gone, but the embedding and the norms would keep the
    map, and with it every page quantization read, alive: copying those few tensors frees about the dense
    linear weights' size (~400 MiB for SmolLM2-135M in float32).

    Args:
        model: The model, changed in place (parameters keep their identity).
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type == "cpu":
                param.data = param.data.clone()
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.device.type == "cpu":
                    module._buffers[name] = buffer.clone()
