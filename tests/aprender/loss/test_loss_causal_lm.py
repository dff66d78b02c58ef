"""aprender.loss.causal_lm: the chunked LM-head cross-entropy equals the plain one and peaks lower.

Oracle: ``F.cross_entropy((hidden @ weight.T).float(), labels)``, values and gradients w.r.t. both `hidden` and
`weight`. Memory is measured from the CPU allocator's own events (`fixtures.memory.peak_cpu_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import InvalidArgumentError
from aprender.loss import Reduction, chunked_causal_lm_loss, shift_labels
from fixtures.memory import peak_cpu_bytes

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")
IGNORE = -100


def plain_loss(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, reduction: Reduction, softcap: float | None = None
) -> torch.Tensor:
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    out = F.cross_entropy(logits.reshape(-1, weight.shape[0]), labels.reshape(-1), reduction=reduction)
    return out.reshape(labels.shape) if reduction == "none" else out


def make_inputs(
    shape: tuple[int, ...], hidden_size: int, vocab: int, dtype: torch.dtype, seed: int = 0, ignore_every: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, hidden_size, generator=generator).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=generator) / hidden_size**0.5).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=generator)
    labels.view(-1)[::ignore_every] = IGNORE
    return hidden, weight, labels


def value_and_grads(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], hidden: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    out = fn(h, w)
    upstream = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grad_h, grad_w = torch.autograd.grad(out, (h, w), upstream)
    return out.detach(), grad_h, grad_w


def assert_close_all(
    ours: tuple[torch.Tensor, ...], oracle: tuple[torch.Tensor, ...], rtol: float, atol: float
) -> None:
    for a, b in zip(ours, oracle, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_shift_labels() -> None:
    labels = torch.tensor([[1, 2, 3], [4, IGNORE, 6]])
    assert torch.equal(shift_labels(labels), torch.tensor([[2, 3, IGNORE], [IGNORE, 6, IGNORE]]))
    assert torch.equal(shift_labels(torch.tensor([7, 8]), ignore_index=-1), torch.tensor([8, -1]))
    assert torch.equal(labels, torch.tensor([[1, 2, 3], [4, IGNORE, 6]]))  # input untouched


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 39, 100])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float32_matches_plain(chunk_size: int, reduction: Reduction) -> None:
    # (3, 13) = 39 tokens: 5 and 16 do not divide it, 39 is one chunk, 100 is larger than the input.
    hidden, weight, labels = make_inputs((3, 13), hidden_size=24, vocab=70, dtype=torch.float32)
    ours = value_and_grads(
        lambda h, w: chunked_causal_lm_loss(h, w, labels, chunk_size=chunk_size, reduction=reduction), hidden, weight
    )
    oracle = value_and_grads(lambda h, w: plain_loss(h, w, labels, reduction), hidden, weight)
    assert_close_all(ours, oracle, rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    tokens=st.integers(1, 40),
    hidden_size=st.integers(1, 9),
    vocab=st.integers(2, 30),
    chunk_size=st.integers(1, 50),
    ignore_every=st.integers(2, 5),
    reduction=st.sampled_from(REDUCTIONS),
    softcap=st.sampled_from([None, 0.5, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_float64_matches_plain_any_shape(
    tokens: int,
    hidden_size: int,
    vocab: int,
    chunk_size: int,
    ignore_every: int,
    reduction: Reduction,
    softcap: float | None,
    seed: int,
) -> None:
    hidden, weight, labels = make_inputs((tokens,), hidden_size, vocab, torch.float64, seed, ignore_every)
    labels[-1] = seed % vocab  # at least one counted token: torch's mean over none is NaN (ours is 0, tested below)
    ours = value_and_grads(
        lambda h, w: chunked_causal_lm_loss(
            h, w, labels, chunk_size=chunk_size, reduction=reduction, logit_softcap=softcap
        ),
        hidden,
        weight,
    )
    oracle = value_and_grads(lambda h, w: plain_loss(h, w, labels, reduction, softcap), hidden, weight)
    assert_close_all(ours, oracle, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softcap_changes_the_loss_and_matches_plain(reduction: Reduction) -> None:
    hidden, weight, labels = make_inputs((2, 9), hidden_size=8, vocab=40, dtype=torch.float32)
    weight = weight * 10  # logits well beyond the cap, so capping matters
    ours = value_and_grads(
        lambda h, w: chunked_causal_lm_loss(h, w, labels, chunk_size=4, logit_softcap=5.0, reduction=reduction),
        hidden,
        weight,
    )
    oracle = value_and_grads(lambda h, w: plain_loss(h, w, labels, reduction, softcap=5.0), hidden, weight)
    assert_close_all(ours, oracle, rtol=1e-5, atol=1e-6)
    uncapped = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=4, reduction=reduction)
    assert not torch.allclose(uncapped, ours[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_accumulates_in_float32(dtype: torch.dtype, reduction: Reduction) -> None:
    hidden, weight, labels = make_inputs((96,), hidden_size=32, vocab=200, dtype=dtype)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    ours = chunked_causal_lm_loss(h, w, labels, chunk_size=20, reduction=reduction)
    assert ours.dtype == torch.float32
    ours.sum().backward()
    assert h.grad is not None and w.grad is not None and h.grad.dtype == dtype and w.grad.dtype == dtype
    h_ref = hidden.clone().requires_grad_(True)
    w_ref = weight.clone().requires_grad_(True)
    oracle = plain_loss(h_ref, w_ref, labels, reduction)  # low-precision logits, float32 softmax
    oracle.sum().backward()
    torch.testing.assert_close(ours, oracle, rtol=1e-5, atol=1e-5)
    assert h_ref.grad is not None and w_ref.grad is not None
    # gradients: low-precision matmuls; weight's is summed over chunks in float32 (a rounding per chunk)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-2, atol=1e-2 * h_ref.grad.abs().max().item())
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=2e-2, atol=1e-2 * w_ref.grad.abs().max().item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_is_zero_with_zero_grads(reduction: Reduction) -> None:
    hidden, weight, labels = make_inputs((2, 5), hidden_size=4, vocab=11, dtype=torch.float32)
    labels.fill_(IGNORE)
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    loss = chunked_causal_lm_loss(h, w, labels, chunk_size=3, reduction=reduction)
    loss.sum().backward()
    assert torch.equal(loss, torch.zeros_like(loss))
    assert h.grad is not None and w.grad is not None
    assert not h.grad.any() and not w.grad.any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_custom_ignore_index_and_batch_shape(reduction: Reduction) -> None:
    hidden, weight, labels = make_inputs((2, 6), hidden_size=5, vocab=9, dtype=torch.float64)
    labels[labels == IGNORE] = 0
    labels[:, -1] = -1
    ours = value_and_grads(
        lambda h, w: chunked_causal_lm_loss(h, w, labels, chunk_size=4, ignore_index=-1, reduction=reduction),
        hidden,
        weight,
    )
    oracle = value_and_grads(
        lambda h, w: F.cross_entropy(
            (h @ w.T).reshape(-1, 9), labels.reshape(-1), ignore_index=-1, reduction=reduction
        ).reshape(labels.shape if reduction == "none" else ()),
        hidden,
        weight,
    )
    assert_close_all(ours, oracle, rtol=1e-10, atol=1e-12)
    if reduction == "none":
        assert ours[0].shape == (2, 6) and not ours[0][:, -1].any()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_only_for_inputs_that_require_it(reduction: Reduction) -> None:
    hidden, weight, labels = make_inputs((17,), hidden_size=6, vocab=23, dtype=torch.float64)
    h = hidden.clone().requires_grad_(True)
    (grad_h,) = torch.autograd.grad(
        chunked_causal_lm_loss(h, weight, labels, chunk_size=4, reduction=reduction).sum(), h
    )
    (ref_h,) = torch.autograd.grad(plain_loss(h, weight, labels, reduction).sum(), h)
    torch.testing.assert_close(grad_h, ref_h)  # frozen LM head, as in LoRA
    w = weight.clone().requires_grad_(True)
    (grad_w,) = torch.autograd.grad(
        chunked_causal_lm_loss(hidden, w, labels, chunk_size=4, reduction=reduction).sum(), w
    )
    (ref_w,) = torch.autograd.grad(plain_loss(hidden, w, labels, reduction).sum(), w)
    torch.testing.assert_close(grad_w, ref_w)


def test_no_grad_and_repeated_backward() -> None:
    hidden, weight, labels = make_inputs((20,), hidden_size=6, vocab=15, dtype=torch.float64)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    with torch.no_grad():
        evaluated = chunked_causal_lm_loss(h, w, labels, chunk_size=6)
    assert evaluated.grad_fn is None
    torch.testing.assert_close(evaluated, plain_loss(hidden, weight, labels, "mean"))
    loss = chunked_causal_lm_loss(h, w, labels, chunk_size=6)
    loss.backward(retain_graph=True)
    assert h.grad is not None and w.grad is not None
    first_h, first_w = h.grad.clone(), w.grad.clone()
    (loss * 3).backward()  # the saved gradients are scaled, not consumed: 1 + 3 = 4 times the first
    torch.testing.assert_close(h.grad, 4 * first_h)
    torch.testing.assert_close(w.grad, 4 * first_w)


def test_validation() -> None:
    hidden, weight, labels = make_inputs((4,), hidden_size=3, vocab=5, dtype=torch.float32)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="chunk_size"):
            chunked_causal_lm_loss(hidden, weight, labels, chunk_size=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="reduction='avg'"):
        chunked_causal_lm_loss(hidden, weight, labels, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="logit_softcap"):
        chunked_causal_lm_loss(hidden, weight, labels, logit_softcap=0.0)
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        chunked_causal_lm_loss(hidden, weight.T, labels)
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        chunked_causal_lm_loss(hidden[0], weight, labels)
    with pytest.raises(InvalidArgumentError, match=r"one label per hidden position, shape \(4,\)"):
        chunked_causal_lm_loss(hidden, weight, labels[:3])
    with pytest.raises(InvalidArgumentError, match="one floating dtype"):
        chunked_causal_lm_loss(hidden, weight.double(), labels)
    with pytest.raises(InvalidArgumentError, match="class index 5 outside"):
        chunked_causal_lm_loss(hidden, weight, torch.tensor([0, 1, 5, IGNORE]))


def test_memory_meter_sees_allocations() -> None:
    mib = 2**20

    def two_sequential_buffers() -> None:
        first = torch.ones(mib, dtype=torch.float32)  # 4 MiB
        del first
        second = torch.ones(2 * mib, dtype=torch.float32)  # 8 MiB, allocated after the first is freed
        del second

    peak = peak_cpu_bytes(two_sequential_buffers)
    assert 8 * mib <= peak < 9 * mib


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_peak_memory_is_a_fraction_of_plain(reduction: Reduction) -> None:
    # N = 4096 tokens, V = 8192: the plain logits alone are 4096·8192·4 B = 128 MiB, and autograd keeps their
    # log-softmax and gradient too. Chunks of 512 tokens need a few 16 MiB buffers.
    hidden, weight, labels = make_inputs((4096,), hidden_size=64, vocab=8192, dtype=torch.float32)

    def run(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
            loss_fn(h, w).sum().backward()

        return step

    plain = peak_cpu_bytes(run(lambda h, w: plain_loss(h, w, labels, reduction)))
    ours = peak_cpu_bytes(run(lambda h, w: chunked_causal_lm_loss(h, w, labels, chunk_size=512, reduction=reduction)))
    assert plain > 3 * 4096 * 8192 * 4 * 0.9  # logits, log-softmax, their gradient: the meter sees them
    assert ours < plain / 4, f"chunked peak {ours / 2**20:.1f} MiB vs plain {plain / 2**20:.1f} MiB"


@pytest.mark.cuda
def test_cuda_bf16_matches_plain_and_peaks_lower() -> None:
    device = torch.device("cuda")
    hidden, weight, labels = make_inputs((8, 1024), hidden_size=512, vocab=32000, dtype=torch.bfloat16)
    hidden, weight, labels = hidden.to(device), weight.to(device), labels.to(device)

    def peak(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor]:
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        loss = loss_fn(h, w)
        loss.backward()
        torch.cuda.synchronize()
        assert h.grad is not None
        return torch.cuda.max_memory_allocated() - start, loss.detach(), h.grad

    plain_peak, plain_value, plain_grad = peak(lambda h, w: plain_loss(h, w, labels, "mean"))
    ours_peak, ours_value, ours_grad = peak(lambda h, w: chunked_causal_lm_loss(h, w, labels, chunk_size=1024))
    torch.testing.assert_close(ours_value, plain_value, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_grad, plain_grad, rtol=2e-2, atol=1e-2 * plain_grad.abs().max().item())
    assert ours_peak < plain_peak / 2
