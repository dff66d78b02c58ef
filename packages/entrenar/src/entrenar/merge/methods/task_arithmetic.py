"""The generalized task arithmetic family: sparsify each task vector (``model - base``), weight it, optionally
elect a sign per value (TIES), sum, normalize, scale by ``lambda`` and add to the base (mergekit's
``GeneralizedTaskArithmeticMerge``).

| method | sparsification | sign election | paper |
|---|---|---|---|
| task_arithmetic | none | no | https://arxiv.org/abs/2212.04089 |
| ties | magnitude | yes | https://arxiv.org/abs/2306.01708 |
| dare_ties, dare_linear | random | yes, no | https://arxiv.org/abs/2311.03099 |
| breadcrumbs_ties, breadcrumbs | magnitude_outliers | yes, no | https://arxiv.org/abs/2312.06795 |
| della, della_linear | della_magprune | yes, no | https://arxiv.org/abs/2406.11617 |
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from entrenar.merge.base import MergeMethod, ParameterSpec, ResolvedParameters, TensorGroup
from entrenar.merge.methods._common import non_base_indices, per_input_floats
from entrenar.merge.methods.sparsify import Sparsification, sparsify


def elect_signs(deltas: Tensor, *, int8: bool = False) -> Tensor:
    """TIES' sign election ("sum"): True where a value has the sign of the column's weighted sum (>= 0 counts as +).

    Args:
        deltas: Weighted task vectors, ``(N, *shape)``.
        int8: Compare signs as int8 instead of float32 (less memory, same mask; mergekit's ``int8_mask``).

    Returns:
        The mask, bool ``(N, *shape)``; a zero value never matches.
    """
    dtype = torch.int8 if int8 else deltas.dtype
    majority = torch.where(deltas.sum(dim=0) >= 0, 1, -1).to(dtype)
    return deltas.sign().to(dtype) == majority


def merge_task_arithmetic(
    group: TensorGroup,
    parameters: ResolvedParameters,
    generator: torch.Generator | None,
    *,
    sparsification: Sparsification | None,
    sign_election: bool,
) -> Tensor:
    """``base + lambda * sum_i(w_i * sparsify(t_i - base)) / divisor`` over the non-base inputs.

    The divisor (``normalize``) is the sum of the weights, with sign election the sum of the weights that survive
    each value's election; a zero divisor counts as 1 (below 1e-8 in absolute value without election).
    """
    assert group.base_index is not None, "validate_group checks that the base is present"
    base = group.tensors[group.base_index]
    others = non_base_indices(group)
    if not others:
        return base.clone()
    weights = per_input_floats(parameters, "weight", others)
    densities = per_input_floats(parameters, "density", others)
    gammas, epsilons = (
        per_input_floats(parameters, key, others) if key in parameters.per_input else [0.0] * len(others)
        for key in ("gamma", "epsilon")
    )
    deltas = torch.empty((len(others), *base.shape), dtype=torch.float32, device=base.device)
    for row, index in enumerate(others):
        delta = group.tensors[index] - base
        if sparsification is not None:
            delta = sparsify(
                delta,
                sparsification,
                densities[row],
                gamma=gammas[row],
                epsilon=epsilons[row],
                rescale=bool(parameters.shared["rescale"]),
                generator=generator,
                name=group.name,
            )
        deltas[row] = delta
    weight_column = torch.tensor(weights, dtype=torch.float32, device=base.device).reshape(-1, *[1] * base.dim())
    deltas.mul_(weight_column)
    if sign_election:
        kept = elect_signs(deltas, int8=bool(parameters.shared["int8_mask"]))
        mixed = (deltas * kept).sum(dim=0)
        divisor = (weight_column * kept).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weight_column.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if parameters.shared["normalize"]:
        mixed /= divisor
    scale = float(parameters.shared["lambda"])
    if scale != 1:
        mixed *= scale
    return base + mixed


def _task_arithmetic_method(
    name: str,
    title: str,
    reference: str,
    sparsification: Sparsification | None,
    *,
    sign_election: bool,
    normalize: bool = False,
    rescale: bool = False,
) -> MergeMethod:
    """One member of the family, with mergekit's parameters and defaults for it (`normalize`, `rescale`)."""
    parameters = [
        ParameterSpec("int8_mask", bool, per_input=False, default=False),
        ParameterSpec("normalize", bool, per_input=False, default=normalize),
        ParameterSpec("rescale", bool, per_input=False, default=rescale),
        ParameterSpec("lambda", float, per_input=False, default=1.0),
        ParameterSpec("weight", float, per_input=True),
        ParameterSpec("density", float, per_input=True, default=1.0),
    ]
    if sparsification == "magnitude_outliers":
        parameters.append(ParameterSpec("gamma", float, per_input=True, default=0.01))
    if sparsification == "della_magprune":
        parameters.append(ParameterSpec("epsilon", float, per_input=True, default=0.15))
    return MergeMethod(
        name=name,
        title=title,
        reference=reference,
        base="required",
        parameters=tuple(parameters),
        random=sparsification in ("random", "della_magprune"),
        merge=partial(merge_task_arithmetic, sparsification=sparsification, sign_election=sign_election),
    )


_DARE = "https://arxiv.org/abs/2311.03099"
_BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
_DELLA = "https://arxiv.org/abs/2406.11617"

TASK_ARITHMETIC = _task_arithmetic_method(
    "task_arithmetic", "Task Arithmetic", "https://arxiv.org/abs/2212.04089", None, sign_election=False
)
TIES = _task_arithmetic_method(
    "ties", "TIES", "https://arxiv.org/abs/2306.01708", "magnitude", sign_election=True, normalize=True
)
DARE_TIES = _task_arithmetic_method("dare_ties", "DARE TIES", _DARE, "random", sign_election=True, rescale=True)
DARE_LINEAR = _task_arithmetic_method("dare_linear", "Linear DARE", _DARE, "random", sign_election=False, rescale=True)
BREADCRUMBS = _task_arithmetic_method(
    "breadcrumbs", "Model Breadcrumbs", _BREADCRUMBS, "magnitude_outliers", sign_election=False
)
BREADCRUMBS_TIES = _task_arithmetic_method(
    "breadcrumbs_ties", "Model Breadcrumbs with TIES", _BREADCRUMBS, "magnitude_outliers", sign_election=True
)
DELLA = _task_arithmetic_method(
    "della", "DELLA", _DELLA, "della_magprune", sign_election=True, normalize=True, rescale=True
)
DELLA_LINEAR = _task_arithmetic_method(
    "della_linear", "Linear DELLA", _DELLA, "della_magprune", sign_election=False, rescale=True
)
