"""aprender.loss.contrastive: InfoNCE and NT-Xent on hand-computed cases and against independent oracles."""

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
from aprender.loss import InfoNCELoss, NTXentLoss, Reduction, info_nce_loss, nt_xent_loss

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")

embeddings = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=st.floats(-10, 10)
).filter(lambda a: bool((np.linalg.norm(a, axis=1) > 1e-3).all()))


def test_info_nce_two_by_two() -> None:
    # q = k = identity rows: cosine logits = I / τ. Each row: -log(e^{1/τ} / (e^{1/τ} + e^0)) = log(e^{1/τ} + 1) - 1/τ.
    eye = torch.eye(2, dtype=torch.float64)
    for tau in (1.0, 0.5):
        expected = math.log(math.exp(1 / tau) + 1) - 1 / tau
        per_query = info_nce_loss(eye, eye, temperature=tau, reduction="none")
        torch.testing.assert_close(per_query, torch.full((2,), expected, dtype=torch.float64))
    # Unnormalised q = 2·e1, k = I: logits (2, 0) for query 0 → log(e² + 1) - 2; query 1 stays at τ = 1 value.
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    raw = InfoNCELoss(temperature=1.0, normalize=False, reduction="none")(q, eye)
    expected_raw = torch.tensor([math.log(math.exp(2) + 1) - 2, math.log(math.e + 1) - 1], dtype=torch.float64)
    torch.testing.assert_close(raw, expected_raw)
    normalised = InfoNCELoss(temperature=1.0, reduction="none")(q, eye)
    torch.testing.assert_close(normalised, torch.full((2,), math.log(math.e + 1) - 1, dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(
    query=embeddings,
    seed=st.integers(0, 2**16),
    temperature=st.sampled_from([0.05, 0.5, 1.0]),
    normalize=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_info_nce_is_cross_entropy_over_in_batch_keys(
    query: np.ndarray, seed: int, temperature: float, normalize: bool, reduction: Reduction
) -> None:
    q = torch.from_numpy(query).requires_grad_(True)
    k = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_(True)
    ours = info_nce_loss(q, k, temperature=temperature, normalize=normalize, reduction=reduction)
    qq, kk = (F.normalize(q, dim=1), F.normalize(k, dim=1)) if normalize else (q, k)
    oracle = F.cross_entropy(qq @ kk.T / temperature, torch.arange(q.shape[0]), reduction=reduction)
    torch.testing.assert_close(ours, oracle)
    upstream = torch.ones_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, (q, k), upstream), torch.autograd.grad(oracle, (q, k), upstream), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_nt_xent_hand_computed() -> None:
    # z1 = z2 = (e1, e2) → z = (e1, e2, e1, e2). For z_0 = e1 the candidates k ≠ 0 have cosines (0, 1, 0) and
    # the positive is index 2: l = -log(e^1 / (e^0 + e^1 + e^0)) = log(e + 2) - 1, the same for all 4 by symmetry.
    eye = torch.eye(2, dtype=torch.float64)
    expected = math.log(math.e + 2) - 1
    torch.testing.assert_close(
        nt_xent_loss(eye, eye, temperature=1.0, reduction="none"), torch.full((4,), expected, dtype=torch.float64)
    )
    torch.testing.assert_close(NTXentLoss(temperature=1.0)(eye, eye), torch.tensor(expected, dtype=torch.float64))


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR algorithm 1 written out with loops: ℓ(i, j) = -log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ))."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [F.cosine_similarity(z[i], z[k], dim=0, eps=0.0) / tau for k in range(2 * n)]
        denominator = sum(torch.exp(sims[k]) for k in range(2 * n) if k != i)
        losses.append(-torch.log(torch.exp(sims[j]) / denominator))
    return torch.stack(losses)


@settings(max_examples=30, deadline=None)
@given(z1=embeddings, seed=st.integers(0, 2**16), temperature=st.sampled_from([0.1, 0.5, 2.0]))
def test_nt_xent_matches_loop_reference(z1: np.ndarray, seed: int, temperature: float) -> None:
    a = torch.from_numpy(z1).requires_grad_(True)
    b = (torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1).requires_grad_(
        True
    )
    ours = nt_xent_loss(a, b, temperature=temperature, reduction="none")
    oracle = nt_xent_reference(a, b, temperature)
    torch.testing.assert_close(ours, oracle)
    upstream = torch.linspace(0.5, 1.5, ours.numel(), dtype=torch.float64)
    for x, y in zip(
        torch.autograd.grad(ours, (a, b), upstream), torch.autograd.grad(oracle, (a, b), upstream), strict=True
    ):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(nt_xent_loss(a, b, temperature=temperature), oracle.mean())
    torch.testing.assert_close(nt_xent_loss(a, b, temperature=temperature, reduction="sum"), oracle.sum())


def test_validation() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        info_nce_loss(x, x, temperature=0.0)
    with pytest.raises(InvalidArgumentError, match=r"query has shape \(3, 4, 1\)"):
        info_nce_loss(x[..., None], x[..., None])
    with pytest.raises(InvalidArgumentError, match="key has shape"):
        info_nce_loss(x, torch.randn(2, 4))
    with pytest.raises(InvalidArgumentError, match="z2 has shape"):
        nt_xent_loss(x, torch.randn(3, 5))
    with pytest.raises(InvalidArgumentError, match="reduction"):
        nt_xent_loss(x, x, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="temperature"):
        NTXentLoss(temperature=-1.0)
    with pytest.raises(InvalidArgumentError, match="reduction"):
        InfoNCELoss(reduction="max")  # type: ignore[arg-type]
