"""entrenar.train.estimate: meta-model counts equal the real model's; memory parts computed by hand."""

from __future__ import annotations

import math
from importlib import import_module
from pathlib import Path

import pytest
import torch

from entrenar.config import load_config
from entrenar.models import read_config
from entrenar.optim import AdamW8bit
from entrenar.quant import Int8Linear, NF4Linear
from entrenar.train import build_run, count_parameters, estimate_memory, meta_model

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

BASE_QWEN2 = 205_376  # see test_outputs.py for the sum


@pytest.mark.parametrize(
    "overrides",
    [["lora=null"], [], ["quantize.bits=4"], ["quantize.bits=4", "quantize.double_quant=false"], ["quantize.bits=8"]],
    ids=["full", "lora", "qlora-nf4-dq", "qlora-nf4", "qlora-int8"],
)
def test_meta_model_matches_the_real_one(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, overrides: list[str]
) -> None:
    # Oracle: the model the trainer really builds (weights loaded, quantized, adapters added).
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), overrides)
    config = read_config(tiny_checkpoints["qwen2"])
    meta, real = meta_model(cfg, config), build_run(cfg).model
    assert count_parameters(meta) == count_parameters(real)
    assert count_parameters(real).total == BASE_QWEN2 + count_parameters(real).trainable * (cfg.lora is not None)
    stored = sum(p.numel() * p.element_size() for p in real.parameters())
    quantized = [m for m in real.modules() if isinstance(m, NF4Linear | Int8Linear)]
    stored += sum(b.numel() * b.element_size() for m in quantized for b in m.buffers())
    assert estimate_memory(cfg, config, meta).weights == stored  # float32 model: frozen and trainable 4 bytes


def test_full_fine_tune_memory_by_hand(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), ["lora=null"])
    config = read_config(tiny_checkpoints["qwen2"])
    memory = estimate_memory(cfg, config, meta_model(cfg, config))
    n = BASE_QWEN2
    # tokens = 4 x 64; per layer and token 6h + 2 kv + 3i = 384 + 2 * 32 + 384 = 832; 2 layers; float32.
    activations = 256 * 2 * 832 * 4
    loss = 3 * 256 * 1024 * 4  # 3 float32 (tokens <= 1024, vocab) buffers
    assert memory.weights == memory.gradients == 4 * n
    assert memory.optimizer == 8 * n  # AdamW: two float32 moments
    assert memory.activations == activations + loss
    assert memory.total == 16 * n + activations + loss


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.name=sgd"], 0),
        (["optimizer.name=sgd", "optimizer.momentum=0.9"], 4 * 16384),
        (["optimizer.name=adam"], 8 * 16384),
    ],
)
def test_optimizer_state(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, overrides: list[str], expected: int
) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), overrides)
    config = read_config(tiny_checkpoints["qwen2"])
    assert estimate_memory(cfg, config, meta_model(cfg, config)).optimizer == expected


def test_8bit_adamw_state_matches_the_optimizer(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # Oracle: the state tensors AdamW8bit really holds after a step (minus its per-parameter step counter).
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), ["lora=null", "optimizer.name=adamw8bit"])
    config = read_config(tiny_checkpoints["qwen2"])
    run = build_run(cfg)
    assert isinstance(run.optimizer, AdamW8bit)
    from entrenar.train import Trainer

    Trainer(run).train_step()
    held = sum(
        t.numel() * t.element_size()
        for state in run.optimizer.state.values()
        for key, t in state.items()
        if key != "step" and isinstance(t, torch.Tensor)
    )
    assert estimate_memory(cfg, config, meta_model(cfg, config)).optimizer == held


def test_gradient_checkpointing_keeps_only_layer_inputs(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = read_config(tiny_checkpoints["qwen2"])
    sizes = {}
    for flag in (False, True):
        cfg = load_config(
            runs.write_config(tmp_path, tiny_checkpoints["qwen2"]),
            [f"training.gradient_checkpointing={str(flag).lower()}", "model.dtype=bfloat16"],
        )
        sizes[flag] = estimate_memory(cfg, config, meta_model(cfg, config)).activations
    loss = 3 * 256 * 1024 * 4
    assert sizes[False] == 256 * 2 * 832 * 2 + loss  # bfloat16: 2 bytes
    assert sizes[True] == 256 * (2 * 64 + 832) * 2 + loss  # each layer's input + one layer recomputed
    assert math.isclose(count_parameters(meta_model(cfg, config)).percent, 100 * 16384 / (BASE_QWEN2 + 16384))
