"""The one place the model's linear layers are built.

Every projection (q/k/v/o, gate/up/down and an untied LM head) is created by a `LinearFactory`
called with the layer's full module path, e.g. ``"model.layers.3.self_attn.q_proj"``. The default
builds `torch.nn.Linear`; a LoRA or QLoRA factory returns its own module for the paths it targets, so
the adapter is chosen when the model is built (torchtune's component builders:
https://github.com/pytorch/torchtune/blob/main/torchtune/models/llama3/_component_builders.py).

A factory's module must keep the ``weight`` (and ``bias``) names so base checkpoints load unchanged.
Tensors it adds that no checkpoint holds (LoRA's A and B) it declares as `SelfInitializing`:
`from_pretrained` materialises exactly those and then calls ``initialize_parameters()``; any other
tensor the checkpoint lacks is an error.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["LinearFactory", "SelfInitializing", "make_linear"]


class LinearFactory(Protocol):
    """Builds the module for one projection: ``(name, in_features, out_features, bias) -> nn.Module``."""

    def __call__(self, name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        """Return a module mapping (..., in_features) to (..., out_features).

        Args:
            name: Full module path in the model, e.g. ``"model.layers.0.mlp.up_proj"`` or ``"lm_head"``.
            in_features: Input width.
            out_features: Output width.
            bias: Whether the projection has a bias.
        """
        ...


@runtime_checkable
class SelfInitializing(Protocol):
    """A module that creates some of its tensors itself: no checkpoint holds them, and it initialises them."""

    def initialized_tensor_names(self) -> tuple[str, ...]:
        """Names of those tensors, relative to the module (e.g. ``("lora_A", "lora_B")``)."""
        ...

    def initialize_parameters(self) -> None:
        """Initialise those tensors; called once every other tensor of the module holds its loaded value."""
        ...


def make_linear(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
    """The default factory: a plain `torch.nn.Linear` for every projection.

    Args:
        name: Module path (unused by the plain factory: every projection is the same kind).
        in_features: Input width.
        out_features: Output width.
        bias: Whether to add a bias.

    Returns:
        ``nn.Linear(in_features, out_features, bias=bias)`` on the current default device and dtype.
    """
    del name
    return nn.Linear(in_features, out_features, bias=bias)
