"""NuSLERP: slerp between two models with weights instead of ``t``, per row, per column or over the whole tensor,
and optionally of their task vectors from a base (mergekit's ``nuslerp``,
https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from entrenar.merge.base import MergeMethod, ParameterSpec, ResolvedParameters, TensorGroup
from entrenar.merge.methods._common import non_base_indices, per_input_floats

_COLINEAR_EPS = 1e-8
"""Vectors with ``1 - cos² <= eps²`` are treated as colinear and interpolated linearly."""
_UNIT_EPS = 1e-7
"""Norms are clamped to at least this before normalizing, so zero vectors stay zero."""


def _unit(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=_UNIT_EPS)


def nuslerp(t: float, v0: Tensor, v1: Tensor, *, row_wise: bool, flatten: bool) -> Tensor:
    """Slerp from `v0` (t=0) to `v1` (t=1), one angle per vector.

    Args:
        t: The interpolation factor.
        v0: The first tensor; v1: the second, same shape.
        row_wise: The vectors run along dim 0 (mergekit's ``nuslerp_row_wise``); otherwise along the last dim.
        flatten: The whole tensor is one vector (wins over `row_wise`).

    Returns:
        The interpolated tensor, `v0`'s shape.
    """
    shape = v0.shape
    if flatten:
        x, y = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        x, y = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        x, y = v0, v1
    cos = (_unit(x) * _unit(y)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = 1 - cos.square() <= _COLINEAR_EPS**2
    # acos(0) on the colinear entries keeps the unused branch finite.
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    spherical = (torch.sin((1 - t) * theta) * x + torch.sin(t * theta) * y) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * x + t * y, spherical)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def merge_nuslerp(group: TensorGroup, parameters: ResolvedParameters, generator: torch.Generator | None) -> Tensor:
    """`nuslerp` of the two non-base inputs at ``t = w1 / (w0 + w1)`` (0.5 when the weights sum to about 0); with a
    base, of their task vectors, added back to the base."""
    first, second = non_base_indices(group)
    w0, w1 = per_input_floats(parameters, "weight", [first, second])
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    row_wise, flatten = bool(parameters.shared["nuslerp_row_wise"]), bool(parameters.shared["nuslerp_flatten"])
    v0, v1 = group.tensors[first], group.tensors[second]
    if group.base_index is None:
        return nuslerp(t, v0, v1, row_wise=row_wise, flatten=flatten)
    base = group.tensors[group.base_index]
    return base + nuslerp(t, v0 - base, v1 - base, row_wise=row_wise, flatten=flatten)


NUSLERP = MergeMethod(
    name="nuslerp",
    title="NuSLERP",
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
    base="optional",
    parameters=(
        ParameterSpec("weight", float, per_input=True),
        ParameterSpec("nuslerp_row_wise", bool, per_input=False, default=False),
        ParameterSpec("nuslerp_flatten", bool, per_input=False, default=True),
    ),
    random=False,
    merge=merge_nuslerp,
    min_inputs=2,
    max_inputs=3,
    min_non_base=2,
    max_non_base=2,
)
