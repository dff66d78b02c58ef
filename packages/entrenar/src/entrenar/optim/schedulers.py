"""Learning-rate schedules with linear warmup, as functions returning `torch.optim.lr_scheduler.LambdaLR`.

Each function builds a multiplier ``factor(step)`` applied to every group's initial lr (so LoRA+
ratios between groups are kept). ``step`` counts ``scheduler.step()`` calls: the k-th optimizer step
(k = 0, 1, ...) runs at ``lr * factor(k)``.

Warmup (Goyal et al. 2017, https://arxiv.org/abs/1706.02677) rises linearly from 0:
``factor(k) = k / warmup_steps`` for ``k < warmup_steps``; the decay below starts at ``k = warmup_steps``
with factor 1, with ``d = k - warmup_steps`` and ``n = total_steps - warmup_steps``:

- constant: 1.
- linear: ``r + (1 - r) * (1 - min(d / n, 1))``, reaching ``r = min_lr_ratio`` at ``total_steps``.
- cosine (Loshchilov & Hutter 2017, https://arxiv.org/abs/1608.03983):
  ``r + (1 - r) * (1 + cos(pi * min(d / n, 1))) / 2``.
- step: ``gamma ** (d // step_size)``, counted from the end of warmup.
- inverse_sqrt (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762): ``sqrt(timescale / (d + timescale))``;
  with ``timescale = warmup_steps`` this is the Transformer's ``sqrt(warmup_steps / k)``.

After ``total_steps`` linear and cosine stay at ``min_lr_ratio``. The multiplier is a
`functools.partial` of a module function, rebuilt from the same arguments on resume:
``scheduler.load_state_dict(saved)`` then restores the step count, the base lrs and the groups'
current lr, so the schedule continues exactly whether the optimizer state is loaded before or
after the scheduler is built (a plain LambdaLR built after it would leave lr at ``factor(0)``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from entrenar.errors import SchedulerError
from entrenar.optim._checks import check_int, check_real


def _warmup_or(step: int, warmup_steps: int) -> float | None:
    """The warmup factor ``step / warmup_steps`` during warmup, else None."""
    return step / warmup_steps if step < warmup_steps else None


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Fraction of the decay phase done, in [0, 1]."""
    return min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)


def _constant_factor(step: int, *, warmup_steps: int) -> float:
    warm = _warmup_or(step, warmup_steps)
    return 1.0 if warm is None else warm


def _linear_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    warm = _warmup_or(step, warmup_steps)
    if warm is not None:
        return warm
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - _progress(step, warmup_steps, total_steps))


def _cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    warm = _warmup_or(step, warmup_steps)
    if warm is not None:
        return warm
    cosine = 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup_steps, total_steps)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def _step_factor(step: int, *, warmup_steps: int, step_size: int, gamma: float) -> float:
    warm = _warmup_or(step, warmup_steps)
    return gamma ** ((step - warmup_steps) // step_size) if warm is None else warm


def _inverse_sqrt_factor(step: int, *, warmup_steps: int, timescale: int) -> float:
    warm = _warmup_or(step, warmup_steps)
    return math.sqrt(timescale / (step - warmup_steps + timescale)) if warm is None else warm


class _ResumableLambdaLR(LambdaLR):
    """A LambdaLR whose `load_state_dict` also puts the saved current lr back into the optimizer's groups."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


def _lambda_lr(owner: str, optimizer: torch.optim.Optimizer, factor: partial[float]) -> LambdaLR:
    """Wrap a multiplier in a LambdaLR after checking the optimizer."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise SchedulerError(f"{owner}: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    return _ResumableLambdaLR(optimizer, factor)


def _check_warmup(owner: str, warmup_steps: int) -> int:
    return check_int(owner, "warmup_steps", warmup_steps, minimum=0, error=SchedulerError)


def _check_total(owner: str, total_steps: int, warmup_steps: int) -> int:
    total = check_int(owner, "total_steps", total_steps, minimum=1, error=SchedulerError)
    if total <= warmup_steps:
        raise SchedulerError(
            f"{owner}: total_steps={total} must be greater than warmup_steps={warmup_steps}; "
            "lower warmup_steps or train longer."
        )
    return total


def _check_min_ratio(owner: str, min_lr_ratio: float) -> float:
    return check_real(owner, "min_lr_ratio", min_lr_ratio, low=0.0, high=1.0, error=SchedulerError)


def constant_schedule(optimizer: torch.optim.Optimizer, *, warmup_steps: int = 0) -> LambdaLR:
    """Constant learning rate after a linear warmup from 0.

    Args:
        optimizer: The optimizer whose groups' lr is scheduled.
        warmup_steps: Steps of linear warmup, >= 0.

    Returns:
        The scheduler; call ``step()`` after each optimizer step.

    Raises:
        SchedulerError: If an argument is out of range.
    """
    warmup = _check_warmup("constant_schedule", warmup_steps)
    return _lambda_lr("constant_schedule", optimizer, partial(_constant_factor, warmup_steps=warmup))


def linear_schedule(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup from 0, then linear decay to ``min_lr_ratio * lr`` at `total_steps`.

    Args:
        optimizer: The optimizer whose groups' lr is scheduled.
        total_steps: Steps of the whole run, > warmup_steps.
        warmup_steps: Steps of linear warmup, >= 0.
        min_lr_ratio: Final lr as a fraction of the initial lr, in [0, 1].

    Returns:
        The scheduler; call ``step()`` after each optimizer step.

    Raises:
        SchedulerError: If an argument is out of range.
    """
    owner = "linear_schedule"
    warmup = _check_warmup(owner, warmup_steps)
    factor = partial(
        _linear_factor,
        warmup_steps=warmup,
        total_steps=_check_total(owner, total_steps, warmup),
        min_lr_ratio=_check_min_ratio(owner, min_lr_ratio),
    )
    return _lambda_lr(owner, optimizer, factor)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup from 0, then half-cosine decay to ``min_lr_ratio * lr`` at `total_steps` (SGDR).

    Args:
        optimizer: The optimizer whose groups' lr is scheduled.
        total_steps: Steps of the whole run, > warmup_steps.
        warmup_steps: Steps of linear warmup, >= 0.
        min_lr_ratio: Final lr as a fraction of the initial lr, in [0, 1].

    Returns:
        The scheduler; call ``step()`` after each optimizer step.

    Raises:
        SchedulerError: If an argument is out of range.
    """
    owner = "cosine_schedule"
    warmup = _check_warmup(owner, warmup_steps)
    factor = partial(
        _cosine_factor,
        warmup_steps=warmup,
        total_steps=_check_total(owner, total_steps, warmup),
        min_lr_ratio=_check_min_ratio(owner, min_lr_ratio),
    )
    return _lambda_lr(owner, optimizer, factor)


def step_schedule(
    optimizer: torch.optim.Optimizer, *, step_size: int, gamma: float = 0.1, warmup_steps: int = 0
) -> LambdaLR:
    """Linear warmup from 0, then multiply the lr by `gamma` every `step_size` steps.

    Args:
        optimizer: The optimizer whose groups' lr is scheduled.
        step_size: Steps between decays, >= 1, counted from the end of warmup.
        gamma: Multiplicative decay in (0, 1].
        warmup_steps: Steps of linear warmup, >= 0.

    Returns:
        The scheduler; call ``step()`` after each optimizer step.

    Raises:
        SchedulerError: If an argument is out of range.
    """
    owner = "step_schedule"
    factor = partial(
        _step_factor,
        warmup_steps=_check_warmup(owner, warmup_steps),
        step_size=check_int(owner, "step_size", step_size, minimum=1, error=SchedulerError),
        gamma=check_real(owner, "gamma", gamma, low=0.0, high=1.0, low_open=True, error=SchedulerError),
    )
    return _lambda_lr(owner, optimizer, factor)


def inverse_sqrt_schedule(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int = 0, timescale: int | None = None
) -> LambdaLR:
    """Linear warmup from 0, then decay as ``sqrt(timescale / (steps after warmup + timescale))``.

    Args:
        optimizer: The optimizer whose groups' lr is scheduled.
        warmup_steps: Steps of linear warmup, >= 0.
        timescale: Steps over which the lr falls to ``1/sqrt(2)`` after warmup, >= 1; None uses
            `warmup_steps` (the Transformer schedule ``sqrt(warmup_steps / step)``), which then must be > 0.

    Returns:
        The scheduler; call ``step()`` after each optimizer step.

    Raises:
        SchedulerError: If an argument is out of range or neither `timescale` nor `warmup_steps` is set.
    """
    owner = "inverse_sqrt_schedule"
    warmup = _check_warmup(owner, warmup_steps)
    if timescale is None:
        if warmup == 0:
            raise SchedulerError(f"{owner}: timescale is None and warmup_steps=0; set warmup_steps > 0 or a timescale.")
        timescale = warmup
    scale = check_int(owner, "timescale", timescale, minimum=1, error=SchedulerError)
    return _lambda_lr(owner, optimizer, partial(_inverse_sqrt_factor, warmup_steps=warmup, timescale=scale))
