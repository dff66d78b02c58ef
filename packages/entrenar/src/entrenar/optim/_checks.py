"""Argument checks shared by the optimizers, clipping, parameter groups and schedulers.

Each check names the owner (``"AdamW"``, ``"cosine_schedule"``) and the argument, shows the bad
value and the accepted range, so the message is complete on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from entrenar.errors import EntrenarError, OptimizerError


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """The interval [low, high) in the usual notation."""
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or math.isinf(high) else ']'}"


def check_real(
    owner: str,
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    error: type[EntrenarError] = OptimizerError,
) -> float:
    """Return `value` as a float after checking that it is a finite number inside the interval.

    Raises:
        EntrenarError: The `error` subclass if `value` is not a real number or lies outside the interval.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        span = _interval(low, high, low_open, high_open)
        raise error(f"{owner}: {name}={value!r} is outside {span}; pass a number in {span}.")
    return float(value)  # type: ignore[arg-type]


def check_int(
    owner: str, name: str, value: object, *, minimum: int, error: type[EntrenarError] = OptimizerError
) -> int:
    """Return `value` after checking that it is an int (not a bool) of at least `minimum`.

    Raises:
        EntrenarError: The `error` subclass if `value` is not an int or is below `minimum`.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise error(f"{owner}: {name}={value!r} must be an integer >= {minimum}.")
    return value


def check_betas(owner: str, betas: object) -> tuple[float, float]:
    """Return Adam's (beta1, beta2) after checking that both lie in [0, 1).

    Raises:
        OptimizerError: If `betas` is not a pair of numbers in [0, 1).
    """
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise OptimizerError(f"{owner}: betas={betas!r} must be a pair (beta1, beta2), e.g. (0.9, 0.999).")
    b1 = check_real(owner, "betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
    b2 = check_real(owner, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    return b1, b2


def grads_of(owner: str, params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split `params` into those that have a gradient and their gradients (dense, real floating point).

    Raises:
        OptimizerError: If a gradient is sparse or a parameter is not real floating point.
    """
    with_grad: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise OptimizerError(f"{owner}: got a sparse gradient of shape {tuple(p.shape)}; use dense gradients.")
        if not p.is_floating_point():
            raise OptimizerError(f"{owner}: parameter of dtype {p.dtype} is not real floating point; optimize floats.")
        with_grad.append(p)
        grads.append(p.grad)
    return with_grad, grads
