"""aprender.loss.distill_topk: the sparse teacher cache and the divergence over top-k tokens plus a tail bucket.

References: ``torch.topk`` of the float64 log-softmax for the cache; `distillation_loss` with the dense teacher
(equal when k = V, an upper bound otherwise: merging outcomes never increases a divergence).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from aprender.errors import InvalidArgumentError
from aprender.loss import (
    DIVERGENCES,
    Divergence,
    TeacherHead,
    TopKTeacher,
    distillation_loss,
    topk_distillation_loss,
    topk_teacher,
    topk_teacher_heads,
)
from fixtures.threads import torch_threads


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_cache_holds_the_top_k_and_the_tail() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 7, 30, generator=generator) * 3).to(torch.bfloat16)
    cache = topk_teacher(logits, 5, temperature=0.5, chunk_size=3)
    assert cache.ids.shape == cache.logprobs.shape == (2, 7, 5) and cache.tail_logmass.shape == (2, 7)
    assert cache.ids.dtype == torch.long and cache.logprobs.dtype == cache.tail_logmass.dtype == torch.float32
    log_p = torch.log_softmax(logits.double() / 0.5, dim=-1)
    expected_logprobs, expected_ids = log_p.topk(5, dim=-1)
    assert torch.equal(cache.ids, expected_ids)
    torch.testing.assert_close(cache.logprobs.double(), expected_logprobs, rtol=0, atol=1e-6)
    tail = torch.log1p(-expected_logprobs.exp().sum(-1))  # log(1 - Σ top-k probs)
    torch.testing.assert_close(cache.tail_logmass.double(), tail, rtol=1e-5, atol=1e-6)
    for chunk_size in (1, 1000):  # chunking changes nothing
        assert all(map(torch.equal, topk_teacher(logits, 5, temperature=0.5, chunk_size=chunk_size), cache))
    full = topk_teacher(logits, 30)
    assert torch.equal(full.tail_logmass, torch.full((2, 7), -torch.inf))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_k_equal_to_vocabulary_is_the_dense_divergence(divergence: Divergence, temperature: float) -> None:
    generator = torch.Generator().manual_seed(1)
    student = (torch.randn(3, 4, 25, generator=generator) * 2).requires_grad_(True)
    teacher = torch.randn(3, 4, 25, generator=generator) * 2
    labels = torch.randint(0, 25, (3, 4), generator=generator)
    labels[0, 1] = labels[2, 3] = -100
    options = dict(divergence=divergence, temperature=temperature, beta=0.4, skew=0.3, labels=labels)
    for reduction in ("none", "mean"):
        dense = distillation_loss(student, teacher, reduction=reduction, **options)  # type: ignore[arg-type]
        cache = topk_teacher(teacher, 25, temperature=temperature)
        sparse = topk_distillation_loss(student, *cache, reduction=reduction, **options)  # type: ignore[arg-type]
        torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-5)
        (grad_dense,) = torch.autograd.grad(dense.sum(), student)
        (grad_sparse,) = torch.autograd.grad(sparse.sum(), student)
        torch.testing.assert_close(grad_sparse, grad_dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_small_k_is_a_close_lower_bound_for_a_peaked_teacher(divergence: Divergence) -> None:
    # Zipf-like teacher (logits -3·log rank, shuffled, plus noise: top-1 holds ~80% of the mass, top-32 ~99.96%)
    # and a noisy student. Measured relative gaps (sparse below dense): k = 1: 12-34%, k = 8: 0.6-2.7%,
    # k = 32: <= 0.2% across the six divergences.
    generator = torch.Generator().manual_seed(0)
    ranks = torch.stack([torch.randperm(2000, generator=generator) for _ in range(64)]) + 1
    teacher = -3.0 * ranks.float().log() + 0.3 * torch.randn(64, 2000, generator=generator)
    student = teacher + torch.randn(64, 2000, generator=generator)
    dense = distillation_loss(student, teacher, divergence=divergence).item()
    sparse = [
        topk_distillation_loss(student, *topk_teacher(teacher, k), divergence=divergence).item() for k in (1, 8, 32)
    ]
    assert sparse == sorted(sparse) and sparse[-1] <= dense + 1e-6  # more buckets, more divergence, never above
    assert dense - sparse[1] < 0.03 * dense and dense - sparse[2] < 0.003 * dense


def test_validation() -> None:
    student = torch.zeros(4, 10)
    cache = topk_teacher(torch.randn(4, 10), 3)
    with pytest.raises(InvalidArgumentError, match=r"k=11 must be an integer in \[1, 10\]"):
        topk_teacher(student, 11)
    with pytest.raises(InvalidArgumentError, match="chunk_size=0"):
        topk_teacher(student, 2, chunk_size=0)
    with pytest.raises(InvalidArgumentError, match="pass floating logits"):
        topk_teacher(torch.zeros(4, 10, dtype=torch.long), 2)
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        topk_distillation_loss(student, cache.ids[:, :2], cache.logprobs, cache.tail_logmass)
    with pytest.raises(InvalidArgumentError, match="tail_logmass has shape"):
        topk_distillation_loss(student, cache.ids, cache.logprobs, cache.tail_logmass[:3])
    with pytest.raises(InvalidArgumentError, match="pass integer ids"):
        topk_distillation_loss(student, cache.ids.float(), cache.logprobs, cache.tail_logmass)
    with pytest.raises(InvalidArgumentError, match=r"outside \[0, 10\)"):
        topk_distillation_loss(student, cache.ids + 10, cache.logprobs, cache.tail_logmass)
    with pytest.raises(InvalidArgumentError, match="skew=2"):
        topk_distillation_loss(student, *cache, skew=2)
    assert isinstance(cache, TopKTeacher)


def test_cache_from_teacher_heads_and_mixtures() -> None:
    generator = torch.Generator().manual_seed(3)
    hidden = [torch.randn(11, 6, generator=generator), torch.randn(11, 4, generator=generator)]
    weights = [torch.randn(30, 6, generator=generator), torch.randn(30, 4, generator=generator)]
    one = topk_teacher_heads(TeacherHead(hidden[0], weights[0]), 7, temperature=2.0, chunk_size=4)
    expected = topk_teacher(hidden[0].double() @ weights[0].double().T, 7, temperature=2.0)
    assert torch.equal(one.ids, expected.ids)
    torch.testing.assert_close(one.logprobs.double(), expected.logprobs.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(one.tail_logmass.double(), expected.tail_logmass.double(), rtol=0, atol=1e-6)
    heads = [TeacherHead(h, w, m) for h, w, m in zip(hidden, weights, (1.0, 3.0), strict=True)]
    mixed = topk_teacher_heads(heads, 30, temperature=0.5, chunk_size=5)
    probs = sum(
        m / 4 * torch.softmax(h.double() @ w.double().T / 0.5, dim=-1)
        for h, w, m in zip(hidden, weights, (1.0, 3.0), strict=True)
    )
    assert isinstance(probs, torch.Tensor)
    expected_logprobs, expected_ids = probs.log().topk(30, dim=-1)
    assert torch.equal(mixed.ids, expected_ids)
    torch.testing.assert_close(mixed.logprobs.double(), expected_logprobs, rtol=0, atol=1e-5)
    assert torch.equal(mixed.tail_logmass, torch.full((11,), -torch.inf))
    with pytest.raises(InvalidArgumentError, match="no teacher given"):
        topk_teacher_heads([], 3)
    with pytest.raises(InvalidArgumentError, match=r"k=31 must be an integer in \[1, 30\]"):
        topk_teacher_heads(heads, 31)
