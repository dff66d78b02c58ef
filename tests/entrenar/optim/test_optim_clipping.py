"""Global-norm clipping against torch.nn.utils.clip_grad_norm_ (returned norm and resulting gradients)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.errors import OptimizerError
from entrenar.optim import clip_grad_norm


def _params_with_grads(seed: int, shapes: Sequence[tuple[int, ...]], scale: float) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape, generator=g) * scale
        params.append(p)
    return params


def _assert_same_as_torch(params: list[torch.nn.Parameter], max_norm: float, norm_type: float) -> float:
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for t, p in zip(twins, params, strict=True):
        t.grad = None if p.grad is None else p.grad.clone()
    ours = clip_grad_norm(params, max_norm, norm_type=norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(twins, max_norm, norm_type=norm_type)
    assert isinstance(ours, float)
    assert ours == theirs.item()
    for p, t in zip(params, twins, strict=True):
        if p.grad is None:
            assert t.grad is None
        else:
            torch.testing.assert_close(p.grad, t.grad, rtol=0, atol=0)
    return ours


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf])
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e3])
def test_matches_torch(max_norm: float, norm_type: float) -> None:
    params = _params_with_grads(0, [(4, 3), (3,), (2, 2, 2)], scale=1.0)
    # Second oracle: the global norm is the p-norm of all gradients concatenated.
    flat = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    total = _assert_same_as_torch(params, max_norm, norm_type)
    assert total == pytest.approx(torch.linalg.vector_norm(flat, norm_type).item(), rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shapes=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4),
    scale=st.floats(1e-4, 1e3),
    max_norm=st.floats(1e-3, 10.0),
    norm_type=st.sampled_from([1.0, 2.0, 4.0, math.inf]),
)
def test_matches_torch_property(
    seed: int, shapes: list[tuple[int, int]], scale: float, max_norm: float, norm_type: float
) -> None:
    params = _params_with_grads(seed, shapes, scale)
    total = _assert_same_as_torch(params, max_norm, norm_type)
    # After clipping, the norm is at most min(total, max_norm) (up to rounding).
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]), norm_type).item()  # type: ignore[union-attr]
    assert after <= min(total, max_norm) * (1 + 1e-5)


def test_hand_computed_clip() -> None:
    # Gradients (3, 4) and (0,): global 2-norm 5; max_norm 1 scales by 1 / (5 + 1e-6).
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0])
    assert clip_grad_norm([a, b], 1.0) == 5.0
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0]) / (5 + 1e-6))


def test_single_tensor_params_without_grad_and_no_grads() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([6.0, 8.0])
    assert clip_grad_norm(p, 20.0) == 10.0  # below max_norm: unchanged
    assert p.grad.tolist() == [6.0, 8.0]
    no_grad = torch.nn.Parameter(torch.zeros(3))
    params = [no_grad, *_params_with_grads(1, [(2, 3)], 1.0)]
    _assert_same_as_torch(params, 0.5, 2.0)
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(2))], 1.0) == 0.0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_norm_is_returned_and_grads_left_untouched(bad: float) -> None:
    params = _params_with_grads(2, [(3,), (2, 2)], 1.0)
    params[1].grad[0, 1] = bad  # type: ignore[index]
    before = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    total = clip_grad_norm(params, 1.0)
    assert math.isinf(total) if math.isinf(bad) else math.isnan(total)
    for p, g in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, g, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_norm": 0.0}, r"max_norm=0.0 is outside \(0, inf\)"),
        ({"max_norm": -1.0}, "max_norm=-1.0"),
        ({"max_norm": math.inf}, "max_norm=inf"),
        ({"max_norm": 1.0, "norm_type": 0.0}, "norm_type=0.0 must be a positive number"),
        ({"max_norm": 1.0, "norm_type": "2"}, "norm_type='2'"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        clip_grad_norm(_params_with_grads(0, [(2,)], 1.0), **kwargs)  # type: ignore[arg-type]
