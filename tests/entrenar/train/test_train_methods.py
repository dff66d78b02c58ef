"""LoRA, QLoRA and full fine-tuning end to end: the loss falls by 80%+ and greedy decoding recalls the data."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

import pytest
import torch
from torch import nn

from entrenar.data import Encoder, normalize_record
from entrenar.data.sources import Location
from entrenar.lora import LoRALinear
from entrenar.models import CausalLM
from entrenar.quant import NF4Linear

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


@torch.no_grad()
def _greedy(model: CausalLM, prompt: list[int], new_tokens: int) -> list[int]:
    """Append the arg-max token `new_tokens` times (full forward each time: a few tokens only)."""
    ids = list(prompt)
    for _ in range(new_tokens):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_loss_falls_by_80_percent_and_the_completions_are_recalled(trained: Callable[[str], Any], method: str) -> None:
    result = trained(method)
    losses = [record["loss"] for record in runs.read_metrics(result.output_dir)]
    assert len(losses) == 30
    assert losses[-1] <= 0.2 * losses[0], losses  # measured: ~7 -> < 0.05 nats
    model, encoder = result.run.model.eval(), Encoder(result.run.tokenizer, seq_len=64)
    for index, record in enumerate(runs.memory_records()):
        sample = encoder.encode(normalize_record(record, "prompt_completion", Location("memory", index)))
        targets = sample.targets.nonzero()[0]  # the reply and its end-of-turn token (the template's "\n" is not)
        prompt, completion = sample.ids[: targets[0]].tolist(), sample.ids[targets].tolist()
        assert _greedy(model, prompt, len(completion)) == completion, record


def test_each_method_trains_what_it_should(trained: Callable[[str], Any]) -> None:
    lora_model = trained("lora").run.model
    adapters = [m for m in lora_model.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == 7 * 2  # all-linear: q, k, v, o, gate, up, down in 2 layers
    assert all(m.base_layer is None and not m.weight.requires_grad for m in adapters)  # type: ignore[union-attr]
    assert {n.rsplit(".", 1)[-1] for n, p in lora_model.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}

    qlora_model = trained("qlora").run.model
    bases = [m.base_layer for m in qlora_model.modules() if isinstance(m, LoRALinear)]
    assert len(bases) == 14 and all(isinstance(b, NF4Linear) and b.double_quant for b in bases)
    assert not any(isinstance(m, nn.Linear) for m in qlora_model.modules())  # tied head: no dense linear left

    full_model = trained("full").run.model
    assert all(p.requires_grad for p in full_model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in full_model.modules())
