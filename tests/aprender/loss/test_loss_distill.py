"""aprender.loss.distill: closed-form KL with temperature, F.kl_div as oracle, masks and dtypes."""

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
from aprender.loss import KLDirection, KLDistillationLoss, kl_distillation_loss


def test_closed_form_two_classes() -> None:
    # student logits (0, 0) → p_s = (½, ½); teacher logits (ln 3, 0) → p_t = (¾, ¼) at T = 1.
    student = torch.zeros(1, 2, dtype=torch.float64)
    teacher = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    forward = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_t ‖ p_s)
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_s ‖ p_t)
    torch.testing.assert_close(kl_distillation_loss(student, teacher), torch.tensor(forward, dtype=torch.float32))
    torch.testing.assert_close(
        kl_distillation_loss(student, teacher, direction="reverse"), torch.tensor(reverse, dtype=torch.float32)
    )
    # T = 2: teacher logits halve, p_t = (√3, 1) / (√3 + 1); the divergence is multiplied by T² = 4.
    p0 = math.sqrt(3) / (math.sqrt(3) + 1)
    softened = 4 * (p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5))
    torch.testing.assert_close(
        KLDistillationLoss(temperature=2.0)(student, teacher), torch.tensor(softened, dtype=torch.float32)
    )


@settings(max_examples=50, deadline=None)
@given(
    student=hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 7)), elements=st.floats(-20, 20)),
    seed=st.integers(0, 2**16),
    temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    direction=st.sampled_from(["forward", "reverse"]),
)
def test_matches_kl_div_batchmean(student: np.ndarray, seed: int, temperature: float, direction: KLDirection) -> None:
    s = torch.from_numpy(student).float().requires_grad_(True)
    t = torch.randn(s.shape, generator=torch.Generator().manual_seed(seed)) * 5
    ours = kl_distillation_loss(s, t, temperature=temperature, direction=direction)
    (grad_ours,) = torch.autograd.grad(ours, s)
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(t / temperature, dim=-1)
    # F.kl_div(input, target) = Σ target·(log target - input): KL(target ‖ input)
    if direction == "forward":
        oracle = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2
    else:
        oracle = F.kl_div(log_t, log_s, log_target=True, reduction="batchmean") * temperature**2
    (grad_oracle,) = torch.autograd.grad(oracle, s)
    torch.testing.assert_close(ours, oracle, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_oracle, rtol=1e-5, atol=1e-6)


def test_labels_mask_positions_and_reductions() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 11, generator=generator)
    teacher = torch.randn(2, 4, 11, generator=generator)
    labels = torch.tensor([[5, -100, 3, 1], [-100, -100, 0, 7]])
    keep = labels != -100
    per_position = kl_distillation_loss(student, teacher, labels=labels, temperature=2.0, reduction="none")
    assert per_position.shape == (2, 4) and per_position.dtype == torch.float32
    assert torch.equal(per_position[~keep], torch.zeros(3))
    # the kept positions alone, unmasked, give the same numbers; "mean" averages over those 5 positions
    kept_only = kl_distillation_loss(student[keep], teacher[keep], temperature=2.0, reduction="none")
    torch.testing.assert_close(per_position[keep], kept_only)
    torch.testing.assert_close(kl_distillation_loss(student, teacher, labels=labels, temperature=2.0), kept_only.mean())
    torch.testing.assert_close(
        KLDistillationLoss(temperature=2.0, reduction="sum")(student, teacher, labels=labels), kept_only.sum()
    )
    custom = KLDistillationLoss(ignore_index=7, reduction="none")(student, teacher, labels=labels)
    assert custom[1, 3] == 0 and custom[1, 0] > 0


def test_all_masked_is_zero_with_zero_grads() -> None:
    student = torch.randn(3, 5, requires_grad=True)
    loss = kl_distillation_loss(student, torch.randn(3, 5), labels=torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and student.grad is not None and not student.grad.any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_use_float32(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    student = (torch.randn(6, 50, generator=generator) * 4).to(dtype).requires_grad_(True)
    teacher = (torch.randn(6, 50, generator=generator) * 4).to(dtype)
    ours = kl_distillation_loss(student, teacher, temperature=2.0)
    assert ours.dtype == torch.float32
    # reference: the same low-precision values upcast first, everything in float32
    reference = kl_distillation_loss(student.detach().float(), teacher.float(), temperature=2.0)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    ours.backward()
    assert student.grad is not None and student.grad.dtype == dtype


def test_identical_distributions_have_zero_divergence() -> None:
    logits = torch.randn(4, 9)
    directions: tuple[KLDirection, ...] = ("forward", "reverse")
    for direction in directions:
        assert kl_distillation_loss(logits, logits, direction=direction, temperature=3.0).abs().item() < 1e-6


def test_validation() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        kl_distillation_loss(x, x, temperature=0.0)
    with pytest.raises(InvalidArgumentError, match="direction='backward'"):
        kl_distillation_loss(x, x, direction="backward")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="teacher_logits has shape"):
        kl_distillation_loss(x, torch.zeros(2, 4))
    with pytest.raises(InvalidArgumentError, match="labels has shape"):
        kl_distillation_loss(x, x, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="reduction"):
        KLDistillationLoss(reduction="batchmean")  # type: ignore[arg-type]
