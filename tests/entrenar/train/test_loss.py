"""entrenar.train.loss: CausalLMLoss against F.cross_entropy over full logits, and packed == unpacked losses."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aprender.loss import Loss
from aprender.text import Tokenizer
from entrenar.data import Encoder, collate_packed, collate_padded, normalize_record
from entrenar.data.sources import Location
from entrenar.models import CausalLM, from_pretrained
from entrenar.train import CausalLMLoss
from entrenar.train.loss import batch_hidden_states

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


def _batch(model: CausalLM) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(7, model.config.vocab_size, (2, 9), generator=generator)
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    labels[0, :3] = -100  # a masked prompt
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    labels[1, 5:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(scope="module")
def qwen2(tiny_checkpoints: dict[str, Path]) -> CausalLM:
    return from_pretrained(tiny_checkpoints["qwen2"])


def test_is_an_aprender_loss(qwen2: CausalLM) -> None:
    loss = CausalLMLoss(qwen2)
    assert isinstance(loss, Loss)
    assert loss.name == "causal_lm"


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_matches_cross_entropy_over_full_logits(qwen2: CausalLM, reduction: str) -> None:
    # Oracle: torch's cross-entropy over the model's (B, T, V) logits, and its gradients.
    batch = _batch(qwen2)
    model = qwen2.train()
    loss = CausalLMLoss(model, chunk_size=5, reduction=reduction)  # type: ignore[arg-type]
    ours = loss.batch_loss(batch)
    ours_grad = torch.autograd.grad(ours.sum(), model.lm_head_weight)[0]
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction=reduction)
    expected_grad = torch.autograd.grad(expected.sum(), model.lm_head_weight)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("reduction", "rows"), [("sum", 10), ("mean", 10), ("none", 18)])
def test_only_labelled_positions_reach_the_lm_head(
    qwen2: CausalLM, reduction: str, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # _batch has 2 x 9 positions: row 0 loses 3 prompt positions and the last one (5 labelled), row 1 loses
    # positions 5-8 (5 labelled): 10 rows reach the head; "none" keeps all 18, as it returns a loss per position.
    import entrenar.models.head_loss as loss_module

    seen: list[int] = []
    original = loss_module.chunked_causal_lm_loss

    def spy(pred: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.append(pred.reshape(-1, pred.shape[-1]).shape[0])
        return original(pred, weight, target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loss_module, "chunked_causal_lm_loss", spy)
    batch = _batch(qwen2)
    hidden = batch_hidden_states(qwen2, batch).detach().requires_grad_(True)
    CausalLMLoss(qwen2, reduction=reduction)(hidden, batch["labels"]).sum().backward()  # type: ignore[arg-type]
    assert seen == [rows] and int((batch["labels"] != -100).sum()) == 10
    assert hidden.grad is not None and hidden.grad[batch["labels"] == -100].abs().sum() == 0


def test_casts_a_float32_head_to_bfloat16_hidden_states(qwen2: CausalLM) -> None:
    # Under bf16 autocast the hidden states are bf16 while a trainable head stays fp32.
    batch = _batch(qwen2)
    hidden = batch_hidden_states(qwen2, batch).detach().to(torch.bfloat16)
    loss = CausalLMLoss(qwen2)(hidden, batch["labels"])
    logits = (hidden @ qwen2.lm_head_weight.detach().to(torch.bfloat16).T).float()
    expected = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)


def test_batch_predictions_are_the_argmax_of_the_logits(qwen2: CausalLM) -> None:
    batch = _batch(qwen2)
    with torch.no_grad():
        summed, predictions = CausalLMLoss(qwen2, chunk_size=4).batch_predictions(batch)
        logits = qwen2(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(predictions, logits.argmax(-1))
    assert summed.item() == pytest.approx(CausalLMLoss(qwen2).batch_loss(batch).item(), rel=1e-6)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "llama"])
def test_packed_per_sample_losses_equal_unpacked(tiny_checkpoints: dict[str, Path], family: str) -> None:
    # Each sample alone (batch of one, no padding) is the oracle for its slice of the packed row.
    folder = tiny_checkpoints[family]
    model, tokenizer = from_pretrained(folder), Tokenizer.from_dir(folder)
    encoder = Encoder(tokenizer, seq_len=64)
    records = runs.memory_records()
    samples = [
        encoder.encode(normalize_record(record, "prompt_completion", Location("mem", i)))
        for i, record in enumerate(records)
    ]
    loss = CausalLMLoss(model, reduction="none")
    packed = collate_packed([samples], seq_len=sum(len(s) for s in samples) + 3, pad_id=0)
    with torch.no_grad():
        per_token = loss.batch_loss(packed)[0]
        for index, sample in enumerate(samples):
            alone = loss.batch_loss(collate_padded([sample], pad_id=0))[0].sum()
            torch.testing.assert_close(per_token[packed["seq_ids"][0] == index].sum(), alone, rtol=1e-5, atol=1e-5)
    assert per_token[packed["seq_ids"][0] == -1].abs().sum() == 0  # padding costs nothing
