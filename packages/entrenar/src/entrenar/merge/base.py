"""What every merge method is: a pure function from one group of input tensors to one output tensor.

A merge (``entrenar merge``, mergekit's YAML) runs tensor by tensor. For each output tensor the executor
gathers one `TensorGroup`: the tensor of that name from each input model, in the config's order, with the
base model's marked (mergekit's ``TensorGroup``). The config's parameters are resolved for that tensor
(gradients over the layer position, ``filter`` matches, precedence of source, slice and global settings)
into a `ResolvedParameters`, and the method's ``merge`` function returns the merged tensor.

Methods live one per module in `entrenar.merge.methods` and are listed by name in its registry
(mergekit's ``merge_methods/``); each declares its parameters with `ParameterSpec` so the config can be
checked before anything is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "BasePolicy",
    "MergeFn",
    "MergeMethod",
    "ParameterSpec",
    "ParameterValue",
    "ResolvedParameters",
    "TensorGroup",
]

ParameterValue = float | bool
BasePolicy = Literal["required", "optional", "none"]
"""Whether a method needs ``base_model`` (task arithmetic, TIES ...), may use it (linear) or ignores it."""


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter a method takes, as mergekit's ``ParameterSpec``.

    Attributes:
        name: The YAML key (``weight``, ``density``, ``t`` ...).
        kind: ``float`` or ``bool``.
        per_input: True: one value per input model (mergekit's INPUT/NON_BASE scope: set under a model's
            ``parameters``, or globally for all); False: one value for the tensor (SHARED scope).
        default: The value when the config sets none; None: the config must set it.
    """

    name: str
    kind: type[float] | type[bool]
    per_input: bool
    default: ParameterValue | None = None


@dataclass(frozen=True)
class TensorGroup:
    """The inputs of one output tensor.

    Attributes:
        name: The output tensor's name (Hugging Face layout, e.g. ``model.layers.3.mlp.up_proj.weight``).
        tensors: One tensor per input, in the config's order (float32 on the merge device), same shape.
        base_index: The position of the base model's tensor in `tensors`, or None without a base.
    """

    name: str
    tensors: tuple[Tensor, ...]
    base_index: int | None = None


@dataclass(frozen=True)
class ResolvedParameters:
    """A method's parameters for one tensor, after gradients, filters and defaults.

    Attributes:
        shared: Shared parameters by name.
        per_input: Per-input parameters by name, one value per `TensorGroup.tensors` entry (None where the
            parameter does not apply, e.g. the base's ``density``).
    """

    shared: Mapping[str, ParameterValue]
    per_input: Mapping[str, tuple[ParameterValue | None, ...]]


MergeFn = Callable[[TensorGroup, ResolvedParameters, "torch.Generator | None"], Tensor]
"""``merge(group, parameters, generator)``: the merged tensor (float32, the group's shape); the generator
is set for random methods only (DARE, DELLA), seeded per tensor so a seed gives the same output."""


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: Its ``merge_method`` value.
        title: A human name (model cards).
        reference: The paper or page it comes from.
        base: `BasePolicy`.
        parameters: What it takes.
        random: Whether it draws random numbers (needs a generator).
        merge: The function.
        min_inputs: Fewest inputs a group may have (base included); max_inputs: most, None for no limit.
        min_non_base: Fewest inputs besides the base; max_non_base: most, None for no limit (nuslerp takes
            exactly two with or without a base, which a count that includes the base cannot say).
    """

    name: str
    title: str
    reference: str
    base: BasePolicy
    parameters: tuple[ParameterSpec, ...]
    random: bool
    merge: MergeFn
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int = 0
    max_non_base: int | None = None
