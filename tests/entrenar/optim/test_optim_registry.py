"""Registries: names map to the right builders, and config mistakes get messages with the valid choices."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from entrenar.errors import OptimizerError, SchedulerError
from entrenar.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    SGD,
    Adam,
    AdamW,
    AdamW8bit,
    build_optimizer,
    build_scheduler,
    constant_schedule,
    cosine_schedule,
    inverse_sqrt_schedule,
    linear_schedule,
    step_schedule,
)


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


def test_registries_hold_exactly_the_builders() -> None:
    assert {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adamw8bit": AdamW8bit} == OPTIMIZERS
    assert {
        "constant": constant_schedule,
        "linear": linear_schedule,
        "cosine": cosine_schedule,
        "step": step_schedule,
        "inverse_sqrt": inverse_sqrt_schedule,
    } == SCHEDULERS


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        ("adam", {"lr": 1e-3, "amsgrad": True}),
        ("adamw", {"lr": 2e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}),
        ("adamw8bit", {"lr": 2e-4, "block_size": 2048}),
    ],
)
def test_build_optimizer_passes_hyperparameters(name: str, kwargs: dict[str, object]) -> None:
    opt = build_optimizer(name, _params(), **kwargs)
    assert type(opt) is OPTIMIZERS[name]
    group = opt.param_groups[0]
    for key, value in kwargs.items():
        assert group.get(key, getattr(opt, key, None)) == value


def test_build_scheduler_passes_arguments() -> None:
    opt = build_optimizer("adamw", _params(), lr=1.0)
    scheduler = build_scheduler("cosine", opt, warmup_steps=2, total_steps=4, min_lr_ratio=0.5)
    assert isinstance(scheduler, LambdaLR)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    # Warmup 0, 0.5; cosine from 1 to 0.5 over 2 steps: 1, 0.5 + 0.5 * (1 + cos(pi / 2)) / 2 = 0.75; floor 0.5.
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: build_optimizer("adanw", _params()),
            OptimizerError,
            "unknown optimizer 'adanw'; did you mean 'adamw'",
        ),
        (
            lambda: build_optimizer("lion", _params()),
            OptimizerError,
            "'lion'; choose one of: sgd, adam, adamw, adamw8bit",
        ),
        (
            lambda: build_optimizer("sgd", _params(), betas=(0.9, 0.99)),
            OptimizerError,
            "optimizer 'sgd' has no argument 'betas'; valid: dampening, lr, momentum, nesterov, weight_decay",
        ),
        (
            lambda: build_optimizer("adamw", _params(), weight_decy=0.1),
            OptimizerError,
            "did you mean 'weight_decay'",
        ),
        (lambda: build_optimizer("adamw", _params(), lr=-1.0), OptimizerError, "AdamW: lr=-1.0"),
        (
            lambda: build_scheduler("cosin", build_optimizer("sgd", _params())),
            SchedulerError,
            "unknown scheduler 'cosin'; did you mean 'cosine'",
        ),
        (
            lambda: build_scheduler("cosine", build_optimizer("sgd", _params())),
            SchedulerError,
            r"scheduler 'cosine' is missing required argument\(s\): total_steps\.",
        ),
        (
            lambda: build_scheduler("linear", build_optimizer("sgd", _params()), total_step=10),
            SchedulerError,
            "scheduler 'linear' has no argument 'total_step'; did you mean 'total_steps'",
        ),
    ],
)
def test_config_mistakes_are_reported(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
