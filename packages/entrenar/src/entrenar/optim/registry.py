"""Name -> optimizer class and name -> scheduler builder, for configs and the CLI.

Both registries are plain dicts built from explicit lists; `build_optimizer` and `build_scheduler`
look a name up and check the keyword arguments against the target's signature, so a config typo
is reported with the valid choices instead of a TypeError deep in torch.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from entrenar.errors import EntrenarError, OptimizerError, SchedulerError
from entrenar.optim.adam import Adam, AdamW
from entrenar.optim.adamw8bit import AdamW8bit
from entrenar.optim.schedulers import (
    constant_schedule,
    cosine_schedule,
    inverse_sqrt_schedule,
    linear_schedule,
    step_schedule,
)
from entrenar.optim.sgd import SGD

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    cls.__name__.lower(): cls for cls in (SGD, Adam, AdamW, AdamW8bit)
}

SCHEDULERS: dict[str, Callable[..., LambdaLR]] = {
    fn.__name__.removesuffix("_schedule"): fn
    for fn in (constant_schedule, linear_schedule, cosine_schedule, step_schedule, inverse_sqrt_schedule)
}


def _lookup(kind: str, registry: dict[str, Any], name: str, error: type[EntrenarError]) -> Any:
    """The registry entry for `name`, or an error naming the closest choice."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(str(name), list(registry), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise error(f"unknown {kind} {name!r}; {hint}choose one of: {', '.join(registry)}.")


def _check_kwargs(
    kind: str, name: str, target: Callable[..., Any], kwargs: dict[str, Any], error: type[EntrenarError]
) -> None:
    """Reject keyword arguments the target does not take, and missing required ones."""
    params = list(inspect.signature(target).parameters.values())[1:]  # skip params / optimizer
    accepted = {p.name for p in params}
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise error(f"{kind} {name!r} has no argument {key!r}; {hint}valid: {', '.join(sorted(accepted))}.")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if missing:
        raise error(f"{kind} {name!r} is missing required argument(s): {', '.join(missing)}.")


def build_optimizer(
    name: str, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], **kwargs: Any
) -> torch.optim.Optimizer:
    """Create the optimizer registered as `name`.

    Args:
        name: A key of `OPTIMIZERS` (``sgd``, ``adam``, ``adamw``, ``adamw8bit``).
        params: Parameters or parameter groups (see `entrenar.optim.build_param_groups`).
        **kwargs: Hyperparameters of that optimizer (lr, betas, weight_decay, ...).

    Returns:
        The optimizer.

    Raises:
        OptimizerError: If the name is unknown, an argument is not one of the optimizer's, or a value is out of range.
    """
    cls = _lookup("optimizer", OPTIMIZERS, name, OptimizerError)
    _check_kwargs("optimizer", name, cls, kwargs, OptimizerError)
    optimizer: torch.optim.Optimizer = cls(params, **kwargs)
    return optimizer


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, **kwargs: Any) -> LambdaLR:
    """Create the learning-rate schedule registered as `name`.

    Args:
        name: A key of `SCHEDULERS` (``constant``, ``linear``, ``cosine``, ``step``, ``inverse_sqrt``).
        optimizer: The optimizer to schedule.
        **kwargs: Arguments of that schedule (warmup_steps, total_steps, min_lr_ratio, ...).

    Returns:
        The scheduler.

    Raises:
        SchedulerError: If the name is unknown, an argument is missing or unknown, or a value is out of range.
    """
    fn = _lookup("scheduler", SCHEDULERS, name, SchedulerError)
    _check_kwargs("scheduler", name, fn, kwargs, SchedulerError)
    scheduler: LambdaLR = fn(optimizer, **kwargs)
    return scheduler
