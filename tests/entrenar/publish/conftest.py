"""A synthesised training output folder for the publish tests, and the oracle logits of its merged model.

The trainer's output folder (DESIGN.md section 4) is built here from parts we trust: a real PEFT-format
LoRA adapter made by `entrenar.lora` on the tiny Llama fixture (random B, so merging changes the model),
the base's tokenizer and generation config, a ``final_model.json`` and a ``metrics.jsonl`` written below,
and a ``checkpoints/step-N`` folder as the trainer leaves it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from entrenar.lora import LoraConfig, lora_linear_factory, lora_modules, merge_and_unload, save_adapter
from entrenar.models import CausalLM, from_pretrained

LICENSE = "apache-2.0"
TRAIN_LOSSES = [3.2, 2.9, 2.7, 2.4, 2.35, 2.1, 2.05, 1.9, 1.95, 1.8, 1.7, 1.65]
EVAL_LOSSES = [(6, 2.2), (12, 1.9)]
INPUT_IDS = torch.randint(7, 1000, (2, 9), generator=torch.Generator().manual_seed(11))


@dataclass(frozen=True)
class LoraOutput:
    """A finished LoRA run's output folder.

    Attributes:
        output: The output folder (adapter names `base` by its local path).
        base: The base model folder (the tiny Llama plus a README.md declaring `LICENSE`).
        merged_logits: Our merged model's logits on `INPUT_IDS`, (2, 9, 1024) float32.
        adapter_logits: The same model before merging (adapter applied at run time).
        base_logits: The base model's logits, to show the adapter matters.
        input_ids: The inputs of those logits, (2, 9).
    """

    output: Path
    base: Path
    merged_logits: torch.Tensor
    adapter_logits: torch.Tensor
    base_logits: torch.Tensor
    input_ids: torch.Tensor = INPUT_IDS


def record(base_model: str, method: str = "lora") -> dict[str, Any]:
    """A ``final_model.json`` as `entrenar.train.outputs.final_model_summary` writes it."""
    data_file = "/data/hub/datasets--acme--chat-set/snapshots/abc/train.jsonl"
    return {
        "base_model": {"path": base_model, "source": "local", "revision": None, "resolved_revision": None},
        "method": method,
        "config": {
            "model": {"path": base_model, "revision": None, "dtype": "auto"},
            "data": {"train_path": data_file, "val_path": None, "seq_len": 256, "batch_size": 4},
            "optimizer": {"name": "adamw", "lr": 0.0002},
            "scheduler": {"name": "cosine", "warmup_steps": 2},
            "lora": {"rank": 4, "alpha": 8.0},
            "training": {"epochs": 3, "grad_accum": 2},
        },
        "steps": 12,
        "epochs": 3.0,
        "tokens": {"input": 24576, "target": 12000},
        "loss": {"final_train": 1.65, "best_train": 1.65, "final_eval": 1.9, "best_eval": 1.9, "best_eval_step": 12},
        "eval": {"step": 12, "epoch": 3.0, "eval_loss": 1.9, "eval_perplexity": 6.686, "eval_tokens": 900},
        "stop_reason": "completed",
        "parameters": {"trainable": 12345, "total": 140000},
        "wall_time_s": 3725.4,
        "data_files": {data_file: "0" * 64},
        "packages": {"entrenar": "0.1.0", "torch": torch.__version__},
        "created_at": "2025-01-01T00:00:00+00:00",
    }


def write_metrics(path: Path) -> None:
    """Training lines for steps 1..12 (loss from TRAIN_LOSSES) and two evaluation lines."""
    lines = []
    for step, loss in enumerate(TRAIN_LOSSES, start=1):
        lines.append(
            {
                "kind": "train",
                "step": step,
                "epoch": step / 4,
                "loss": loss,
                "lr": 2e-4,
                "grad_norm": 1.0,
                "tokens_per_s": 9e3,
            }
        )
        evals = dict(EVAL_LOSSES)
        if step in evals:
            lines.append({"kind": "eval", "step": step, "epoch": step / 4, "eval_loss": evals[step]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def _logits(model: CausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).float()


def build_lora_output(root: Path, base_src: Path) -> LoraOutput:
    """Write base/ (tiny Llama + README.md) and output/ (the run) under `root`."""
    base = root / "base"
    shutil.copytree(base_src, base)
    (base / "README.md").write_text(f"---\nlicense: {LICENSE}\nlanguage: en\n---\n# tiny llama\n", encoding="utf-8")
    config = LoraConfig(rank=4, alpha=8.0, target_modules="all-linear")
    torch.manual_seed(0)
    model = from_pretrained(base, dtype="float32", linear_factory=lora_linear_factory(config))
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(0.0, 0.2)
    output = root / "output"
    save_adapter(model, output, config, base_model_name_or_path=str(base))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(base / name, output / name)
    (output / "final_model.json").write_text(json.dumps(record(str(base))), encoding="utf-8")
    write_metrics(output / "metrics.jsonl")
    step = output / "checkpoints" / "step-12"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text('{"step": 12}', encoding="utf-8")
    (step / "trainable.safetensors").write_bytes(b"")
    (output / "checkpoints" / "latest").write_text("step-12\n", encoding="utf-8")
    adapter_logits = _logits(model)
    merged_logits = _logits(merge_and_unload(model))
    base_logits = _logits(from_pretrained(base, dtype="float32"))
    return LoraOutput(output, base, merged_logits, adapter_logits, base_logits)


@pytest.fixture(scope="session")
def lora_output(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> LoraOutput:
    """A finished LoRA run on the tiny Llama (built once per session; tests must not modify it)."""
    return build_lora_output(tmp_path_factory.mktemp("lora-run"), tiny_checkpoints["llama"])


@pytest.fixture(scope="session")
def make_record() -> Callable[..., dict[str, Any]]:
    """`record`: (base_model, method="lora") -> a final_model.json dict."""
    return record


@pytest.fixture(scope="session")
def losses() -> tuple[list[float], list[tuple[int, float]]]:
    """(training losses of steps 1..12, (step, eval loss) pairs) as `write_metrics` writes them."""
    return TRAIN_LOSSES, EVAL_LOSSES


@pytest.fixture
def full_output(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> Path:
    """A full fine-tune's output folder: the tiny Qwen2 model, a record saying method full, metrics."""
    output = tmp_path / "full-output"
    shutil.copytree(tiny_checkpoints["qwen2"], output)
    summary = record("Qwen/Qwen2.5-0.5B", "full") | {"config": {"model": {"path": "Qwen/Qwen2.5-0.5B"}}}
    summary["base_model"]["source"] = "hub"
    (output / "final_model.json").write_text(json.dumps(summary), encoding="utf-8")
    write_metrics(output / "metrics.jsonl")
    return output
