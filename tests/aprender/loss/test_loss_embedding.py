"""aprender.loss.embedding: pairwise contrastive by hand, triplet and cosine against torch.nn.functional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aprender.errors import InvalidArgumentError
from aprender.loss import (
    CosineEmbeddingLoss,
    PairwiseContrastiveLoss,
    Reduction,
    TripletMarginLoss,
    cosine_embedding_loss,
    pairwise_contrastive_loss,
    triplet_margin_loss,
)

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")


@st.composite
def embedding_batches(draw: st.DrawFn, count: int) -> list[torch.Tensor]:
    n, d = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    values = st.floats(-10, 10)
    return [torch.from_numpy(draw(hnp.arrays(np.float64, (n, d), elements=values))) for _ in range(count)]


def grads_of(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    upstream = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    return torch.autograd.grad(loss, inputs, upstream)


def test_pairwise_contrastive_hand_computed() -> None:
    # x1 = (0, 0), x2 = (3, 4): d = 5. Similar: ½·5² = 12.5. Dissimilar, margin 1: max(0, 1 - 5) = 0;
    # margin 6: ½·(6 - 5)² = 0.5.
    x1 = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    x2 = torch.tensor([[3.0, 4.0], [3.0, 4.0]], dtype=torch.float64)
    similar = torch.tensor([True, False])
    per_pair = pairwise_contrastive_loss(x1, x2, similar, margin=1.0, reduction="none")
    torch.testing.assert_close(per_pair, torch.tensor([12.5, 0.0], dtype=torch.float64))
    wide = pairwise_contrastive_loss(x1, x2, similar.long(), margin=6.0, reduction="none")
    torch.testing.assert_close(wide, torch.tensor([12.5, 0.5], dtype=torch.float64))
    # gradients w.r.t. x1: similar ½‖x1 - x2‖² → x1 - x2 = (-3, -4); dissimilar ½(m - d)² → -(m - d)·(x1 - x2)/d
    # = -(1)·(-3, -4)/5 = (0.6, 0.8).
    (grad,) = torch.autograd.grad(wide.sum(), x1)
    torch.testing.assert_close(grad, torch.tensor([[-3.0, -4.0], [0.6, 0.8]], dtype=torch.float64))


def test_pairwise_contrastive_identical_points_have_finite_grads() -> None:
    x = torch.ones(2, 3, requires_grad=True)
    loss = pairwise_contrastive_loss(x, x.detach().clone(), torch.tensor([1, 0]), margin=2.0, reduction="none")
    # d = 0: similar costs 0, dissimilar costs ½·2² = 2; the norm's gradient at 0 is taken as 0.
    torch.testing.assert_close(loss, torch.tensor([0.0, 2.0]))
    loss.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pairwise_contrastive_class_unpacks_pairs() -> None:
    generator = torch.Generator().manual_seed(0)
    pairs = torch.randn(5, 2, 3, generator=generator)
    similar = torch.tensor([1, 0, 1, 0, 0])
    expected = pairwise_contrastive_loss(pairs[:, 0], pairs[:, 1], similar, margin=2.0, reduction="sum")
    torch.testing.assert_close(PairwiseContrastiveLoss(margin=2.0, reduction="sum")(pairs, similar), expected)


@settings(max_examples=50, deadline=None)
@given(
    batches=embedding_batches(3),
    margin=st.floats(0.01, 5.0),
    p=st.sampled_from([1.0, 2.0, 3.0]),
    eps=st.sampled_from([0.0, 1e-6, 1e-2]),
    swap=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
@example(  # found by hypothesis: the negative's cubed distance underflows to 0
    batches=[torch.zeros(1, 1, dtype=torch.float64)] * 2 + [torch.full((1, 1), 1.3371e-211, dtype=torch.float64)],
    margin=1.0,
    p=3.0,
    eps=0.0,
    swap=False,
    reduction="mean",
)
def test_triplet_matches_torch(
    batches: list[torch.Tensor], margin: float, p: float, eps: float, swap: bool, reduction: Reduction
) -> None:
    inputs = [b.clone().requires_grad_(True) for b in batches]
    kwargs = {"margin": margin, "p": p, "eps": eps, "swap": swap, "reduction": reduction}
    ours = triplet_margin_loss(*inputs, **kwargs)  # type: ignore[arg-type]
    oracle = F.triplet_margin_loss(*inputs, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(ours, oracle)
    # equal_nan: a p-th power that underflows (p = 3, eps = 0, a distance of 1e-211) gives torch's norm gradient
    # 0 / 0 = NaN at the same places in both.
    for a, b in zip(grads_of(ours, inputs), grads_of(oracle, inputs), strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_triplet_class_unpacks_positive_and_negative() -> None:
    generator = torch.Generator().manual_seed(1)
    anchor, positive, negative = (torch.randn(4, 3, generator=generator) for _ in range(3))
    loss = TripletMarginLoss(margin=3.0, p=1.0, swap=True, reduction="none")
    expected = F.triplet_margin_loss(anchor, positive, negative, margin=3.0, p=1.0, swap=True, reduction="none")
    torch.testing.assert_close(loss(anchor, torch.stack([positive, negative], dim=1)), expected)


@settings(max_examples=50, deadline=None)
@given(
    batches=embedding_batches(2),
    margin=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cosine_embedding_matches_torch(
    batches: list[torch.Tensor], margin: float, seed: int, reduction: Reduction
) -> None:
    inputs = [b.clone().requires_grad_(True) for b in batches]
    label = torch.randint(0, 2, (inputs[0].shape[0],), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    x1, x2 = inputs
    ours = cosine_embedding_loss(x1, x2, label, margin=margin, reduction=reduction)
    oracle = F.cosine_embedding_loss(x1, x2, label, margin=margin, reduction=reduction)
    torch.testing.assert_close(ours, oracle)
    for a, b in zip(grads_of(ours, inputs), grads_of(oracle, inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_cosine_embedding_hand_computed_and_class() -> None:
    # pair 1: (1, 0) vs (1, 1): cos = 1/√2, label 1 → 1 - 1/√2. pair 2: same vectors, label -1, margin 0.5:
    # max(0, 1/√2 - 0.5) = 1/√2 - 0.5.
    pairs = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    label = torch.tensor([1, -1])
    c = 2**-0.5
    loss = CosineEmbeddingLoss(margin=0.5, reduction="none")(pairs, label)
    torch.testing.assert_close(loss, torch.tensor([1 - c, c - 0.5], dtype=torch.float64))


def test_validation() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(InvalidArgumentError, match="labels must be 0 or 1"):
        pairwise_contrastive_loss(x, x, torch.tensor([0, 1, 2]))
    with pytest.raises(InvalidArgumentError, match="labels must be 1 or -1"):
        cosine_embedding_loss(x, x, torch.tensor([0, 1, -1]))
    with pytest.raises(InvalidArgumentError, match=r"one label per pair, shape \(3,\)"):
        cosine_embedding_loss(x, x, torch.tensor([1, 1]))
    with pytest.raises(InvalidArgumentError, match="x2 has shape"):
        pairwise_contrastive_loss(x, torch.zeros(3, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(InvalidArgumentError, match=r"x1 has shape \(3,\)"):
        pairwise_contrastive_loss(x[:, 0], x[:, 0], torch.tensor([0, 1, 1]))
    with pytest.raises(InvalidArgumentError, match="margin"):
        pairwise_contrastive_loss(x, x, torch.tensor([0, 1, 1]), margin=-1.0)
    with pytest.raises(InvalidArgumentError, match="margin"):
        cosine_embedding_loss(x, x, torch.tensor([1, 1, 1]), margin=2.0)
    with pytest.raises(InvalidArgumentError, match="p=0"):
        triplet_margin_loss(x, x, x, p=0.0)
    with pytest.raises(InvalidArgumentError, match="negative has shape"):
        triplet_margin_loss(x, x, torch.zeros(2, 2))
    with pytest.raises(InvalidArgumentError, match=r"pred has shape \(3, 2\)"):
        PairwiseContrastiveLoss()(x, torch.tensor([0, 1, 1]))
    with pytest.raises(InvalidArgumentError, match=r"target has shape \(3, 3, 2\)"):
        TripletMarginLoss()(x, torch.zeros(3, 3, 2))
    with pytest.raises(InvalidArgumentError, match="eps"):
        TripletMarginLoss(eps=-1.0)
    with pytest.raises(InvalidArgumentError, match=r"margin=0\.0"):
        TripletMarginLoss(margin=0.0)
    with pytest.raises(InvalidArgumentError, match="margin"):
        CosineEmbeddingLoss(margin=-1.5)
    with pytest.raises(InvalidArgumentError, match="margin"):
        PairwiseContrastiveLoss(margin=float("inf"))
