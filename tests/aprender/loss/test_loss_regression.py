"""aprender.loss.regression against torch.nn.functional (values and gradients) and hand-computed cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aprender.errors import AprenderError, InvalidArgumentError
from aprender.loss import HuberLoss, MAELoss, MSELoss, Reduction, huber_loss, mae_loss, mse_loss

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")


@st.composite
def same_shape_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    pred = draw(hnp.arrays(np.float64, shape, elements=values))
    target = draw(hnp.arrays(np.float64, shape, elements=values))
    return torch.from_numpy(pred), torch.from_numpy(target)


def value_and_grads(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The loss and its gradients w.r.t. every input, for a non-trivial upstream gradient."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    upstream = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out.detach(), *torch.autograd.grad(out, leaves, upstream))


def assert_all_close(ours: tuple[torch.Tensor, ...], oracle: tuple[torch.Tensor, ...]) -> None:
    assert len(ours) == len(oracle)
    for a, b in zip(ours, oracle, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(pair=same_shape_pairs(), reduction=st.sampled_from(REDUCTIONS))
def test_mse_matches_torch(pair: tuple[torch.Tensor, torch.Tensor], reduction: Reduction) -> None:
    ours = value_and_grads(lambda p, t: mse_loss(p, t, reduction=reduction), *pair)
    oracle = value_and_grads(lambda p, t: F.mse_loss(p, t, reduction=reduction), *pair)
    assert_all_close(ours, oracle)


@settings(max_examples=50, deadline=None)
@given(pair=same_shape_pairs(), reduction=st.sampled_from(REDUCTIONS))
def test_mae_matches_torch(pair: tuple[torch.Tensor, torch.Tensor], reduction: Reduction) -> None:
    ours = value_and_grads(lambda p, t: mae_loss(p, t, reduction=reduction), *pair)
    oracle = value_and_grads(lambda p, t: F.l1_loss(p, t, reduction=reduction), *pair)
    assert_all_close(ours, oracle)


@settings(max_examples=50, deadline=None)
@given(
    pair=same_shape_pairs(),
    delta=st.floats(1e-3, 1e3),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_huber_matches_torch(pair: tuple[torch.Tensor, torch.Tensor], delta: float, reduction: Reduction) -> None:
    ours = value_and_grads(lambda p, t: huber_loss(p, t, delta=delta, reduction=reduction), *pair)
    oracle = value_and_grads(lambda p, t: F.huber_loss(p, t, delta=delta, reduction=reduction), *pair)
    assert_all_close(ours, oracle)


def test_huber_hand_computed() -> None:
    # residuals 0.5 and 3 with delta 1: ½·0.5² = 0.125 (quadratic zone), 1·(3 - ½) = 2.5 (linear zone).
    pred = torch.tensor([1.5, 3.0])
    target = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(huber_loss(pred, target, reduction="none"), torch.tensor([0.125, 2.5]))
    # delta 4 puts both in the quadratic zone: ½·9 = 4.5.
    torch.testing.assert_close(HuberLoss(delta=4.0)(pred, target), torch.tensor((0.125 + 4.5) / 2))


def test_classes_delegate_with_their_reduction() -> None:
    pred = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # residuals 1, -2, -0.5, 3: squares 1 + 4 + 0.25 + 9 = 14.25; absolutes 1 + 2 + 0.5 + 3 = 6.5.
    torch.testing.assert_close(MSELoss(reduction="sum")(pred, target), torch.tensor(14.25))
    torch.testing.assert_close(MSELoss()(pred, target), torch.tensor(14.25 / 4))
    torch.testing.assert_close(MAELoss(reduction="sum")(pred, target), torch.tensor(6.5))
    assert MAELoss(reduction="none")(pred, target).shape == (2, 2)


@pytest.mark.parametrize("fn", [mse_loss, mae_loss, huber_loss])
def test_bad_reduction_and_shapes_raise(fn: Callable[..., torch.Tensor]) -> None:
    x = torch.zeros(3)
    with pytest.raises(InvalidArgumentError, match="reduction='avg'"):
        fn(x, x, reduction="avg")
    with pytest.raises(InvalidArgumentError, match=r"shape \(3,\).*shape \(1, 3\)"):
        fn(x, torch.zeros(1, 3))


@pytest.mark.parametrize("delta", [0.0, -1.0, float("inf"), float("nan")])
def test_huber_rejects_bad_delta(delta: float) -> None:
    with pytest.raises(InvalidArgumentError, match="delta"):
        huber_loss(torch.zeros(2), torch.zeros(2), delta=delta)
    with pytest.raises(InvalidArgumentError, match="delta"):
        HuberLoss(delta=delta)


@pytest.mark.parametrize("cls", [MSELoss, MAELoss, HuberLoss])
def test_constructor_validates_reduction(cls: type) -> None:
    with pytest.raises(AprenderError, match="reduction='total'"):
        cls(reduction="total")
    with pytest.raises(ValueError):  # InvalidArgumentError is also a ValueError
        cls(reduction="total")
