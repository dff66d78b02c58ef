"""Anomaly guard: inf/NaN loss or gradients stop training before the step, naming the step and the culprit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from entrenar.autograd import AnomalyGuard, first_non_finite_grad, global_grad_norm
from entrenar.errors import GradientEngineError, NonFiniteError


def _with_grads(*grads: torch.Tensor) -> list[torch.Tensor]:
    params = []
    for g in grads:
        p = torch.zeros_like(g, requires_grad=True)
        p.grad = g
        params.append(p)
    return params


@settings(max_examples=30, deadline=None)
@given(
    a=arrays("float32", st.integers(1, 20), elements=st.floats(-1e3, 1e3, width=32)),
    b=arrays("float64", st.integers(1, 20), elements=st.floats(-1e3, 1e3)),
)
def test_global_grad_norm_is_the_norm_of_all_gradients_concatenated(a: np.ndarray, b: np.ndarray) -> None:
    """Oracle: the 2-norm of one float64 vector holding every gradient entry (mixed dtypes form two groups)."""
    ga, gb = torch.from_numpy(a), torch.from_numpy(b)
    params = [*_with_grads(ga, gb), torch.zeros(3, requires_grad=True)]  # the last has no grad: skipped
    want = torch.linalg.vector_norm(torch.cat([ga.double(), gb])).item()
    got = global_grad_norm(params)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_global_grad_norm_edge_cases() -> None:
    assert global_grad_norm([torch.zeros(2, requires_grad=True)]).item() == 0.0
    assert global_grad_norm(_with_grads(torch.tensor([3.0]), torch.tensor([[4.0]]))).item() == 5.0  # 3-4-5
    assert math.isinf(global_grad_norm(_with_grads(torch.tensor([1.0, math.inf]))).item())
    assert math.isnan(global_grad_norm(_with_grads(torch.tensor([1.0]), torch.tensor([math.nan]))).item())


def test_first_non_finite_grad_names_the_first_bad_parameter() -> None:
    a, b, c = _with_grads(torch.ones(2), torch.tensor([1.0, math.nan]), torch.tensor([math.inf]))
    frozen = torch.zeros(1, requires_grad=True)
    assert first_non_finite_grad([("frozen", frozen), ("a", a), ("b", b), ("c", c)]) == "b"
    assert first_non_finite_grad([("a", a)]) is None


def test_nan_loss_at_step_7_names_the_step_and_the_loss(lm: SimpleNamespace) -> None:
    guard = AnomalyGuard(lm.TinyLM().named_parameters())
    with pytest.raises(NonFiniteError, match=r"^step 7: the loss is nan; the optimizer step was not taken") as info:
        guard.check(step=7, loss=torch.tensor(math.nan))
    assert "lower learning rate" in str(info.value) and "clipping" in str(info.value)


def test_inf_gradient_names_the_parameter(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.layers[1].mlp[3].weight.grad[0, 0] = math.inf
    guard = AnomalyGuard(model.named_parameters())
    with pytest.raises(NonFiniteError, match=r"step 3: the gradient is not finite \(global norm inf, first in "):
        guard.check(step=3, loss=1.0)
    with pytest.raises(NonFiniteError, match=r"parameter 'layers\.1\.mlp\.3\.weight'"):
        guard.check(step=3, loss=1.0)


def test_finite_step_returns_the_norm(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    count = sum(p.numel() for p in model.parameters())
    guard = AnomalyGuard(model.named_parameters())
    assert guard.check(step=1, loss=2.0) == pytest.approx(0.5 * math.sqrt(count), rel=1e-6)  # ||0.5·1||₂
    assert guard.check(step=1, loss=2.0, grad_norm=torch.tensor(3.0)) == 3.0  # a given norm is used as is


def test_given_norm_overflow_with_finite_entries_is_explained(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(NonFiniteError, match="every entry is finite but their norm overflowed"):
        AnomalyGuard(model.named_parameters()).check(step=2, loss=1.0, grad_norm=math.inf)


def test_loss_scaling_tolerates_overflow_for_a_while(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    guard = AnomalyGuard(model.named_parameters(), loss_scaling=True, max_skipped_steps=2)
    assert math.isinf(guard.check(step=1, loss=1.0, grad_norm=math.inf))
    assert guard.skipped_in_a_row == 1
    assert guard.check(step=2, loss=1.0) == 0.0  # a finite step resets the count
    assert guard.skipped_in_a_row == 0
    assert math.isnan(guard.check(step=3, loss=1.0, grad_norm=math.nan))
    assert math.isinf(guard.check(step=4, loss=1.0, grad_norm=math.inf))
    with pytest.raises(NonFiniteError, match=r"step 5: .* for 3 steps in a row despite float16 loss scaling"):
        guard.check(step=5, loss=1.0, grad_norm=math.inf)
    with pytest.raises(NonFiniteError, match="step 6: the loss is inf"):  # scaling cannot cure a bad loss
        guard.check(step=6, loss=math.inf)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_max_skipped_steps_is_validated(bad: object) -> None:
    with pytest.raises(GradientEngineError, match="max_skipped_steps"):
        AnomalyGuard([], max_skipped_steps=bad)  # type: ignore[arg-type]
