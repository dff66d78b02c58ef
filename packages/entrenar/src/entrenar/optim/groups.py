"""Parameter groups: no weight decay where it hurts, and a LoRA+ learning rate for LoRA B matrices.

Weight decay pulls weights toward zero. That regularizes matrices, but for a norm gain it pulls
the scale toward 0, for a bias it shifts activations, and for an embedding it shrinks the rows of
rare tokens that seldom get a gradient. Common practice (Loshchilov & Hutter 2019,
https://arxiv.org/abs/1711.05101; nanoGPT's ``configure_optimizers``) exempts them.

The rule: a trainable parameter gets ``weight_decay = 0`` when any of these holds, else the given one.

1. Its owning module is an embedding (``nn.Embedding``, ``nn.EmbeddingBag``) or a normalization
   layer (torch's batch/instance/layer/group/RMS/local-response norms, or any module whose class
   name ends in ``Norm``, such as transformers' ``LlamaRMSNorm``).
2. It has fewer than 2 dimensions (biases, norm gains, scalars).
3. Its name contains one of `NO_DECAY_NAMES`, compared case-insensitively.

LoRA+ (Hayou et al. 2024, https://arxiv.org/abs/2402.12354): the B matrices of LoRA adapters
(names containing ``lora_B``) learn ``lora_plus_ratio`` times faster than the rest (the paper uses
ratios around 16), which speeds up fine-tuning at the same cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from entrenar.errors import OptimizerError
from entrenar.optim._checks import check_real

NO_DECAY_NAMES: tuple[str, ...] = ("bias", "norm", "embed")

_EXEMPT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)


def _module_is_exempt(module: nn.Module) -> bool:
    """Rule 1: embeddings and normalization layers, by type or by a class name ending in ``Norm``."""
    return isinstance(module, _EXEMPT_MODULES) or type(module).__name__.lower().endswith("norm")


def decays(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """Whether a parameter gets weight decay under the module's rule (see the module docstring).

    Args:
        name: Full parameter name, e.g. ``"layers.0.mlp.up_proj.weight"``.
        param: The parameter.
        module: The module that owns it directly.

    Returns:
        True if the parameter should be decayed.
    """
    lowered = name.lower()
    exempt_by_name = any(pattern in lowered for pattern in NO_DECAY_NAMES)
    return not (_module_is_exempt(module) or param.ndim < 2 or exempt_by_name)


def build_param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    lr: float,
    lora_plus_ratio: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of `model` into optimizer parameter groups.

    Groups, in this order and only when not empty: decayed, not decayed, and with `lora_plus_ratio`
    the same two for LoRA B matrices at ``lr * lora_plus_ratio``. Each group holds ``params``,
    ``param_names``, ``lr`` and ``weight_decay``; frozen parameters are left out and tied
    (shared) parameters appear once.

    Args:
        model: The model.
        weight_decay: Decay for the parameters that take it, >= 0.
        lr: Base learning rate, >= 0.
        lora_plus_ratio: LoRA+ ratio for parameters whose name contains ``lora_B``, > 0; None keeps
            them at `lr`.

    Returns:
        Parameter groups for any `torch.optim.Optimizer`.

    Raises:
        OptimizerError: If an argument is out of range or the model has no trainable parameter.
    """
    check_real("build_param_groups", "weight_decay", weight_decay, low=0.0)
    check_real("build_param_groups", "lr", lr, low=0.0)
    if lora_plus_ratio is not None:
        check_real("build_param_groups", "lora_plus_ratio", lora_plus_ratio, low=0.0, low_open=True)
    # (is LoRA B, decays) -> names and tensors, in model order.
    buckets: dict[tuple[bool, bool], list[tuple[str, torch.Tensor]]] = {
        key: [] for key in ((False, True), (False, False), (True, True), (True, False))
    }
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for short, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{short}" if module_name else short
            lora_b = lora_plus_ratio is not None and "lora_B" in name
            buckets[(lora_b, decays(name, param, module))].append((name, param))
    if not seen:
        raise OptimizerError(
            "build_param_groups: the model has no trainable parameters (requires_grad=True); "
            "unfreeze some or add adapters."
        )
    groups = []
    for (lora_b, decayed), members in buckets.items():
        if members:
            groups.append(
                {
                    "params": [p for _, p in members],
                    "param_names": [n for n, _ in members],
                    "lr": lr * lora_plus_ratio if lora_b and lora_plus_ratio is not None else lr,
                    "weight_decay": weight_decay if decayed else 0.0,
                }
            )
    return groups
