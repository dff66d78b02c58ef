"""Token-normalised gradient accumulation: k micro-batches give exactly one big batch's gradient and update.

Oracle: the same model copy trained on the whole batch at once with aprender's mean-over-tokens causal-LM
loss (itself tested against ``F.cross_entropy``), then one ``torch.optim`` step.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.autograd import (
    GradientAccumulator,
    LossScaler,
    PrecisionPolicy,
    backward_accumulated,
    count_target_tokens,
)
from entrenar.errors import GradientEngineError

# Uneven on purpose: 8 sequences whose target-token counts differ a lot between the 4 micro-batches of 2.
LENGTHS = [12, 12, 3, 2, 9, 12, 4, 7]
PROMPTS = [0, 5, 0, 1, 2, 8, 0, 3]
SEQ_LEN = 12


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _big_batch_reference(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one batch with the mean loss over all its target tokens."""
    loss = model.loss(batch, reduction="mean")
    loss.backward()
    return loss.item(), _grads(model)


def _assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_four_micro_batches_equal_one_batch_of_eight_uneven(lm: SimpleNamespace) -> None:
    batch = lm.make_batch(LENGTHS, PROMPTS, SEQ_LEN, seed=1)
    micro = lm.split(batch, 2)
    per_micro = [count_target_tokens([m]) for m in micro]
    assert len(set(per_micro)) == 4  # genuinely uneven: 4 different token counts
    reference = lm.TinyLM(num_layers=2)
    model = copy.deepcopy(reference)

    want_loss, want = _big_batch_reference(reference, batch)
    result = backward_accumulated(micro, model.loss)

    # Hand count: tokens max(prompt, 1)..length-1 of each row are targets (the first token never is): 39.
    assert result.num_tokens == sum(n - max(p, 1) for n, p in zip(LENGTHS, PROMPTS, strict=True)) == 39
    assert result.num_micro_batches == 4
    assert result.loss == pytest.approx(want_loss, rel=1e-6)
    _assert_grads_close(_grads(model), want)

    # One optimizer step from the same weights and gradients lands on the same weights.
    for net in (reference, model):
        torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9).step()
    for (name, got), want_param in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want_param, rtol=1e-5, atol=1e-7, msg=name)


def test_naive_one_over_k_averaging_differs_when_uneven(lm: SimpleNamespace) -> None:
    """The classic bug: mean loss per micro-batch / k. Equal token counts hide it, uneven ones expose it."""
    for lengths, prompts, should_match in ((LENGTHS, PROMPTS, False), ([8] * 8, [2] * 8, True)):
        batch = lm.make_batch(lengths, prompts, SEQ_LEN, seed=2)
        reference = lm.TinyLM()
        naive = copy.deepcopy(reference)
        _, want = _big_batch_reference(reference, batch)
        micro = lm.split(batch, 2)
        for m in micro:
            (naive.loss(m, reduction="mean") / len(micro)).backward()
        got = _grads(naive)
        close = all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7) for n in want)
        assert close is should_match


@settings(max_examples=15, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 10), st.integers(0, 10)).map(lambda t: (t[0], min(t[1], t[0]))),
        min_size=6,
        max_size=6,
    ),
    micro_size=st.sampled_from([1, 2, 3, 6]),
)
def test_accumulation_matches_big_batch_for_any_masks(
    lm: SimpleNamespace, rows: list[tuple[int, int]], micro_size: int
) -> None:
    """Property: any padding / prompt masks, any micro-batch size: same gradients as the whole batch."""
    lengths, prompts = [r[0] for r in rows], [r[1] for r in rows]
    batch = lm.make_batch(lengths, prompts, 10, seed=sum(lengths))
    if count_target_tokens([batch]) == 0:
        return  # all masked: covered by test_all_tokens_ignored_gives_zero_gradients
    reference = lm.TinyLM(num_layers=1)
    model = copy.deepcopy(reference)
    _, want = _big_batch_reference(reference, batch)
    backward_accumulated(lm.split(batch, micro_size), model.loss)
    _assert_grads_close(_grads(model), want)


def test_iterative_accumulator_equals_backward_accumulated(lm: SimpleNamespace) -> None:
    micro = lm.split(lm.make_batch(LENGTHS, PROMPTS, SEQ_LEN, seed=3), 2)
    a, b = lm.TinyLM(), lm.TinyLM()
    result_a = backward_accumulated(micro, a.loss)
    acc = GradientAccumulator(count_target_tokens(micro))
    for m in micro:
        acc.backward(b.loss(m))
    result_b = acc.result()
    assert result_a == result_b
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad), name


def test_count_target_tokens_hand_case() -> None:
    labels = [torch.tensor([[1, -100, 2], [-100, -100, 3]]), torch.tensor([[0, 0, 5]])]
    # Hand counts: 3 entries != -100 in the first tensor, 3 in the second; with ignore_index=0, all 6 and 1.
    assert count_target_tokens([{"labels": t} for t in labels]) == 3 + 3
    assert count_target_tokens([{"targets": t} for t in labels], labels_key="targets", ignore_index=0) == 6 + 1
    assert count_target_tokens([]) == 0


def test_labels_key_and_ignore_index_reach_the_count(lm: SimpleNamespace) -> None:
    """Renamed labels and ignore_index=0: the loss is scaled by the count those settings give."""
    model = lm.TinyLM()
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "targets": torch.tensor([[2, 0, 4, 0]])}

    def summed(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.loss({"input_ids": b["input_ids"], "labels": b["targets"].masked_fill(b["targets"] == 0, -100)})

    result = backward_accumulated([batch], summed, labels_key="targets", ignore_index=0)
    assert result.num_tokens == 2
    assert result.loss == pytest.approx(summed(batch).item() / 2, rel=1e-6)


def test_all_tokens_ignored_gives_zero_gradients(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    batch = lm.make_batch([5, 5], [5, 5], 6, seed=4)  # every target is prompt or padding
    result = backward_accumulated(lm.split(batch, 1), model.loss)
    assert (result.loss, result.num_tokens, result.num_micro_batches) == (0.0, 0, 2)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_precision_runs_forward_under_autocast(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    seen: list[torch.dtype] = []

    def loss_fn(b: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(model.layers[0].mix(model.embed(b["input_ids"])).dtype)
        return model.loss(b)

    micro = lm.split(lm.make_batch(LENGTHS[:2], PROMPTS[:2], SEQ_LEN, seed=5), 1)
    backward_accumulated(micro, loss_fn, precision=PrecisionPolicy.for_device("cpu", "bfloat16"))
    backward_accumulated(micro, loss_fn, precision=PrecisionPolicy.for_device("cpu", "float32"))
    backward_accumulated(micro, loss_fn)
    assert seen == [torch.bfloat16] * 2 + [torch.float32] * 4


def test_scaler_multiplies_gradients_not_the_reported_loss(lm: SimpleNamespace) -> None:
    """With a loss scale of 8 the raw gradients are exactly 8× the unscaled ones (8 is a power of two)."""
    micro = lm.split(lm.make_batch(LENGTHS[:4], PROMPTS[:4], SEQ_LEN, seed=6), 2)
    plain, scaled = lm.TinyLM(), lm.TinyLM()
    want = backward_accumulated(micro, plain.loss)
    scaler = LossScaler(torch.amp.GradScaler("cpu", init_scale=8.0))
    got = backward_accumulated(micro, scaled.loss, scaler=scaler)
    assert got.loss == pytest.approx(want.loss, rel=1e-6)
    for p_plain, p_scaled in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(p_scaled.grad, 8.0 * p_plain.grad, rtol=1e-6, atol=0.0)


def test_argument_errors(lm: SimpleNamespace) -> None:
    model = lm.TinyLM()
    batch = lm.make_batch([4], [0], 4, seed=7)
    with pytest.raises(GradientEngineError, match="no micro-batches"):
        backward_accumulated([], model.loss)
    with pytest.raises(GradientEngineError, match="micro-batch 1 has no tensor under 'labels'"):
        count_target_tokens([batch, {"input_ids": batch["input_ids"]}])
    with pytest.raises(GradientEngineError, match="micro-batch 0"):
        count_target_tokens([batch["labels"]])
    with pytest.raises(GradientEngineError, match=r"got \(1, 4\); pass the micro-batch's summed token loss"):
        backward_accumulated([batch], lambda b: model.loss(b, reduction="none"))
    with pytest.raises(GradientEngineError, match="got float"):
        GradientAccumulator(1).backward(1.0)  # type: ignore[arg-type]
    with pytest.raises(GradientEngineError, match="does not require grad"), torch.no_grad():
        backward_accumulated([batch], model.loss)
    for bad in (-1, 1.5, True):
        with pytest.raises(GradientEngineError, match="num_tokens"):
            GradientAccumulator(bad)  # type: ignore[arg-type]
