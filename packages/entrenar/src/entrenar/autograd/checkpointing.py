"""Activation checkpointing policy: which layers drop their activations and recompute them in backward.

Checkpointing a block keeps only its inputs during the forward pass and reruns the block in backward to
rebuild what the gradient needs, trading one extra forward pass for activation memory that no longer grows
with the number of layers (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost",
https://arxiv.org/abs/1604.06174). Gradients are identical: the recomputation replays the same operations
with the same RNG state (``torch.utils.checkpoint`` with ``use_reentrant=False``, which also works when no
block input requires grad, e.g. a frozen embedding under LoRA).

Blocks are checkpointed in place: their ``forward`` is replaced on the instance, so module names and the
state dict stay as they were (checkpoints and PEFT adapters load unchanged). A model that has its own
``set_gradient_checkpointing(bool)`` switch is asked to use it when every layer is to be checkpointed.
Checkpointing applies only while grad mode is on; under ``torch.no_grad()`` (evaluation, generation with a
KV cache) blocks run normally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from entrenar.errors import GradientEngineError


@dataclass(frozen=True)
class CheckpointingPlan:
    """What `apply_activation_checkpointing` did.

    Attributes:
        method: "model" when the model's own ``set_gradient_checkpointing(True)`` was called, "wrap" when
            the blocks' forward passes were wrapped here.
        layers: Module paths of the checkpointed blocks, e.g. ``("model.layers.0", "model.layers.2")``
            (for "model": every block of the layer stack found, or () if none was found).
    """

    method: Literal["model", "wrap"]
    layers: tuple[str, ...]


class _CheckpointedForward:
    """A block's forward, run under ``torch.utils.checkpoint`` whenever grad mode is on."""

    def __init__(self, original: Any, had_instance_forward: bool) -> None:
        self.original = original
        self.had_instance_forward = had_instance_forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.original(*args, **kwargs)
        return checkpoint(self.original, *args, use_reentrant=False, **kwargs)


def find_layer_stack(model: nn.Module, layers_path: str | None = None) -> tuple[str, nn.Module]:
    """Find the container of the model's repeated blocks (the decoder layers).

    Args:
        model: The model.
        layers_path: Module path of the container, e.g. ``"model.layers"``; None: the `nn.ModuleList` (or
            `nn.Sequential`) with the most children, all of one class (the first such in module order).

    Returns:
        The container's path and the container.

    Raises:
        GradientEngineError: If `layers_path` names no `nn.ModuleList`/`nn.Sequential`, or none is found.
    """
    if layers_path is not None:
        try:
            stack = model.get_submodule(layers_path)
        except AttributeError as exc:
            raise GradientEngineError(
                f"layers_path={layers_path!r}: {type(model).__name__} has no such module"
            ) from exc
        if not isinstance(stack, nn.ModuleList | nn.Sequential):
            raise GradientEngineError(
                f"layers_path={layers_path!r} is a {type(stack).__name__}; name the nn.ModuleList of the blocks"
            )
        return layers_path, stack
    best: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        blocks = list(module.children())
        if not isinstance(module, nn.ModuleList | nn.Sequential) or not blocks:
            continue
        if len({type(b) for b in blocks}) == 1 and (best is None or len(blocks) > len(list(best[1].children()))):
            best = (name, module)
    if best is None:
        raise GradientEngineError(
            f"{type(model).__name__} has no nn.ModuleList of repeated blocks to checkpoint; pass layers_path"
        )
    return best


def apply_activation_checkpointing(
    model: nn.Module, *, every_n_layers: int = 1, layers_path: str | None = None
) -> CheckpointingPlan:
    """Turn on activation checkpointing for every `every_n_layers`-th block (idempotent: replaces a former plan).

    When ``every_n_layers == 1``, `layers_path` is None and the model has ``set_gradient_checkpointing``,
    that switch is used. Otherwise the blocks at indices 0, n, 2n, ... of the layer stack are wrapped (and
    the model's own switch, if any, is turned off so no block is checkpointed twice).

    Args:
        model: The model.
        every_n_layers: Checkpoint one block in n, >= 1 (1: all; larger: less recomputation, more memory).
        layers_path: Module path of the block container; None: found by `find_layer_stack`.

    Returns:
        The method used and the checkpointed blocks.

    Raises:
        GradientEngineError: If `every_n_layers` is not an integer >= 1 or no layer stack is found.
    """
    if not isinstance(every_n_layers, int) or isinstance(every_n_layers, bool) or every_n_layers < 1:
        raise GradientEngineError(f"every_n_layers={every_n_layers!r} must be an integer >= 1")
    remove_activation_checkpointing(model)
    switch = getattr(model, "set_gradient_checkpointing", None)
    if every_n_layers == 1 and layers_path is None and callable(switch):
        switch(True)
        try:
            path, stack = find_layer_stack(model)
        except GradientEngineError:
            return CheckpointingPlan(method="model", layers=())
        return CheckpointingPlan(method="model", layers=tuple(_child_paths(path, stack)))
    path, stack = find_layer_stack(model, layers_path)
    chosen: list[str] = []
    for index, (child_path, block) in enumerate(zip(_child_paths(path, stack), stack.children(), strict=True)):
        if index % every_n_layers == 0:
            had_instance_forward = "forward" in block.__dict__
            block.forward = _CheckpointedForward(block.forward, had_instance_forward)
            chosen.append(child_path)
    return CheckpointingPlan(method="wrap", layers=tuple(chosen))


def remove_activation_checkpointing(model: nn.Module) -> int:
    """Undo `apply_activation_checkpointing`: unwrap blocks and turn the model's own switch off.

    Args:
        model: The model.

    Returns:
        The number of blocks unwrapped (the model's switch is not counted).
    """
    switch = getattr(model, "set_gradient_checkpointing", None)
    if callable(switch):
        switch(False)
    unwrapped = 0
    for module in model.modules():
        wrapped = module.__dict__.get("forward")
        if isinstance(wrapped, _CheckpointedForward):
            if wrapped.had_instance_forward:
                module.forward = wrapped.original
            else:
                del module.__dict__["forward"]
            unwrapped += 1
    return unwrapped


def _child_paths(path: str, stack: nn.Module) -> list[str]:
    return [f"{path}.{name}" if path else name for name, _ in stack.named_children()]
