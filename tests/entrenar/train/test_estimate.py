"""entrenar.train.estimate: meta-model counts equal the real model's; memory parts computed by hand."""

from __future__ import annotations

import math
from importlib import import_module
from pathlib import Path

import pytest
import torch

from entrenar.config import TrainConfig, load_config
from entrenar.models import read_config
from entrenar.optim import AdamW8bit
from entrenar.quant import Int8Linear, NF4Linear
from entrenar.train import Trainer, build_run, count_parameters, estimate_memory, meta_model
from fixtures.memory import peak_cpu_bytes

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


def _measured_peak(cfg: TrainConfig) -> int:
    """What a real run holds at its peak: its model's tensors plus the allocator's peak over two training steps.

    Loading is left out: the profiler counts safetensors' memory maps as allocations that are never resident.
    """
    run = build_run(cfg)
    held = sum(t.numel() * t.element_size() for t in [*run.model.parameters(), *run.model.buffers()])
    return held + peak_cpu_bytes(lambda: Trainer(run, callbacks=[]).fit())


STEPS = ["training.max_steps=2", "training.eval_every=1000", "training.save_every=1000"]


@pytest.mark.parametrize(
    "overrides",
    [["lora=null"], [], ["quantize.bits=4"], ["lora=null", "optimizer.name=adamw8bit"]],
    ids=["full", "lora", "qlora", "full-adamw8bit"],
)
def test_estimate_bounds_the_measured_peak_of_a_real_run(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, overrides: list[str]
) -> None:
    """Margin: the estimate is never below the measured peak, and at most 2.2x it on the tiny fixture (its
    activations are mostly the loss's chunk buffers, which the estimate counts at their largest)."""
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), overrides + STEPS)
    config = read_config(tiny_checkpoints["qwen2"])
    estimate = estimate_memory(cfg, config, meta_model(cfg, config)).total
    measured = _measured_peak(cfg)
    print(f"tiny {overrides}: measured {measured / 2**20:.2f} MiB, estimate {estimate / 2**20:.2f} MiB")
    assert estimate / 2.2 <= measured <= estimate, (measured, estimate)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", [["quantize.bits=4", "lora.target_modules=all-linear"], ["lora=null"]], ids=["qlora", "full"]
)
def test_estimate_of_a_smollm2_run_is_within_15_percent(
    smollm2_hf_dir: Path, tmp_path: Path, method: list[str]
) -> None:
    """SmolLM2-135M, batch 2 x 64 tokens: QLoRA on every linear (weights and activations weigh most) and a full
    fine-tune (gradients and AdamW's moments: 3x the weights). Measured 0.87 and 1.09 of the estimate on 2026-12-07
    (the full run's excess is not broken down; likely the optimizer step's temporaries, left out of the estimate)."""
    records = [  # about 64 tokens each: full batches, as the estimate assumes
        {
            "prompt": f"Question {i}: what is {i} plus {i}, and why is that so for every number like {i}?\nAnswer:",
            "completion": f" {2 * i}, because {i} and {i} make {2 * i}: adding a number to itself doubles it.",
        }
        for i in range(8)
    ]
    runs.write_jsonl(tmp_path / "train.jsonl", records)
    overrides = [*method, "data.seq_len=64", "data.batch_size=2"]
    cfg = load_config(runs.write_config(tmp_path, smollm2_hf_dir), overrides + STEPS)
    config = read_config(smollm2_hf_dir)
    estimate = estimate_memory(cfg, config, meta_model(cfg, config)).total
    measured = _measured_peak(cfg)
    print(f"SmolLM2 {method}: measured {measured / 2**20:.1f} MiB, estimate {estimate / 2**20:.1f} MiB")
    assert 0.85 * estimate <= measured <= 1.15 * estimate, (measured / 2**20, estimate / 2**20)
