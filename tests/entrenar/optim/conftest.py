"""Shared helpers for the optimizer tests: a fixed small MLP and a lock-step comparison with torch.optim.

The lock-step helper trains two copies of the same MLP on the same batch, one with our optimizer
and one with the torch.optim oracle, and compares every parameter after every step (nanochat's
tests/test_optim.py does the same for its hand-written optimizers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from entrenar.optim import clip_grad_norm
from fixtures.threads import torch_threads

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def make_mlp(seed: int = 0) -> nn.Sequential:
    """A 8 -> 16 -> 4 tanh MLP with weights drawn from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def two_groups(model: nn.Sequential, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """First layer at (lr, weight_decay); second layer at half the lr and no decay."""
    return [
        {"params": list(model[0].parameters()), "lr": lr, "weight_decay": weight_decay},
        {"params": list(model[2].parameters()), "lr": lr / 2, "weight_decay": 0.0},
    ]


def _where(step: int, name: str) -> Callable[[str], str]:
    """Prefix assert_close's message with the step and parameter."""
    return lambda message: f"step {step}, {name}: {message}"


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
    return ((model(x) - y) ** 2).mean()


def run_lockstep(
    ours: OptimizerFactory,
    reference: OptimizerFactory,
    *,
    lr: float,
    weight_decay: float,
    steps: int = 20,
    max_norm: float | None = None,
) -> tuple[torch.optim.Optimizer, nn.Sequential]:
    """Train two identical MLPs (two parameter groups) in lock step and assert equal parameters after each step.

    Clipping uses ``clip_grad_norm`` on our side and ``torch.nn.utils.clip_grad_norm_`` on the oracle's.

    Returns:
        Our optimizer and model after the last step.
    """
    a, b = make_mlp(), make_mlp()
    opt_a, opt_b = ours(two_groups(a, lr, weight_decay)), reference(two_groups(b, lr, weight_decay))
    for step in range(steps):
        for model, opt, clip in ((a, opt_a, clip_grad_norm), (b, opt_b, torch.nn.utils.clip_grad_norm_)):
            opt.zero_grad()
            _loss(model, step).backward()
            if max_norm is not None:
                clip(model.parameters(), max_norm)
            opt.step()
        for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-9, msg=_where(step, name))
    return opt_a, a


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, first: int, last: int) -> None:
    """Steps `first` .. `last - 1` of the lock-step data, without clipping."""
    for step in range(first, last):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run single-threaded: these tensors are tiny, and on a busy shared CPU torch's thread pool
    makes them 10-40x slower."""
    with torch_threads(1):
        yield


# Session-scoped fixtures handing out the helpers (stateless functions, so hypothesis may reuse them).


@pytest.fixture(scope="session")
def lockstep() -> Callable[..., tuple[torch.optim.Optimizer, nn.Sequential]]:
    return run_lockstep


@pytest.fixture(scope="session")
def mlp() -> Callable[..., nn.Sequential]:
    return make_mlp


@pytest.fixture(scope="session")
def train() -> Callable[[nn.Module, torch.optim.Optimizer, int, int], None]:
    return train_steps
