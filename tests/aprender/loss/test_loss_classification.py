"""aprender.loss.classification against torch.nn.functional (values and gradients) and hand-computed cases."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aprender.errors import InvalidArgumentError
from aprender.loss import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Reduction,
    binary_cross_entropy_with_logits,
    cross_entropy,
)

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")
IGNORE = -100


def value_and_grads(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The loss and its gradients w.r.t. every input, for a non-trivial upstream gradient."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    upstream = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out.detach(), *torch.autograd.grad(out, leaves, upstream))


def assert_all_close(ours: tuple[torch.Tensor, ...], oracle: tuple[torch.Tensor, ...]) -> None:
    for a, b in zip(ours, oracle, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@st.composite
def logits_and_targets(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (*, C) with * of 1 or 2 dims, targets with some ignored items but never all of them."""
    batch = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5))
    classes = draw(st.integers(2, 6))
    logits = draw(hnp.arrays(np.float64, (*batch, classes), elements=st.floats(-30, 30)))
    target = draw(hnp.arrays(np.int64, batch, elements=st.sampled_from([IGNORE, *range(classes)])))
    target.flat[0] = draw(st.integers(0, classes - 1))
    return torch.from_numpy(logits), torch.from_numpy(target)


def torch_ce(logits: torch.Tensor, target: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """F.cross_entropy with our class-last layout; "none" keeps the target's shape."""
    out = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), **kwargs)  # type: ignore[arg-type]
    return out.reshape(target.shape) if kwargs.get("reduction") == "none" else out


@settings(max_examples=50, deadline=None)
@given(
    data=logits_and_targets(),
    smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_matches_torch(
    data: tuple[torch.Tensor, torch.Tensor], smoothing: float, reduction: Reduction
) -> None:
    logits, target = data
    ours = value_and_grads(lambda x: cross_entropy(x, target, label_smoothing=smoothing, reduction=reduction), logits)
    oracle = value_and_grads(
        lambda x: torch_ce(x, target, ignore_index=IGNORE, label_smoothing=smoothing, reduction=reduction), logits
    )
    assert_all_close(ours, oracle)


@settings(max_examples=50, deadline=None)
@given(data=logits_and_targets(), reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**16))
def test_per_item_weights_equal_torch_class_weights(
    data: tuple[torch.Tensor, torch.Tensor], reduction: Reduction, seed: int
) -> None:
    # Per-item weight w_i = class_weight[y_i] is exactly torch's class weighting, mean = Σ w·l / Σ w.
    logits, target = data
    class_weight = torch.rand(logits.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    item_weight = class_weight[target.clamp_min(0)]
    ours = value_and_grads(lambda x: cross_entropy(x, target, weight=item_weight, reduction=reduction), logits)
    oracle = value_and_grads(lambda x: torch_ce(x, target, weight=class_weight, reduction=reduction), logits)
    assert_all_close(ours, oracle)


@settings(max_examples=30, deadline=None)
@given(data=logits_and_targets(), smoothing=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**16))
def test_weighted_mean_with_smoothing(data: tuple[torch.Tensor, torch.Tensor], smoothing: float, seed: int) -> None:
    # Oracle: torch's per-item losses, combined by hand as Σ w_i·l_i / Σ w_i over non-ignored items.
    logits, target = data
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1

    def oracle(x: torch.Tensor) -> torch.Tensor:
        per_item = torch_ce(x, target, ignore_index=IGNORE, label_smoothing=smoothing, reduction="none")
        kept = weight * (target != IGNORE)
        return (per_item * kept).sum() / kept.sum()

    ours = value_and_grads(lambda x: cross_entropy(x, target, weight=weight, label_smoothing=smoothing), logits)
    assert_all_close(ours, value_and_grads(oracle, logits))


def test_cross_entropy_hand_computed() -> None:
    # Logits (0, ln 3): p = (1/4, 3/4). Target 1: -ln(3/4). Smoothing 0.5: ½·(-ln ¾) + ½·mean(-ln ¼, -ln ¾).
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([1])
    torch.testing.assert_close(cross_entropy(logits, target), torch.tensor(-math.log(0.75)))
    expected = 0.5 * -math.log(0.75) + 0.5 * (-math.log(0.25) - math.log(0.75)) / 2
    torch.testing.assert_close(cross_entropy(logits, target, label_smoothing=0.5), torch.tensor(expected))


def test_all_ignored_mean_is_zero_with_zero_grads() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    target = torch.full((3,), IGNORE)
    loss = cross_entropy(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(3, 4))
    # zero weights on valid items behave the same way
    assert cross_entropy(logits, torch.tensor([0, 1, 2]), weight=torch.zeros(3)).item() == 0.0


def test_cross_entropy_class_passes_weight_and_settings() -> None:
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    target = torch.tensor([[1, 2, -1], [4, -1, 0]])
    weight = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 0.0]], dtype=torch.float64)
    loss = CrossEntropyLoss(ignore_index=-1, label_smoothing=0.1, reduction="sum")
    expected = cross_entropy(logits, target, weight=weight, ignore_index=-1, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss(logits, target, weight=weight), expected)
    assert loss(logits, target).item() != loss(logits, target, weight=weight).item()


def test_cross_entropy_validation() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(InvalidArgumentError, match="reduction='batchmean'"):
        cross_entropy(logits, torch.tensor([0, 1]), reduction="batchmean")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="label_smoothing"):
        cross_entropy(logits, torch.tensor([0, 1]), label_smoothing=1.5)
    with pytest.raises(InvalidArgumentError, match=r"need \(2,\)"):
        cross_entropy(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(InvalidArgumentError, match="class index 3 outside"):
        cross_entropy(logits, torch.tensor([0, 3]))
    with pytest.raises(InvalidArgumentError, match="class index -5"):
        cross_entropy(logits, torch.tensor([-5, 1]))
    with pytest.raises(InvalidArgumentError, match="integer class indices"):
        cross_entropy(logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(InvalidArgumentError, match="weight has shape"):
        cross_entropy(logits, torch.tensor([0, 1]), weight=torch.ones(3))
    with pytest.raises(InvalidArgumentError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=-0.1)


@st.composite
def bce_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    logits = draw(hnp.arrays(np.float64, shape, elements=st.floats(-60, 60)))
    target = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    return torch.from_numpy(logits), torch.from_numpy(target)


@settings(max_examples=50, deadline=None)
@given(
    data=bce_inputs(),
    pos_weight=st.one_of(st.none(), st.floats(0.1, 10.0), st.just("per-class")),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_bce_with_logits_matches_torch(
    data: tuple[torch.Tensor, torch.Tensor], pos_weight: float | str | None, reduction: Reduction
) -> None:
    logits, target = data
    if pos_weight == "per-class":
        weight: torch.Tensor | None = torch.linspace(0.5, 3.0, logits.shape[-1], dtype=torch.float64)
    else:
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    ours = value_and_grads(
        lambda x, y: binary_cross_entropy_with_logits(x, y, pos_weight=weight, reduction=reduction), logits, target
    )
    oracle = value_and_grads(
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=weight, reduction=reduction), logits, target
    )
    assert_all_close(ours, oracle)


def test_bce_hand_computed_and_class() -> None:
    # x = 0: σ = ½. Label 1 with pos_weight 3: -3·ln ½ = 3 ln 2; label 0: -ln ½ = ln 2.
    logits = torch.zeros(2)
    target = torch.tensor([1.0, 0.0])
    expected = torch.tensor([3 * math.log(2), math.log(2)])
    torch.testing.assert_close(
        binary_cross_entropy_with_logits(logits, target, pos_weight=3.0, reduction="none"), expected
    )
    torch.testing.assert_close(BCEWithLogitsLoss(pos_weight=3.0, reduction="none")(logits, target), expected)
    # per-class tuple: classes weighted 1 and 2 on two columns, both positive: ln 2 + 2 ln 2, mean over 2.
    per_class = BCEWithLogitsLoss(pos_weight=(1.0, 2.0))(torch.zeros(1, 2), torch.ones(1, 2))
    torch.testing.assert_close(per_class, torch.tensor(1.5 * math.log(2)))


def test_bce_validation() -> None:
    with pytest.raises(InvalidArgumentError, match="logits has shape"):
        binary_cross_entropy_with_logits(torch.zeros(2), torch.zeros(3))
    with pytest.raises(InvalidArgumentError, match="reduction"):
        BCEWithLogitsLoss(reduction="mean ")  # type: ignore[arg-type]
