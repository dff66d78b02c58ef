"""Adam and AdamW against torch.optim: parameters after every step of 20, with groups, decay and clipping.

The oracles are torch.optim.Adam / torch.optim.AdamW on an identical MLP with the same data, in
their single-tensor (foreach=False) and multi-tensor (foreach=True) paths.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.errors import OptimizerError
from entrenar.optim import Adam, AdamW

PAIRS = [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_matches_torch_step_by_step(
    lockstep: Callable[..., Any], ours: type[Adam], theirs: type[torch.optim.Adam], amsgrad: bool, foreach: bool
) -> None:
    hyper: dict[str, Any] = {"betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": amsgrad}
    lockstep(
        lambda groups: ours(groups, **hyper),
        lambda groups: theirs(groups, foreach=foreach, **hyper),
        lr=1e-2,
        weight_decay=0.1,
        max_norm=0.5,
    )


def test_adam_with_decoupled_decay_matches_torch(lockstep: Callable[..., Any]) -> None:
    lockstep(
        lambda groups: Adam(groups, decoupled_weight_decay=True),
        lambda groups: torch.optim.Adam(groups, decoupled_weight_decay=True),
        lr=1e-2,
        weight_decay=0.2,
    )


@settings(max_examples=20, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    lr=st.floats(1e-5, 0.1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    weight_decay=st.floats(0.0, 0.5),
    amsgrad=st.booleans(),
    max_norm=st.none() | st.floats(0.05, 5.0),
)
def test_matches_torch_over_hyperparameters(
    lockstep: Callable[..., Any],
    pair: tuple[type[Adam], type[torch.optim.Adam]],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    max_norm: float | None,
) -> None:
    ours, theirs = pair
    hyper: dict[str, Any] = {"betas": (beta1, beta2), "eps": eps, "amsgrad": amsgrad}
    lockstep(
        lambda groups: ours(groups, **hyper),
        lambda groups: theirs(groups, **hyper),
        lr=lr,
        weight_decay=weight_decay,
        steps=6,
        max_norm=max_norm,
    )


def test_first_step_by_hand() -> None:
    # Step 1 with zero moments: m = (1 - b1) g, v = (1 - b2) g^2, the bias corrections cancel them, so
    # the update is lr * g / (|g| + eps) = lr * sign(g) (eps = 0). AdamW first shrinks p by (1 - lr * wd):
    # p = 2 * (1 - 0.1 * 0.5) - 0.1 = 1.8. Adam adds wd * p to g instead (g = 3 + 1 > 0): p = 2 - 0.1 = 1.9.
    for cls, expected in ((AdamW, 1.8), (Adam, 1.9)):
        p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
        p.grad = torch.tensor([3.0], dtype=torch.float64)
        opt = cls([p], lr=0.1, eps=0.0, weight_decay=0.5)
        opt.step()
        assert p.item() == pytest.approx(expected, abs=1e-12), cls.__name__
        state = opt.state[p]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].item() == 1.0 and state["step"].dtype == torch.float32


def test_amsgrad_keeps_the_running_maximum() -> None:
    # v after a large then a small gradient decays, the maximum stays: v1 = 0.1 * 16 = 1.6,
    # v2 = 0.9 * 1.6 + 0.1 * 0.01 = 1.441 < max = 1.6 (betas (0, 0.9)).
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = Adam([p], lr=0.1, betas=(0.0, 0.9), amsgrad=True)
    for g in (4.0, 0.1):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert opt.state[p]["exp_avg_sq"].item() == pytest.approx(1.441)
    assert opt.state[p]["max_exp_avg_sq"].item() == pytest.approx(1.6)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_resume_from_state_dict_continues_identically_in_either_implementation(
    mlp: Callable[..., torch.nn.Sequential], train: Callable[..., None], ours: type[Adam], theirs: type[Any]
) -> None:
    hyper: dict[str, Any] = {"lr": 1e-2, "weight_decay": 0.05, "amsgrad": True}
    straight = mlp()
    train(straight, ours(straight.parameters(), **hyper), 0, 20)
    first = mlp()
    opt = ours(first.parameters(), **hyper)
    train(first, opt, 0, 10)
    saved_model, saved_opt = copy.deepcopy(first.state_dict()), copy.deepcopy(opt.state_dict())
    for make in (ours, theirs):
        resumed = mlp(seed=3)
        resumed.load_state_dict(saved_model)
        opt2 = make(resumed.parameters(), lr=5.0)
        opt2.load_state_dict(copy.deepcopy(saved_opt))
        assert opt2.param_groups[0]["lr"] == 1e-2
        train(resumed, opt2, 10, 20)
        for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_loads_a_torch_state_dict(mlp: Callable[..., torch.nn.Sequential], train: Callable[..., None]) -> None:
    theirs, ours = mlp(), mlp()
    torch_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    train(theirs, torch_opt, 0, 5)
    ours.load_state_dict(theirs.state_dict())
    opt = AdamW(ours.parameters())
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    train(theirs, torch_opt, 5, 10)
    train(ours, opt, 5, 10)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_closure_and_skipped_params() -> None:
    used, unused = torch.nn.Parameter(torch.tensor([1.0])), torch.nn.Parameter(torch.tensor([3.0]))
    opt = AdamW([used, unused], lr=0.5, weight_decay=0.0)

    def closure() -> float:
        opt.zero_grad()
        loss = (used * 2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == 2.0
    assert used.item() == pytest.approx(0.5)  # first Adam step moves by lr * sign(g) (up to eps)
    assert unused.item() == 3.0 and unused not in opt.state


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1e-3}, r"AdamW: lr=-0.001 is outside \[0, inf\)"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]=1.0 is outside \[0, 1\)"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]=-0.1"),
        ({"betas": (0.9,)}, "must be a pair"),
        ({"eps": -1.0}, "eps=-1.0"),
        ({"weight_decay": math.inf}, "weight_decay=inf"),
        ({"amsgrad": 1}, "amsgrad=1 must be True or False"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_sparse_gradients_are_rejected() -> None:
    emb = torch.nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(OptimizerError, match="Adam: got a sparse gradient"):
        Adam(emb.parameters()).step()
