"""aprender.loss.distill_chunked: the chunked, head-fused distillation loss equals the plain one and peaks lower.

Oracles: `distillation_loss` (itself checked against float64 formulas and TRL) on the materialised logits
``hidden @ weight.T``, values and gradients w.r.t. the student's hidden states and head weight; a float64
autograd implementation of the multi-teacher mixture ``p_t = Σ w_i softmax(z_i / T)``; memory from the CPU
allocator's events (`fixtures.memory.peak_cpu_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from aprender.errors import InvalidArgumentError
from aprender.loss import (
    DIVERGENCES,
    Divergence,
    Reduction,
    TeacherHead,
    TopKTeacher,
    chunked_distillation_loss,
    distillation_loss,
    topk_distillation_loss,
    topk_teacher,
)
from fixtures.memory import peak_cpu_bytes
from fixtures.threads import torch_threads

REDUCTIONS: tuple[Reduction, ...] = ("sum", "mean", "none")
IGNORE = -100


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: one thread is fastest on the shared machine (and the peak does not depend on it)."""
    with torch_threads(1):
        yield


Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(tokens: int, vocab: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> Inputs:
    """Student hidden (N, 8) and head (V, 8), teacher hidden (N, 12) and head (V, 12), labels with a third ignored."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 8, generator=generator).to(dtype)
    weight = (torch.randn(vocab, 8, generator=generator) * 0.7).to(dtype)
    teacher_hidden = torch.randn(tokens, 12, generator=generator).to(dtype)
    teacher_weight = (torch.randn(vocab, 12, generator=generator) * 0.7).to(dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::3] = IGNORE
    return hidden, weight, teacher_hidden, teacher_weight, labels


def value_and_grads(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], hidden: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    out = fn(h, w)
    upstream = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grad_h, grad_w = torch.autograd.grad(out, (h, w), upstream)
    return out.detach(), grad_h, grad_w


def assert_close_all(ours: tuple[torch.Tensor, ...], oracle: tuple[torch.Tensor, ...], atol: float) -> None:
    for a, b in zip(ours, oracle, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_matches_plain_for_several_chunk_sizes(divergence: Divergence, reduction: Reduction) -> None:
    # 45 positions, 30 labelled: chunks of 1, 7 (does not divide 30), 30 (one chunk) and 64 (more than all)
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(45, 97)
    teacher_logits = teacher_hidden @ teacher_weight.T
    options = dict(divergence=divergence, temperature=2.0, beta=0.3, skew=0.2)

    def plain(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return distillation_loss(h @ w.T, teacher_logits, labels=labels, reduction=reduction, **options)  # type: ignore[arg-type]

    oracle = value_and_grads(plain, hidden, weight)
    for chunk_size in (1, 7, 30, 64):

        def chunked(h: torch.Tensor, w: torch.Tensor, chunk_size: int = chunk_size) -> torch.Tensor:
            teacher = [TeacherHead(teacher_hidden, teacher_weight)]
            return chunked_distillation_loss(
                h,
                w,
                teacher,
                labels,
                chunk_size=chunk_size,
                reduction=reduction,
                **options,  # type: ignore[arg-type]
            )

        assert_close_all(value_and_grads(chunked, hidden, weight), oracle, atol=1e-5)


def test_multi_teacher_mixture_matches_its_formula() -> None:
    # p_t = 0.25·softmax(z_1 / T) + 0.75·softmax(z_2 / T) (weights 1 and 3, normalised); the teachers have
    # different widths. Reference: the formula in float64 with autograd.
    hidden, weight, first_hidden, first_weight, labels = make_inputs(20, 31, seed=1)
    _, _, second_hidden, second_weight, _ = make_inputs(20, 31, seed=2)
    second_hidden = torch.cat([second_hidden, second_hidden[:, :4]], dim=1)  # width 16
    second_weight = torch.cat([second_weight, -second_weight[:, :4]], dim=1)
    temperature, keep = 1.5, labels != IGNORE
    teachers = [TeacherHead(first_hidden, first_weight, 1.0), TeacherHead(second_hidden, second_weight, 3.0)]

    def formula(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        p_t = 0.25 * torch.softmax((first_hidden @ first_weight.T).double() / temperature, -1)
        p_t = p_t + 0.75 * torch.softmax((second_hidden @ second_weight.T).double() / temperature, -1)
        log_p_s = torch.log_softmax(h.double() @ w.double().T / temperature, -1)
        m = 0.5 * p_t + 0.5 * log_p_s.exp()
        jsd = 0.5 * (p_t * (p_t / m).log()).sum(-1) + 0.5 * (log_p_s.exp() * (log_p_s - m.log())).sum(-1)
        return temperature**2 * (jsd * keep).sum()

    h64, w64 = hidden.double().requires_grad_(True), weight.double().requires_grad_(True)
    expected = formula(h64, w64)
    expected_grads = torch.autograd.grad(expected, (h64, w64))
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ours = chunked_distillation_loss(h, w, teachers, labels, divergence="jsd", temperature=temperature, chunk_size=6)
    ours.backward()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    for grad, reference in zip((h.grad, w.grad), expected_grads, strict=True):
        assert grad is not None
        torch.testing.assert_close(grad.double(), reference, rtol=0, atol=1e-5)
    # one teacher of the list alone is that teacher's distillation loss
    alone = chunked_distillation_loss(hidden, weight, teachers[:1], labels)
    plain = distillation_loss(hidden @ weight.T, first_hidden @ first_weight.T, labels=labels, reduction="sum")
    assert alone.item() == pytest.approx(plain.item(), rel=1e-6)


def test_teacher_gets_no_gradient_and_no_grad_mode_skips_gradients() -> None:
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(12, 19)
    teacher_hidden.requires_grad_(True)
    h = hidden.clone().requires_grad_(True)
    loss = chunked_distillation_loss(h, weight, [TeacherHead(teacher_hidden, teacher_weight)], labels, chunk_size=5)
    loss.backward()
    assert teacher_hidden.grad is None and h.grad is not None and h.grad[labels == IGNORE].abs().sum() == 0
    with torch.no_grad():  # a bare TeacherHead is a list of one
        evaluated = chunked_distillation_loss(h, weight, TeacherHead(teacher_hidden, teacher_weight), labels)
    assert not evaluated.requires_grad and evaluated.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_is_zero_with_zero_grads(reduction: Reduction) -> None:
    hidden, weight, teacher_hidden, teacher_weight, _ = make_inputs(6, 11)
    labels = torch.full((6,), IGNORE)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss = chunked_distillation_loss(h, w, [TeacherHead(teacher_hidden, teacher_weight)], labels, reduction=reduction)
    loss.sum().backward()
    assert not loss.any() and h.grad is not None and w.grad is not None and not h.grad.any() and not w.grad.any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_topk_teacher_matches_topk_loss_on_logits(reduction: Reduction) -> None:
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(25, 40, seed=3)
    cache = topk_teacher(teacher_hidden @ teacher_weight.T, 6, temperature=2.0)
    options = dict(divergence="skew_reverse_kl", temperature=2.0, skew=0.1, reduction=reduction)
    oracle = value_and_grads(
        lambda h, w: topk_distillation_loss(h @ w.T, *cache, labels=labels, **options),  # type: ignore[arg-type]
        hidden,
        weight,
    )
    ours = value_and_grads(
        lambda h, w: chunked_distillation_loss(h, w, cache, labels, chunk_size=4, **options),  # type: ignore[arg-type]
        hidden,
        weight,
    )
    assert_close_all(ours, oracle, atol=1e-5)


def test_bfloat16_student_and_teacher() -> None:
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(30, 50, dtype=torch.bfloat16)
    teacher_logits = teacher_hidden @ teacher_weight.T
    oracle = value_and_grads(lambda h, w: distillation_loss(h @ w.T, teacher_logits, labels=labels), hidden, weight)
    ours = value_and_grads(
        lambda h, w: chunked_distillation_loss(
            h, w, [TeacherHead(teacher_hidden, teacher_weight)], labels, chunk_size=8, reduction="mean"
        ),
        hidden,
        weight,
    )
    assert ours[0].dtype == torch.float32 and ours[1].dtype == ours[2].dtype == torch.bfloat16
    torch.testing.assert_close(ours[0], oracle[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(ours[1:], oracle[1:], strict=True):  # gradients rounded to bf16 once (ours) or per matmul
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.float().abs().max().item())


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_peak_memory_is_a_fraction_of_plain(reduction: Reduction) -> None:
    # N = 2048 positions (3/4 labelled), V = 8192: each model's logits are 2048·8192·4 B = 64 MiB, and the plain
    # computation also keeps log-softmaxes, probabilities and gradients of that size. Chunks of 256 positions
    # need a few 8 MiB buffers.
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2048, 64, generator=generator), torch.randn(8192, 64, generator=generator) / 8
    teacher = TeacherHead(torch.randn(2048, 96, generator=generator), torch.randn(8192, 96, generator=generator) / 10)
    labels = torch.randint(0, 8192, (2048,), generator=generator)
    labels[::4] = IGNORE

    def run(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
            loss_fn(h, w).sum().backward()

        return step

    def plain(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher.hidden @ teacher.weight.T
        return distillation_loss(h @ w.T, teacher_logits, labels=labels, reduction=reduction)

    def chunked(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return chunked_distillation_loss(h, w, [teacher], labels, chunk_size=256, reduction=reduction)

    plain_peak, ours = peak_cpu_bytes(run(plain)), peak_cpu_bytes(run(chunked))
    assert plain_peak > 5 * 2048 * 8192 * 4  # both models' logits and more: the meter sees them
    assert ours < plain_peak / 5, f"chunked peak {ours / 2**20:.1f} MiB vs plain {plain_peak / 2**20:.1f} MiB"


def test_validation() -> None:
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(4, 10)
    teacher = [TeacherHead(teacher_hidden, teacher_weight)]
    with pytest.raises(InvalidArgumentError, match="teacher 0's head has 12 rows but the student's has 10"):
        padded = torch.cat([teacher_weight, teacher_weight[:2]])
        chunked_distillation_loss(hidden, weight, [TeacherHead(teacher_hidden, padded)], labels)
    with pytest.raises(InvalidArgumentError, match="teacher 0 has hidden"):
        chunked_distillation_loss(hidden, weight, [TeacherHead(teacher_hidden[:3], teacher_weight)], labels)
    with pytest.raises(InvalidArgumentError, match="no teacher given"):
        chunked_distillation_loss(hidden, weight, [], labels)
    with pytest.raises(InvalidArgumentError, match=r"teacher 1 has mixture_weight=0\.0"):
        chunked_distillation_loss(hidden, weight, [*teacher, TeacherHead(teacher_hidden, teacher_weight, 0.0)], labels)
    with pytest.raises(InvalidArgumentError, match=r"teacher 0 has hidden torch\.float64"):
        chunked_distillation_loss(hidden, weight, [TeacherHead(teacher_hidden.double(), teacher_weight)], labels)
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        chunked_distillation_loss(hidden, weight.T, teacher, labels)
    with pytest.raises(InvalidArgumentError, match="one floating dtype"):
        chunked_distillation_loss(hidden, weight.double(), teacher, labels)
    with pytest.raises(InvalidArgumentError, match=r"one label per position, shape \(4,\)"):
        chunked_distillation_loss(hidden, weight, teacher, labels[:3])
    with pytest.raises(InvalidArgumentError, match="chunk_size=0"):
        chunked_distillation_loss(hidden, weight, teacher, labels, chunk_size=0)
    with pytest.raises(InvalidArgumentError, match="divergence='kl'"):
        chunked_distillation_loss(hidden, weight, teacher, labels, divergence="kl")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="token id outside"):
        bad = TopKTeacher(torch.full((4, 2), 10), torch.zeros(4, 2), torch.zeros(4))
        chunked_distillation_loss(hidden, weight, bad, labels)
