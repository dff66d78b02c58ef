"""Global-norm gradient clipping that reports the norm and never hides a non-finite one.

Pascanu et al. 2013, "On the difficulty of training recurrent neural networks"
(https://arxiv.org/abs/1211.5063): when the norm of all gradients taken together exceeds
``max_norm``, every gradient is scaled by ``max_norm / (norm + 1e-6)``. The arithmetic is that of
``torch.nn.utils.clip_grad_norm_`` (per-tensor ``torch._foreach_norm``, then the norm of the norms,
then one ``torch._foreach_mul_``), so finite results are identical to it.

Difference on purpose: when the total norm is inf or NaN, torch would multiply the gradients by
0 (inf) or NaN, silently zeroing or poisoning them. Here the gradients are left untouched and the
non-finite norm is returned, so the caller can see it, skip the step and count the event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from entrenar.errors import OptimizerError
from entrenar.optim._checks import check_real


def clip_grad_norm(
    parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, *, norm_type: float = 2.0
) -> float:
    """Scale the gradients in place so that their global norm is at most `max_norm`.

    Args:
        parameters: Tensors whose ``.grad`` is clipped (those without a gradient are skipped).
        max_norm: Largest allowed global norm, > 0.
        norm_type: Order p of the norm, > 0 or ``math.inf`` (max of absolute values).

    Returns:
        The global norm of the gradients before clipping (0.0 without gradients); inf or NaN if a
        gradient holds one, in which case no gradient was changed.

    Raises:
        OptimizerError: If `max_norm` is not a finite positive number or `norm_type` is not positive.
    """
    check_real("clip_grad_norm", "max_norm", max_norm, low=0.0, low_open=True)
    if not (isinstance(norm_type, int | float) and not isinstance(norm_type, bool) and norm_type > 0):
        raise OptimizerError(f"clip_grad_norm: norm_type={norm_type!r} must be a positive number or math.inf.")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms: list[torch.Tensor] = []
    for group in groups.values():
        norms.extend(torch._foreach_norm(group, norm_type))
    first_device = grads[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)
    total_norm = float(total.item())
    if not math.isfinite(total_norm):
        return total_norm
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for (device, _), group in groups.items():
        torch._foreach_mul_(group, coef.to(device))
    return total_norm
