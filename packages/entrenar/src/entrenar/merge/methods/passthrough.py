"""Passthrough: the single input, optionally scaled (frankenmerges that stack layers from different models,
https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from entrenar.merge.base import MergeMethod, ParameterSpec, ResolvedParameters, TensorGroup
from entrenar.merge.methods._common import per_input_floats


def merge_passthrough(group: TensorGroup, parameters: ResolvedParameters, generator: torch.Generator | None) -> Tensor:
    """The one input times its ``scale``."""
    (scale,) = per_input_floats(parameters, "scale", [0])
    return group.tensors[0] * scale


PASSTHROUGH = MergeMethod(
    name="passthrough",
    title="Passthrough",
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
    base="none",
    # mergekit leaves scale unset by default, which is the same as 1.0.
    parameters=(ParameterSpec("scale", float, per_input=True, default=1.0),),
    random=False,
    merge=merge_passthrough,
    max_inputs=1,
)
