"""GradientEngine: accumulated backward + unscale / clip / guard / step / update, as the training loop uses it.

Oracle: the same model trained on the whole batch with the mean-over-tokens loss, clipped with
``torch.nn.utils.clip_grad_norm_`` and stepped with ``torch.optim.SGD``.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from entrenar.autograd import ClipFn, GradientEngine, LossScaler, PrecisionPolicy
from entrenar.errors import GradientEngineError, NonFiniteError

LENGTHS = [10, 3, 7, 10, 2, 6]
PROMPTS = [4, 0, 2, 0, 0, 5]
FP32 = PrecisionPolicy.for_device("cpu", "float32")


def _clip(max_norm: float) -> ClipFn:
    return lambda params: torch.nn.utils.clip_grad_norm_(params, max_norm)


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def _poison(model: Any, value: float) -> None:
    """Make one entry of the LM head's gradient `value` during backward."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[2, 1] = value
        return grad

    model.lm_head.weight.register_hook(hook)


@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_step_matches_big_batch_clip_and_sgd(lm: SimpleNamespace, max_norm: float | None) -> None:
    batch = lm.make_batch(LENGTHS, PROMPTS, 10, seed=11)
    reference = lm.TinyLM()
    model = copy.deepcopy(reference)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    ref_loss = reference.loss(batch, reduction="mean")
    ref_loss.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm or math.inf).item()
    ref_opt.step()

    engine = GradientEngine(model, FP32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    result = engine.backward(lm.split(batch, 2), model.loss)
    outcome = engine.step(optimizer, step=1, loss=result.loss, clip_grad=_clip(max_norm) if max_norm else None)

    assert result.loss == pytest.approx(ref_loss.item(), rel=1e-6)
    assert outcome.stepped
    assert outcome.grad_norm == pytest.approx(ref_norm, rel=1e-5)
    if max_norm:
        assert ref_norm > 2 * max_norm  # clipping really scaled the update
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


def test_nan_loss_at_step_7_leaves_the_weights_unchanged(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    engine = GradientEngine(model, FP32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = _snapshot(model)
    result = engine.backward(
        lm.split(lm.make_batch(LENGTHS, PROMPTS, 10, seed=12), 3), lambda b: model.loss(b) * math.nan
    )
    with pytest.raises(NonFiniteError, match=r"^step 7: the loss is nan"):
        engine.step(optimizer, step=7, loss=result.loss, clip_grad=_clip(1.0))
    assert _unchanged(model, before)
    assert optimizer.state == {}  # Adam's moments were never touched


def test_inf_gradient_names_the_parameter_and_leaves_weights(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    _poison(model, math.inf)
    engine = GradientEngine(model, FP32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _snapshot(model)
    result = engine.backward([lm.make_batch(LENGTHS, PROMPTS, 10, seed=13)], model.loss)
    with pytest.raises(NonFiniteError, match=r"step 2: the gradient is not finite .* parameter 'lm_head\.weight'"):
        engine.step(optimizer, step=2, loss=result.loss)
    assert _unchanged(model, before)


def test_loss_scaler_skips_an_overflowed_step_without_raising(lm: SimpleNamespace) -> None:
    """A CPU GradScaler stands in for CUDA float16: overflow = skipped step, then training goes on."""
    batch = lm.make_batch(LENGTHS, PROMPTS, 10, seed=14)
    model = lm.TinyLM()
    reference = copy.deepcopy(model)
    handle = model.lm_head.weight.register_hook(lambda g: g * math.inf)
    engine = GradientEngine(model, FP32, scaler=LossScaler(torch.amp.GradScaler("cpu", init_scale=8.0)))
    assert engine.scaler.enabled
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    before = _snapshot(model)
    outcome = engine.step(optimizer, step=1, loss=engine.backward([batch], model.loss).loss)
    assert (outcome.stepped, math.isfinite(outcome.grad_norm)) == (False, False)
    assert _unchanged(model, before)
    assert engine.guard.skipped_in_a_row == 1
    handle.remove()

    outcome = engine.step(optimizer, step=2, loss=engine.backward([batch], model.loss).loss)
    assert outcome.stepped and engine.scaler.state_dict()["scale"] == 4.0  # halved once by the skip
    reference.loss(batch, reduction="mean").backward()
    torch.optim.SGD(reference.parameters(), lr=0.3).step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # scale 4 is a power of two: exact unscale


def test_engine_options_reach_the_parts(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    engine = GradientEngine(
        model, PrecisionPolicy.for_device("cpu", "bfloat16"), labels_key="targets", ignore_index=0, max_skipped_steps=3
    )
    assert not engine.scaler.enabled  # bfloat16: no loss scaling
    dtypes: list[torch.dtype] = []

    def loss_fn(b: dict[str, torch.Tensor]) -> torch.Tensor:
        dtypes.append(model.layers[0].mix(model.embed(b["input_ids"])).dtype)  # a matmul under autocast
        labels = b["targets"].masked_fill(b["targets"] == 0, -100)
        return model.loss({"input_ids": b["input_ids"], "labels": labels})

    batch = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]]), "targets": torch.tensor([[2, 3, 0, 5, 0]])}
    result = engine.backward([batch], loss_fn)
    assert result.num_tokens == 3 and dtypes == [torch.bfloat16]
    with pytest.raises(GradientEngineError, match="max_skipped_steps=0"):
        GradientEngine(model, FP32, max_skipped_steps=0)
