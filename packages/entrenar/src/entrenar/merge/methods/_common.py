"""Small helpers the merge methods share: which inputs are not the base, and parameter values as floats."""

from __future__ import annotations

from entrenar.errors import MergeError
from entrenar.merge.base import ResolvedParameters, TensorGroup


def non_base_indices(group: TensorGroup) -> list[int]:
    """Positions of the inputs other than the base, in the config's order."""
    return [index for index in range(len(group.tensors)) if index != group.base_index]


def per_input_floats(parameters: ResolvedParameters, name: str, indices: list[int]) -> list[float]:
    """The per-input parameter `name` of the inputs at `indices`, as floats.

    Raises:
        MergeError: An input has no value for it.
    """
    values = parameters.per_input[name]
    result = []
    for index in indices:
        value = values[index]
        if value is None:
            raise MergeError(f"parameter {name!r} has no value for input {index}; set it under that model's parameters")
        result.append(float(value))
    return result
