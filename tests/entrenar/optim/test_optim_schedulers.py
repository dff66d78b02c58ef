"""Learning-rate schedules: values at chosen steps against hand-computed formulas and transformers'
schedules, warmup from 0, the cosine floor, and exact continuation after a state_dict resume.

Convention checked throughout: lrs[k] is the lr the k-th optimizer step runs at (k = 0, 1, ...),
i.e. the group lr read before the k-th ``scheduler.step()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from entrenar.errors import EntrenarError, SchedulerError
from entrenar.optim import (
    SGD,
    constant_schedule,
    cosine_schedule,
    inverse_sqrt_schedule,
    linear_schedule,
    step_schedule,
)

BASE_LR = 2.0


def _optimizer(lr: float = BASE_LR) -> torch.optim.Optimizer:
    # Two groups: the schedule scales both, keeping their 4:1 ratio (as LoRA+ needs).
    groups: list[dict[str, Any]] = [
        {"params": [torch.nn.Parameter(torch.zeros(1))]},
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr / 4},
    ]
    return SGD(groups, lr=lr)


def _lrs(make: Callable[[torch.optim.Optimizer], LambdaLR], steps: int) -> list[float]:
    opt = _optimizer()
    scheduler = make(opt)
    out = []
    for _ in range(steps):
        assert opt.param_groups[1]["lr"] == pytest.approx(opt.param_groups[0]["lr"] / 4)
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_constant_with_warmup() -> None:
    lrs = _lrs(lambda o: constant_schedule(o, warmup_steps=4), 8)
    # k / 4 * 2.0 for k < 4, then 2.0.
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0])
    assert _lrs(constant_schedule, 3) == [BASE_LR] * 3  # no warmup: constant from step 0


def test_linear_decays_to_min_ratio_and_stays() -> None:
    lrs = _lrs(lambda o: linear_schedule(o, warmup_steps=2, total_steps=10, min_lr_ratio=0.25), 13)
    # Warmup 0, 1.0; then d = k - 2 of n = 8: 2 * (0.25 + 0.75 * (1 - d / 8)).
    expected = [0.0, 1.0] + [2 * (0.25 + 0.75 * (1 - d / 8)) for d in range(8)] + [0.5] * 3
    assert lrs == pytest.approx(expected)
    assert lrs[6] == pytest.approx(2 * (0.25 + 0.75 * 0.5))  # halfway: 1.25


def test_cosine_reaches_min_ratio_at_the_end() -> None:
    lrs = _lrs(lambda o: cosine_schedule(o, warmup_steps=10, total_steps=110, min_lr_ratio=0.1), 115)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1.0)  # warmup from 0: 5 / 10 * 2
    assert lrs[10] == pytest.approx(2.0)  # decay starts at the peak
    # Halfway (d = 50 of 100): cos(pi / 2) = 0 -> 2 * (0.1 + 0.9 * 0.5) = 1.1.
    assert lrs[60] == pytest.approx(1.1)
    # A quarter (d = 25): (1 + cos(pi / 4)) / 2 = 0.853553 -> 2 * (0.1 + 0.9 * 0.853553) = 1.736396.
    assert lrs[35] == pytest.approx(1.7363961, rel=1e-6)
    assert lrs[110:] == pytest.approx([0.1 * BASE_LR] * 5)  # min_lr_ratio * lr at and after total_steps


def test_step_decay_counts_from_the_end_of_warmup() -> None:
    lrs = _lrs(lambda o: step_schedule(o, warmup_steps=2, step_size=3, gamma=0.5), 11)
    # Warmup 0, 1; then 2 * 0.5 ** ((k - 2) // 3).
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5])


def test_inverse_sqrt() -> None:
    lrs = _lrs(lambda o: inverse_sqrt_schedule(o, warmup_steps=4), 17)
    # timescale = warmup = 4: sqrt(4 / k) * 2 for k >= 4, the Transformer schedule: k = 16 -> 1.0.
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert lrs[16] == pytest.approx(1.0) and lrs[9] == pytest.approx(2 * math.sqrt(4 / 9))
    lrs = _lrs(lambda o: inverse_sqrt_schedule(o, timescale=3), 7)
    # No warmup: sqrt(3 / (k + 3)) * 2; k = 6 -> sqrt(1/3) * 2.
    assert lrs[0] == 2.0 and lrs[6] == pytest.approx(2 / math.sqrt(3))


def test_against_transformers_schedules() -> None:
    hf = pytest.importorskip("transformers.optimization")
    pairs: list[tuple[Callable[[Any], LambdaLR], Callable[[Any], LambdaLR], int]] = [
        (lambda o: constant_schedule(o, warmup_steps=7), lambda o: hf.get_constant_schedule_with_warmup(o, 7), 30),
        (
            lambda o: linear_schedule(o, warmup_steps=5, total_steps=40),
            lambda o: hf.get_linear_schedule_with_warmup(o, 5, 40),
            45,
        ),
        (
            lambda o: cosine_schedule(o, warmup_steps=5, total_steps=40, min_lr_ratio=0.2),
            lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, 5, 40, min_lr_rate=0.2),
            41,  # transformers' cosine keeps rising after total_steps; ours stays at the floor
        ),
        (
            lambda o: inverse_sqrt_schedule(o, warmup_steps=6, timescale=10),
            lambda o: hf.get_inverse_sqrt_schedule(o, 6, timescale=10),
            40,
        ),
    ]
    for ours, theirs, steps in pairs:
        assert _lrs(ours, steps) == pytest.approx(_lrs(theirs, steps), rel=1e-12, abs=1e-15)


SCHEDULES: list[Callable[[torch.optim.Optimizer], LambdaLR]] = [
    lambda o: constant_schedule(o, warmup_steps=5),
    lambda o: linear_schedule(o, warmup_steps=5, total_steps=20, min_lr_ratio=0.1),
    lambda o: cosine_schedule(o, warmup_steps=5, total_steps=20, min_lr_ratio=0.1),
    lambda o: step_schedule(o, warmup_steps=5, step_size=4, gamma=0.7),
    lambda o: inverse_sqrt_schedule(o, warmup_steps=5),
]


@pytest.mark.parametrize("make", SCHEDULES, ids=["constant", "linear", "cosine", "step", "inverse_sqrt"])
@pytest.mark.parametrize("stop", [3, 7, 20])
@pytest.mark.parametrize("optimizer_state_first", [True, False])
def test_resume_continues_identically(
    make: Callable[[torch.optim.Optimizer], LambdaLR], stop: int, optimizer_state_first: bool
) -> None:
    straight = _lrs(make, 25)
    opt = _optimizer()
    scheduler = make(opt)
    for _ in range(stop):
        opt.step()
        scheduler.step()
    saved_opt, saved_sched = opt.state_dict(), scheduler.state_dict()
    # Resume: fresh optimizer (another lr, overwritten by the state), same schedule rebuilt, states loaded,
    # the optimizer's before or after the schedule is built.
    opt2 = _optimizer(lr=123.0)
    if optimizer_state_first:
        opt2.load_state_dict(saved_opt)
    scheduler2 = make(opt2)
    if not optimizer_state_first:
        opt2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    assert isinstance(scheduler2, LambdaLR)
    resumed = []
    for _ in range(stop, 25):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        scheduler2.step()
    assert resumed == straight[stop:]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda o: constant_schedule(o, warmup_steps=-1), "constant_schedule: warmup_steps=-1 must be an integer >= 0"),
        (lambda o: constant_schedule(o, warmup_steps=2.5), "warmup_steps=2.5"),  # type: ignore[arg-type]
        (
            lambda o: linear_schedule(o, total_steps=10, warmup_steps=10),
            "total_steps=10 must be greater than warmup_steps=10",
        ),
        (lambda o: linear_schedule(o, total_steps=0), "total_steps=0 must be an integer >= 1"),
        (lambda o: cosine_schedule(o, total_steps=10, min_lr_ratio=1.5), r"min_lr_ratio=1.5 is outside \[0, 1\]"),
        (lambda o: cosine_schedule(o, total_steps=10, min_lr_ratio=-0.1), "min_lr_ratio=-0.1"),
        (lambda o: step_schedule(o, step_size=0), "step_size=0"),
        (lambda o: step_schedule(o, step_size=2, gamma=0.0), r"gamma=0.0 is outside \(0, 1\]"),
        (lambda o: step_schedule(o, step_size=2, gamma=1.5), "gamma=1.5"),
        (lambda o: inverse_sqrt_schedule(o), "set warmup_steps > 0 or a timescale"),
        (lambda o: inverse_sqrt_schedule(o, timescale=0), "timescale=0 must be an integer >= 1"),
        (lambda o: constant_schedule("adamw"), "optimizer must be a torch.optim.Optimizer, got str"),  # type: ignore[arg-type]
    ],
)
def test_invalid_arguments_are_rejected(make: Callable[[torch.optim.Optimizer], LambdaLR], match: str) -> None:
    with pytest.raises(SchedulerError, match=match):
        make(_optimizer())
    assert issubclass(SchedulerError, EntrenarError)
