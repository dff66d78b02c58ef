"""Linear merge: a weighted average of the inputs ("model soups", https://arxiv.org/abs/2203.05482)."""

from __future__ import annotations

import torch
from torch import Tensor

from entrenar.errors import MergeError
from entrenar.merge.base import MergeMethod, ParameterSpec, ResolvedParameters, TensorGroup
from entrenar.merge.methods._common import per_input_floats


def merge_linear(group: TensorGroup, parameters: ResolvedParameters, generator: torch.Generator | None) -> Tensor:
    """Sum of ``weight_i * tensor_i`` over every input (the base is an ordinary input), divided by the weights' sum
    when ``normalize``.

    Raises:
        MergeError: ``normalize`` with weights that sum to 0.
    """
    weights = per_input_floats(parameters, "weight", list(range(len(group.tensors))))
    result = torch.zeros_like(group.tensors[0], dtype=torch.float32)
    for tensor, weight in zip(group.tensors, weights, strict=True):
        result.add_(tensor, alpha=weight)
    if parameters.shared["normalize"]:
        # The divisor is summed in float32 as mergekit does, so both divide by the same number.
        total = float(torch.tensor(weights, dtype=torch.float32).sum())
        if total == 0:
            raise MergeError(f"{group.name}: linear weights sum to 0 with normalize: true; change a weight")
        result.div_(total)
    return result


LINEAR = MergeMethod(
    name="linear",
    title="Linear",
    reference="https://arxiv.org/abs/2203.05482",
    base="none",
    parameters=(
        ParameterSpec("weight", float, per_input=True),
        ParameterSpec("normalize", bool, per_input=False, default=True),
    ),
    random=False,
    merge=merge_linear,
)
