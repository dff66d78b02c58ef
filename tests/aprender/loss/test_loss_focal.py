"""aprender.loss.focal: hand-computed cases, the paper's gradient formula, and reductions to cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aprender.errors import InvalidArgumentError
from aprender.loss import BinaryFocalLoss, MulticlassFocalLoss, Reduction, binary_focal_loss, multiclass_focal_loss

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")


def test_binary_hand_computed() -> None:
    # x = 0, y = 1: p_t = ½, -ln p_t = ln 2, (1 - p_t)² = ¼, α_t = 0.25 → 0.25·0.25·ln 2.
    # x = ln 3, y = 0: p = ¾, p_t = ¼, -ln p_t = ln 4, (1 - p_t)² = 9/16, α_t = 1 - 0.25 → 0.75·(9/16)·ln 4.
    logits = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([0.0625 * math.log(2), 0.75 * 9 / 16 * math.log(4)], dtype=torch.float64)
    torch.testing.assert_close(binary_focal_loss(logits, target, reduction="none"), expected)
    torch.testing.assert_close(BinaryFocalLoss(alpha=0.25, gamma=2.0)(logits, target), expected.mean())
    # alpha None, gamma 1: (1 - p_t)·(-ln p_t) → ½ ln 2 and ¾ ln 4.
    no_alpha = binary_focal_loss(logits, target, alpha=None, gamma=1.0, reduction="sum")
    torch.testing.assert_close(no_alpha, torch.tensor(0.5 * math.log(2) + 0.75 * math.log(4), dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-15, 15)),
    gamma=st.sampled_from([0.0, 1.0, 2.0, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_binary_gradient_matches_paper_formula(logits: np.ndarray, gamma: float, seed: int) -> None:
    # Lin et al. 2017, appendix B: with y ∈ {±1}, p_t = σ(y·x):
    #   dFL/dx = y·(1 - p_t)^γ·(γ·p_t·ln p_t + p_t - 1)     (alpha omitted)
    x = torch.from_numpy(logits).requires_grad_(True)
    y01 = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)).to(torch.float64)
    binary_focal_loss(x, y01, alpha=None, gamma=gamma, reduction="sum").backward()
    y = 2 * y01 - 1
    p_t = torch.sigmoid(y * x.detach())
    expected = y * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=st.floats(-40, 40)),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_binary_gamma_zero_is_bce(logits: np.ndarray, reduction: Reduction) -> None:
    x = torch.from_numpy(logits)
    target = (x > 0).to(torch.float64).flip(0)
    ours = binary_focal_loss(x, target, alpha=None, gamma=0.0, reduction=reduction)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, target, reduction=reduction))


def test_multiclass_hand_computed() -> None:
    # Uniform logits over 3 classes: p_y = ⅓, FL = (1 - ⅓)²·ln 3 = (4/9)·ln 3; alpha (0.5, 1, 2) on class 2 → ×2.
    logits = torch.zeros(3, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, -100])
    base = 4 / 9 * math.log(3)
    torch.testing.assert_close(
        multiclass_focal_loss(logits, target, reduction="none"), torch.tensor([base, base, 0.0], dtype=torch.float64)
    )
    weighted = MulticlassFocalLoss(alpha=(0.5, 1.0, 2.0), gamma=2.0)(logits, target)
    # mean over the 2 non-ignored items, alpha does not renormalise: (0.5·base + 2·base) / 2
    torch.testing.assert_close(weighted, torch.tensor(1.25 * base, dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 5)), elements=st.floats(-20, 20)),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_multiclass_gamma_zero_is_cross_entropy(logits: np.ndarray, reduction: Reduction) -> None:
    x = torch.from_numpy(logits).requires_grad_(True)
    target = torch.arange(x.shape[0]) % x.shape[1]
    target[-1] = -100
    ours = multiclass_focal_loss(x, target, gamma=0.0, reduction=reduction)
    oracle = F.cross_entropy(x, target, reduction=reduction)
    if reduction == "mean" and x.shape[0] == 1:
        oracle = torch.zeros((), dtype=torch.float64)  # torch gives NaN when every item is ignored; we give 0
    torch.testing.assert_close(ours, oracle)


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(np.float64, st.integers(1, 10), elements=st.floats(-20, 20)),
    gamma=st.sampled_from([0.5, 2.0, 3.0]),
)
def test_two_class_softmax_equals_sigmoid_form(logits: np.ndarray, gamma: float) -> None:
    # softmax over (0, x) gives p_1 = σ(x): the multi-class loss on 2 classes is the binary loss of x.
    x = torch.from_numpy(logits)
    target = (torch.arange(x.shape[0]) % 2).to(torch.int64)
    two_class = torch.stack([torch.zeros_like(x), x], dim=-1)
    ours = multiclass_focal_loss(two_class, target, gamma=gamma, reduction="none")
    binary = binary_focal_loss(x, target.to(torch.float64), alpha=None, gamma=gamma, reduction="none")
    torch.testing.assert_close(ours, binary, rtol=1e-9, atol=1e-12)


def test_all_ignored_is_zero() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = multiclass_focal_loss(logits, torch.tensor([-1, -1]), ignore_index=-1)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and not logits.grad.any()


def test_validation() -> None:
    with pytest.raises(InvalidArgumentError, match="gamma"):
        binary_focal_loss(torch.zeros(1), torch.zeros(1), gamma=-1.0)
    with pytest.raises(InvalidArgumentError, match="alpha"):
        binary_focal_loss(torch.zeros(1), torch.zeros(1), alpha=1.5)
    with pytest.raises(InvalidArgumentError, match="alpha"):
        BinaryFocalLoss(alpha=-0.1)
    with pytest.raises(InvalidArgumentError, match=r"one weight per class, shape \(3,\)"):
        multiclass_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=(1.0, 1.0))
    with pytest.raises(InvalidArgumentError, match="class index 3"):
        multiclass_focal_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(InvalidArgumentError, match="reduction"):
        MulticlassFocalLoss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="gamma"):
        MulticlassFocalLoss(gamma=float("nan"))
