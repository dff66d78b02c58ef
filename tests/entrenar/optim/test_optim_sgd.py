"""SGD against torch.optim.SGD: parameters after every step of 20, with groups, decay and clipping.

The oracle is torch.optim.SGD run on an identical MLP with the same data, both in its single-tensor
(foreach=False) and multi-tensor (foreach=True) paths.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.errors import EntrenarError, OptimizerError
from entrenar.optim import SGD


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "hyper",
    [
        {"momentum": 0.0},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True},
    ],
)
def test_sgd_matches_torch_step_by_step(lockstep: Callable[..., Any], hyper: dict[str, Any], foreach: bool) -> None:
    lockstep(
        lambda groups: SGD(groups, **hyper),
        lambda groups: torch.optim.SGD(groups, foreach=foreach, **hyper),
        lr=0.05,
        weight_decay=0.1,
        max_norm=0.5,
    )


@settings(max_examples=20, deadline=None)
@given(
    lr=st.floats(1e-4, 0.5),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    dampening=st.floats(0.0, 1.0),
    nesterov=st.booleans(),
    weight_decay=st.floats(0.0, 0.5),
    max_norm=st.none() | st.floats(0.05, 5.0),
)
def test_sgd_matches_torch_over_hyperparameters(
    lockstep: Callable[..., Any],
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    max_norm: float | None,
) -> None:
    if nesterov and momentum == 0.0:
        momentum = 0.9
    hyper: dict[str, Any] = {"momentum": momentum, "dampening": 0.0 if nesterov else dampening, "nesterov": nesterov}
    lockstep(
        lambda groups: SGD(groups, **hyper),
        lambda groups: torch.optim.SGD(groups, **hyper),
        lr=lr,
        weight_decay=weight_decay,
        steps=6,
        max_norm=max_norm,
    )


def test_momentum_buffer_is_torchs_key_and_first_buffer_is_the_decayed_gradient() -> None:
    # First step: buffer = grad + wd * p (torch's rule), hand-computed for a scalar:
    # p = 2, grad = 0.5, wd = 0.1 -> buf = 0.7, p = 2 - 0.1 * 0.7 = 1.93.
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad = torch.tensor([0.5])
    opt.step()
    assert opt.state[p]["momentum_buffer"].item() == pytest.approx(0.7)
    assert p.item() == pytest.approx(1.93)
    # Second step, same grad: g = 0.5 + 0.1 * 1.93 = 0.693; buf = 0.9 * 0.7 + 0.693 = 1.323; p = 1.93 - 0.1323.
    opt.step()
    assert opt.state[p]["momentum_buffer"].item() == pytest.approx(1.323)
    assert p.item() == pytest.approx(1.93 - 0.1323)


def test_nesterov_does_not_modify_the_gradient() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    p.grad = torch.tensor([0.25, 0.5])
    opt.step()
    opt.step()
    assert p.grad.tolist() == [0.25, 0.5]


def test_resume_from_state_dict_continues_identically(
    mlp: Callable[..., torch.nn.Sequential], train: Callable[..., None]
) -> None:
    hyper: dict[str, Any] = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True}
    straight = mlp()
    train(straight, SGD(straight.parameters(), **hyper), 0, 20)
    first = mlp()
    opt = SGD(first.parameters(), **hyper)
    train(first, opt, 0, 10)
    saved_model, saved_opt = copy.deepcopy(first.state_dict()), copy.deepcopy(opt.state_dict())
    for make in (lambda ps: SGD(ps, lr=1.0), lambda ps: torch.optim.SGD(ps, lr=1.0)):
        resumed = mlp(seed=7)
        resumed.load_state_dict(saved_model)
        opt2 = make(resumed.parameters())
        opt2.load_state_dict(copy.deepcopy(saved_opt))  # hyperparameters come back from the state too
        train(resumed, opt2, 10, 20)
        for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_loads_a_torch_state_dict(mlp: Callable[..., torch.nn.Sequential], train: Callable[..., None]) -> None:
    hyper: dict[str, Any] = {"lr": 0.05, "momentum": 0.8}
    theirs, ours = mlp(), mlp()
    torch_opt = torch.optim.SGD(theirs.parameters(), **hyper)
    train(theirs, torch_opt, 0, 5)
    ours.load_state_dict(theirs.state_dict())
    opt = SGD(ours.parameters(), lr=0.05, momentum=0.8)
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    train(theirs, torch_opt, 5, 10)
    train(ours, opt, 5, 10)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_closure_loss_is_returned_and_params_without_grad_are_untouched() -> None:
    used, unused = torch.nn.Parameter(torch.tensor([1.0])), torch.nn.Parameter(torch.tensor([3.0]))
    opt = SGD([used, unused], lr=0.5)

    def closure() -> float:
        opt.zero_grad()
        loss = (used * 2).sum()  # d/dp = 2 -> p = 1 - 0.5 * 2 = 0
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == 2.0
    assert used.item() == 0.0
    assert unused.item() == 3.0
    assert unused not in opt.state


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -0.1}, r"SGD: lr=-0.1 is outside \[0, inf\)"),
        ({"momentum": 1.0}, r"momentum=1.0 is outside \[0, 1\)"),
        ({"dampening": 1.5}, r"dampening=1.5 is outside \[0, 1\]"),
        ({"weight_decay": float("nan")}, "weight_decay=nan"),
        ({"lr": True}, "lr=True"),
        ({"nesterov": True}, "nesterov=True needs momentum > 0"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening 0"),
        ({"nesterov": "yes"}, "nesterov='yes' must be True or False"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        SGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_group_override_is_rejected_and_not_added() -> None:
    opt = SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(OptimizerError, match="momentum=-1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "momentum": -1})
    assert len(opt.param_groups) == 1


def test_sparse_and_complex_gradients_are_rejected() -> None:
    emb = torch.nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(OptimizerError, match="sparse gradient of shape \\(4, 2\\)"):
        SGD(emb.parameters(), lr=0.1).step()
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    z.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(OptimizerError, match="complex64 is not real floating point"):
        SGD([z], lr=0.1).step()
    assert issubclass(OptimizerError, EntrenarError) and issubclass(OptimizerError, ValueError)


def test_parameter_joining_late_gets_a_fresh_buffer_like_torch() -> None:
    # Step 1 only `a` has a gradient; step 2 both: `a` updates its buffer while `b` creates one.
    pairs = []
    for cls in (SGD, torch.optim.SGD):
        a, b = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))
        opt = cls([a, b], lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)
        a.grad = torch.tensor([0.5, -1.0])
        opt.step()
        a.grad, b.grad = torch.tensor([0.25, 0.75]), torch.tensor([2.0])
        opt.step()
        pairs.append((a.detach().clone(), b.detach().clone(), opt.state[b]["momentum_buffer"].clone()))
    for ours, theirs in zip(pairs[0], pairs[1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    # b's first buffer is its decayed gradient: 2 + 0.05 * 3 = 2.15.
    assert pairs[0][2].item() == pytest.approx(2.15)
