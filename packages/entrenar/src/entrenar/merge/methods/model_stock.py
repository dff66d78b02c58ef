"""Model Stock: move from the base toward the average of the fine-tuned models by a ratio set by the angle between
their task vectors (https://arxiv.org/abs/2403.19522)."""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor

from entrenar.merge.base import MergeMethod, ParameterSpec, ResolvedParameters, TensorGroup
from entrenar.merge.methods._common import non_base_indices


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of the angle between `a` and `b` along the last dim (norm product clamped to at least 1e-6)."""
    norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return ((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1)


def merge_model_stock(group: TensorGroup, parameters: ResolvedParameters, generator: torch.Generator | None) -> Tensor:
    """``t * mean(models) + (1 - t) * base`` with ``t = N cos / (1 + (N - 1) cos)``, ``cos`` the mean pairwise cosine
    of the N task vectors: over the whole tensor, or per row with ``filter_wise`` (a 1-D tensor is one row).

    Where ``1 + (N - 1) cos`` is within 1e-6 of 0 the base is kept.
    """
    assert group.base_index is not None, "validate_group checks that the base is present"
    base = group.tensors[group.base_index]
    models = [group.tensors[index] for index in non_base_indices(group)]
    if not parameters.shared["filter_wise"]:
        base, models = base.reshape(-1), [model.reshape(-1) for model in models]
    elif base.dim() == 1:
        base, models = base.unsqueeze(0), [model.unsqueeze(0) for model in models]
    offsets = [model - base for model in models]
    cos = torch.stack([_cosine(a, b) for a, b in combinations(offsets, 2)]).mean(dim=0).unsqueeze(-1)
    count = len(models)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    ratio = torch.where(singular, 0.0, count * cos / torch.where(singular, 1.0, denominator))
    total = models[0].clone()
    for model in models[1:]:
        total += model
    return (ratio * (total / count) + (1 - ratio) * base).reshape(group.tensors[0].shape)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    title="Model Stock",
    reference="https://arxiv.org/abs/2403.19522",
    base="required",
    parameters=(ParameterSpec("filter_wise", bool, per_input=False, default=False),),
    random=False,
    merge=merge_model_stock,
    min_inputs=3,
)
