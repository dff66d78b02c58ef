"""entrenar.train.outputs: the output folder loads in transformers/PEFT and final_model.json tells the truth."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import warnings
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors import safe_open

from aprender.text import Tokenizer
from entrenar.config import TrainConfig, config_to_dict, load_config
from entrenar.lora import adapter_state_dict
from entrenar.train import outputs, run_training

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

_IDS = torch.tensor([[11, 42, 97, 300, 512, 7, 64, 901]])


def _hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_lora_adapter_loads_in_peft_with_the_same_logits(
    trained: Callable[[str], Any], memorizable_checkpoints: dict[str, Path]
) -> None:
    # Oracle: transformers' base model + PEFT's loader of our adapter files.
    from peft import PeftModel

    result = trained("lora")
    out = result.output_dir
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == ("LORA", "CAUSAL_LM", 8, 16)
    assert config["base_model_name_or_path"] == str(memorizable_checkpoints["qwen2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(_hf_model(memorizable_checkpoints["qwen2"]), out).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=_IDS).logits
        ours = result.run.model.eval()(_IDS)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_qlora_adapter_holds_the_trained_tensors(trained: Callable[[str], Any]) -> None:
    from safetensors.torch import load_file

    result = trained("qlora")
    saved = load_file(result.output_dir / "adapter_model.safetensors")
    ours = adapter_state_dict(result.run.model)
    assert saved.keys() == ours.keys() and len(saved) == 2 * 14
    for key, tensor in ours.items():
        assert torch.equal(saved[key], tensor)


def test_qlora_adapter_in_peft_on_the_dequantized_base_gives_our_logits(
    trained: Callable[[str], Any], memorizable_checkpoints: dict[str, Path]
) -> None:
    # Oracle: transformers' model with every quantized linear replaced by its de-quantized NF4 weight, and PEFT's
    # loader of our adapter files on top: what a user gets from our QLoRA output.
    from peft import PeftModel

    from entrenar.lora import LoRALinear

    result = trained("qlora")
    model = result.run.model.eval()
    base = _hf_model(memorizable_checkpoints["llama"])
    replaced = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoRALinear) and hasattr(module.base_layer, "weight_dequantized"):
                target = base.get_submodule(name)
                dequantized = module.base_layer.weight_dequantized(torch.float32)
                assert (dequantized - target.weight).abs().max() > 0  # NF4 rounding: not the original weight
                target.weight.copy_(dequantized)
                replaced += 1
    assert replaced == 14  # every linear of the two layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(base, result.output_dir).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=_IDS).logits
        ours = model(_IDS)
    torch.testing.assert_close(ours.float(), expected, rtol=1e-4, atol=1e-4)
    with peft_model.disable_adapter(), torch.no_grad():
        assert (peft_model(input_ids=_IDS).logits - expected).abs().max() > 1e-2  # the adapter matters


def test_full_model_loads_in_transformers_with_the_same_logits(trained: Callable[[str], Any]) -> None:
    result = trained("full")
    out = result.output_dir
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    with torch.no_grad():
        expected = _hf_model(out)(input_ids=_IDS).logits
        ours = result.run.model.eval()(_IDS)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_tokenizer_and_generation_config_are_written(
    trained: Callable[[str], Any], memorizable_checkpoints: dict[str, Path], method: str
) -> None:
    result = trained(method)
    out = result.output_dir
    saved, original = Tokenizer.from_dir(out), result.run.tokenizer
    text = "Question: Who ran the bakery?"
    assert saved.encode(text) == original.encode(text)
    assert saved.chat_template == original.chat_template
    generation = json.loads((out / "generation_config.json").read_text())
    base = json.loads((result.run.model_dir / "generation_config.json").read_text())
    assert generation == base and generation["eos_token_id"] == [2, 0]  # the base's, carried over


def test_final_model_json(trained: Callable[[str], Any], memorizable_checkpoints: dict[str, Path]) -> None:
    result = trained("lora")
    out = result.output_dir
    summary = json.loads((out / "final_model.json").read_text())
    losses = [record["loss"] for record in runs.read_metrics(out)]
    cfg = result.run.config
    train_file = Path(cfg.data.train_path)
    assert summary["base_model"] == {
        "path": str(memorizable_checkpoints["qwen2"]),
        "source": "local",
        "revision": None,
        "resolved_revision": None,
    }
    assert (summary["output"], summary["techniques"]) == ("adapter", ["lora"])
    assert (summary["steps"], summary["stop_reason"]) == (30, "completed")
    assert summary["config"] == config_to_dict(cfg)
    assert summary["epochs"] == pytest.approx(30 / 2)  # 8 samples, batch 4: 2 batches per epoch
    assert summary["tokens"]["input"] == sum(r["tokens"] for r in runs.read_metrics(out)[-1:])
    assert summary["tokens"]["target"] > 0
    assert summary["loss"]["final_train"] == losses[-1]
    assert summary["loss"]["best_train"] == min(losses)
    assert summary["loss"]["best_eval"] is None and summary["eval"] is None
    # Base qwen2: embed + head 2 x 1024*64, per layer q/k/v (+bias) 4160 + 2 * 2080, o 4096, MLP 3 * 8192,
    # norms 128 -> 37120 x 2 layers, final norm 64: 205376. LoRA r=8 per layer: 8 * sum(in + out) = 8192, x 2.
    assert summary["parameters"] == {"trainable": 16384, "total": 205376 + 16384}
    assert summary["data_files"] == {str(train_file): hashlib.sha256(train_file.read_bytes()).hexdigest()}
    assert summary["packages"]["torch"] == torch.__version__
    assert summary["wall_time_s"] > 0


def test_metrics_and_resolved_config(trained: Callable[[str], Any]) -> None:
    result = trained("lora")
    out = result.output_dir
    records = runs.read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 31))
    assert set(records[0]) == {"kind", "step", "epoch", "loss", "parts", "lr", "grad_norm", "tokens_per_s", "tokens"}
    assert records[0]["epoch"] == 0.5 and records[0]["lr"] == 1.0e-2
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in records)
    assert load_config(out / "config.yaml") == result.run.config


def test_full_fine_tune_is_saved_in_the_model_dtype_and_a_default_generation_config(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoints["qwen2"], base)
    (base / "generation_config.json").unlink()  # the ids then come from config.json
    overrides = ["model.dtype=bfloat16", "training.max_steps=1"]
    cfg = load_config(runs.write_config(tmp_path, base, lora=None), overrides)
    out = run_training(cfg, console=Console(file=io.StringIO())).output_dir
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}  # noqa: SIM118
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    lora_out = run_training(
        load_config(
            runs.write_config(tmp_path, base, name="lora.yaml"), ["training.max_steps=1", "training.output_dir=lo"]
        ),
        console=Console(file=io.StringIO()),
    ).output_dir
    generation = json.loads((lora_out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0}  # qwen2 fixture's config.json


def test_package_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "PACKAGES", ("torch", "no-such-distribution"))
    versions = outputs.package_versions()
    assert versions["torch"] == torch.__version__
    assert versions["no-such-distribution"] == "not installed"
    assert versions["python"] == platform.python_version()


@pytest.mark.parametrize(
    ("sections", "techniques"),
    [
        ({}, ["full"]),
        ({"lora": {}, "quantize": {}}, ["qlora"]),
        ({"lora": {}, "distill": {"teacher": "org/t"}}, ["lora", "distill"]),
    ],
)
def test_techniques_name_the_method_then_distillation(sections: dict[str, Any], techniques: list[str]) -> None:
    data = {"model": {"path": "org/base"}, "data": {"train_path": "."}, **sections}
    assert outputs.techniques_of(TrainConfig.from_dict(data)) == techniques
