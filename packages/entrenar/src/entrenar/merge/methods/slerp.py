"""Spherical linear interpolation between the base and one other model, the whole tensor as one vector
(https://en.wikipedia.org/wiki/Slerp; Shoemake, "Animating rotation with quaternion curves", 1985)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entrenar.merge.base import MergeMethod, ParameterSpec, ResolvedParameters, TensorGroup
from entrenar.merge.methods._common import non_base_indices

_DOT_THRESHOLD = 0.9995
"""Above this |cos| the two directions are nearly parallel (or opposite) and slerp falls back to lerp."""
_NORM_EPS = 1e-8
"""A vector with a norm at most this is not normalized (its norm counts as 1)."""


def slerp(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Interpolate from `v0` (t=0) to `v1` (t=1) along the great circle between their directions.

    The angle comes from the normalized tensors; the coefficients ``sin((1-t)θ)/sin θ`` and ``sin(tθ)/sin θ``
    apply to the tensors as they are, so magnitudes interpolate too. Nearly parallel inputs use ``(1-t) v0 + t v1``.
    """
    if v0.numel() == 0:
        return (1 - t) * v0 + t * v1
    norm0, norm1 = (float(torch.linalg.vector_norm(v)) for v in (v0, v1))
    norm0 = norm0 if norm0 > _NORM_EPS else 1.0
    norm1 = norm1 if norm1 > _NORM_EPS else 1.0
    dot = min(1.0, max(-1.0, float(((v0 / norm0) * (v1 / norm1)).sum())))
    if abs(dot) > _DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) / math.sin(theta)) * v0 + (math.sin(t * theta) / math.sin(theta)) * v1


def merge_slerp(group: TensorGroup, parameters: ResolvedParameters, generator: torch.Generator | None) -> Tensor:
    """`slerp` from the base (t=0) to the other input (t=1) at the shared ``t``."""
    assert group.base_index is not None, "validate_group checks that the base is present"
    (other,) = non_base_indices(group)
    return slerp(float(parameters.shared["t"]), group.tensors[group.base_index], group.tensors[other])


SLERP = MergeMethod(
    name="slerp",
    title="SLERP",
    reference="https://en.wikipedia.org/wiki/Slerp",
    base="required",
    parameters=(ParameterSpec("t", float, per_input=False),),
    random=False,
    merge=merge_slerp,
    min_inputs=2,
    max_inputs=2,
)
