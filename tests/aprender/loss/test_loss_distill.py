"""aprender.loss.distill: every divergence against float64 formulas, TRL's generalized_jsd_loss, masks and dtypes.

References: closed-form KLs, ``F.kl_div``, numpy float64 implementations of each divergence's definition
(`reference_divergence`), and TRL 1.16's ``GKDTrainer.generalized_jsd_loss`` (forward, reverse and JSD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aprender.errors import InvalidArgumentError
from aprender.loss import (
    DIVERGENCES,
    LOSSES,
    DistillationLoss,
    Divergence,
    KLDirection,
    KLDistillationLoss,
    Reduction,
    distillation_loss,
    kl_distillation_loss,
)


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


def reference_divergence(
    student: np.ndarray, teacher: np.ndarray, divergence: str, temperature: float, beta: float, skew: float
) -> np.ndarray:
    """Each divergence's definition in float64 numpy, per position (no T²)."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z / temperature - (z / temperature).max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (p * np.log(p / q)).sum(axis=-1)

    p_s, p_t = softmax(student), softmax(teacher)
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0):
        return kl(p_t, p_s)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1):
        return kl(p_s, p_t)
    if divergence == "jsd":
        m = beta * p_t + (1 - beta) * p_s
        return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    if divergence == "skew_forward_kl":
        return kl(p_t, skew * p_t + (1 - skew) * p_s)
    if divergence == "skew_reverse_kl":
        return kl(p_s, skew * p_s + (1 - skew) * p_t)
    assert divergence == "tvd"
    return 0.5 * np.abs(p_t - p_s).sum(axis=-1)


REDUCTIONS: tuple[Reduction, ...] = ("none", "sum", "mean")
PARAMS = [("jsd", 0.0, 0.1), ("jsd", 0.3, 0.1), ("jsd", 0.5, 0.1), ("jsd", 1.0, 0.1)] + [
    (name, 0.5, skew) for name in ("skew_forward_kl", "skew_reverse_kl") for skew in (0.0, 0.1, 0.7)
]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(
    ("divergence", "beta", "skew"), [("forward_kl", 0.5, 0.1), ("reverse_kl", 0.5, 0.1), ("tvd", 0.5, 0.1), *PARAMS]
)
def test_divergences_match_float64_formulas(
    divergence: Divergence, beta: float, skew: float, temperature: float
) -> None:
    generator = torch.Generator().manual_seed(7)
    for case in range(4):
        student = torch.randn(3, 5, 17, generator=generator, dtype=torch.float64) * (1 + case)
        teacher = torch.randn(3, 5, 17, generator=generator, dtype=torch.float64) * (1 + case)
        labels = torch.randint(0, 17, (3, 5), generator=generator)
        labels[torch.rand(3, 5, generator=generator) < 0.3] = -100
        keep = (labels != -100).numpy()
        expected = reference_divergence(student.numpy(), teacher.numpy(), divergence, temperature, beta, skew) * keep
        for scale_by_t2 in (True, False):
            factor = temperature**2 if scale_by_t2 else 1.0
            per_position, total, mean = (
                distillation_loss(
                    student,
                    teacher,
                    divergence=divergence,
                    temperature=temperature,
                    beta=beta,
                    skew=skew,
                    scale_by_t2=scale_by_t2,
                    labels=labels,
                    reduction=reduction,
                )
                for reduction in REDUCTIONS
            )
            assert per_position.dtype == torch.float32
            np.testing.assert_allclose(per_position.numpy(), factor * expected, rtol=2e-5, atol=1e-6)
            assert total.item() == pytest.approx(factor * expected.sum(), rel=2e-5, abs=1e-6)
            assert mean.item() == pytest.approx(factor * expected.sum() / keep.sum(), rel=2e-5, abs=1e-6)


def trl_generalized_jsd_loss() -> Callable[..., torch.Tensor]:
    """TRL's loss (a static method), imported only by the tests that use it (TRL pulls in transformers)."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    loss: Callable[..., torch.Tensor] = gkd.GKDTrainer.generalized_jsd_loss
    return loss


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("beta", "divergence"), [(0.0, "forward_kl"), (1.0, "reverse_kl"), (0.5, "jsd"), (0.2, "jsd")])
def test_matches_trl_generalized_jsd_loss(beta: float, divergence: Divergence, temperature: float) -> None:
    trl_loss = trl_generalized_jsd_loss()
    generator = torch.Generator().manual_seed(3)
    student = (torch.randn(2, 6, 50, generator=generator) * 3).requires_grad_(True)
    teacher = torch.randn(2, 6, 50, generator=generator) * 3
    labels = torch.randint(0, 50, (2, 6), generator=generator)
    labels[0, :2] = labels[1, 4:] = -100
    student64 = student.detach().double().requires_grad_(True)
    # TRL's "batchmean" with labels divides by the number of labelled positions: our "mean"
    oracle = trl_loss(student64, teacher.double(), labels=labels, beta=beta, temperature=temperature)
    (oracle_grad,) = torch.autograd.grad(oracle, student64)
    for name in (divergence, "jsd"):  # jsd at beta 0 and 1 is TRL's forward and reverse KL
        ours = distillation_loss(
            student, teacher, divergence=name, beta=beta, temperature=temperature, scale_by_t2=False, labels=labels
        )
        (grad,) = torch.autograd.grad(ours, student)
        assert abs(ours.item() - oracle.item()) <= 1e-6
        torch.testing.assert_close(grad.double(), oracle_grad, rtol=0, atol=1e-6)
    summed = trl_loss(student64, teacher.double(), labels=labels, beta=beta, temperature=temperature, reduction="sum")
    hinton = distillation_loss(
        student, teacher, divergence="jsd", beta=beta, temperature=temperature, labels=labels, reduction="sum"
    )
    assert hinton.item() == pytest.approx(temperature**2 * summed.item(), rel=1e-6)  # the T² rule, on top of TRL


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_zero_probability_outcomes_count_for_nothing(divergence: Divergence) -> None:
    # a token masked out of both distributions (logit -inf) leaves the value and the gradients of the rest as
    # they were: no NaN from 0·log 0
    generator = torch.Generator().manual_seed(5)
    student = torch.randn(4, 9, generator=generator)
    teacher = torch.randn(4, 9, generator=generator)
    masked_s, masked_t = (
        torch.cat([student, torch.full((4, 1), -math.inf)], 1),
        torch.cat([teacher, torch.full((4, 1), -math.inf)], 1),
    )
    s1, s2 = student.clone().requires_grad_(True), masked_s.clone().requires_grad_(True)
    plain = distillation_loss(s1, teacher, divergence=divergence, temperature=2.0)
    padded = distillation_loss(s2, masked_t, divergence=divergence, temperature=2.0)
    (g1,), (g2,) = torch.autograd.grad(plain, s1), torch.autograd.grad(padded, s2)
    torch.testing.assert_close(padded, plain)
    torch.testing.assert_close(g2[:, :9], g1)
    assert not g2[:, 9].any()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_identical_distributions_give_zero_for_every_divergence(divergence: Divergence) -> None:
    logits = torch.randn(5, 12) * 3
    assert distillation_loss(logits, logits, divergence=divergence, temperature=0.5).abs().item() < 1e-6


def test_divergence_table_and_loss_class() -> None:
    assert (
        DIVERGENCES
        == get_args(Divergence)
        == (
            "forward_kl",
            "reverse_kl",
            "jsd",
            "skew_forward_kl",
            "skew_reverse_kl",
            "tvd",
        )
    )
    assert LOSSES["distillation"] is DistillationLoss
    student, teacher = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    labels = torch.tensor([[1, -100, 2], [3, 4, -100]])
    loss = DistillationLoss(divergence="skew_reverse_kl", temperature=2.0, skew=0.3, scale_by_t2=False, reduction="sum")
    expected = distillation_loss(
        student,
        teacher,
        divergence="skew_reverse_kl",
        temperature=2.0,
        skew=0.3,
        scale_by_t2=False,
        labels=labels,
        reduction="sum",
    )
    assert torch.equal(loss(student, teacher, labels=labels), expected)
    # kl_distillation_loss is forward_kl / reverse_kl with T² (Hinton)
    kl_divergences: dict[KLDirection, Divergence] = {"forward": "forward_kl", "reverse": "reverse_kl"}
    for direction, divergence in kl_divergences.items():
        kl = kl_distillation_loss(student, teacher, temperature=3.0, direction=direction)
        assert torch.equal(kl, distillation_loss(student, teacher, divergence=divergence, temperature=3.0))


def test_divergence_validation() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(InvalidArgumentError, match="divergence='kl' is not one of forward_kl, reverse_kl"):
        distillation_loss(x, x, divergence="kl")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"beta=1.5 must lie in \[0, 1\]"):
        distillation_loss(x, x, divergence="jsd", beta=1.5)
    with pytest.raises(InvalidArgumentError, match=r"skew=-0\.1"):
        DistillationLoss(skew=-0.1)
    with pytest.raises(InvalidArgumentError, match=r"temperature=-1\.0"):
        distillation_loss(x, x, temperature=-1.0)
    with pytest.raises(InvalidArgumentError, match="reduction='batchmean'"):
        DistillationLoss(reduction="batchmean")  # type: ignore[arg-type]
    reduction: Reduction = "none"
    with pytest.raises(InvalidArgumentError, match="labels has shape"):
        distillation_loss(x, x, labels=torch.zeros(3, dtype=torch.long), reduction=reduction)
