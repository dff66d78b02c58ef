"""Quantization-aware training on the tiny Llama: each decoder linear runs on the weight the export will store.

LoRA for Q8_0: after training, every layer's forward equals a plain linear on its rounded merged weight, and the
GGUF file `entrenar publish` writes holds exactly those weights (decoded, q/k rows back in HF order); ``entrenar
quantize`` and publishing to the same type say so, another type or calibration says it rounds differently. A full
fine-tune for int4 (groups of 32) with int8 activations keeps the checkpoint's names and starts on schedule; a
killed run resumes bit for bit; a format the rows cannot hold is a one-line error before training.
"""

from __future__ import annotations

import io
import json
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file

from aprender.format.convert import unpermute_rope_rows
from aprender.format.gguf import read_gguf
from aprender.format.gguf_export import gguf_tensor_name
from entrenar.config import load_config
from entrenar.errors import QuantizationError
from entrenar.lora import LoRALinear
from entrenar.quant.fake import fake_quantize_activations, weight_quantizer
from entrenar.train import Callback, Trainer, run_training
from entrenar.train.qat import FakeQuantLinear, LayerFakeQuant, decoder_linears

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

HEADS = {"q_proj": 4, "k_proj": 2}  # the tiny Llama's attention and key-value heads


class Capture(Callback):
    """Keeps the trained model, and whether fake quantization is on after each step."""

    def __init__(self) -> None:
        self.model: Any = None
        self.active: list[bool] = []

    def on_step_end(self, trainer: Trainer) -> None:
        assert trainer.run.qat is not None
        self.active.append(trainer.run.qat.active)

    def on_train_end(self, trainer: Trainer) -> None:
        self.model = trainer.run.model


def _train(config: Path, *overrides: str, capture: Capture | None = None) -> tuple[Any, str]:
    stream = io.StringIO()
    callbacks: list[Callback] = [] if capture is None else [capture]
    result = run_training(
        load_config(config, list(overrides)), console=Console(file=stream, width=400), callbacks=callbacks
    )
    return result, stream.getvalue()


def _rounded(module: Any) -> torch.Tensor:
    """The weight `module`'s forward ran on (its cached rounding of the current weight)."""
    fake_quant: LayerFakeQuant = module.fake_quant
    sources: tuple[torch.Tensor, ...]
    if isinstance(module, LoRALinear):
        assert module.weight is not None
        weight, sources = module.merged_weight(), (module.weight, module.lora_A, module.lora_B)
    else:
        weight, sources = module.weight, (module.weight,)
    return fake_quant.rounded(weight, sources).values


@pytest.fixture(scope="module")
def lora_q8(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Capture, str]:
    """LoRA trained for Q8_0 for 3 steps."""
    folder = tmp_path_factory.mktemp("qat-lora")
    capture = Capture()
    config = runs.write_config(folder, tiny_checkpoints["llama"], qat={"format": "q8_0"})
    result, log = _train(config, "training.max_steps=3", capture=capture)
    return result, capture, log


def test_lora_forward_runs_on_the_rounded_merged_weight(lora_q8: tuple[Any, Capture, str]) -> None:
    result, capture, log = lora_q8
    assert "Quantization-aware training for q8_0: 14 decoder linear weights as Q8_0 (llama.cpp's quantizer)" in log
    assert capture.active == [True, True, True]
    layers = decoder_linears(capture.model)
    assert len(layers) == 14 and all(isinstance(m, LoRALinear) for m in layers.values())
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))
    for name, module in layers.items():
        assert isinstance(module, LoRALinear)
        rounded = _rounded(module)
        merged = module.merged_weight().detach()
        assert not torch.equal(rounded, merged) and (rounded - merged).abs().max() < merged.abs().max() / 100, name
        assert bool(module.lora_B.abs().sum() > 0), name  # the straight-through gradient reached B
        inputs = x if module.in_features == 64 else torch.randn(2, 3, module.in_features)
        assert torch.equal(module(inputs), F.linear(inputs, rounded)), name
    record = json.loads((result.output_dir / "final_model.json").read_text())
    assert record["techniques"] == ["lora", "qat"]
    assert record["qat"] == {
        "format": "q8_0",
        "group_size": None,
        "activations": None,
        "start_after_steps": 0,
        "weights": dict.fromkeys(layers, "q8_0"),
        "quantizers": ["Q8_0 (llama.cpp's quantizer)"],
    }


def test_the_published_gguf_holds_the_trained_weights(lora_q8: tuple[Any, Capture, str], tmp_path: Path) -> None:
    from entrenar.publish import detect_model_folder, export_model

    result, capture, _ = lora_q8
    lines: list[str] = []
    exported = export_model(
        detect_model_folder(result.output_dir),
        tmp_path / "export",
        name="qat",
        fmt="gguf",
        gguf_type="q8_0,q4_0",
        report=lines.append,
    )
    assert "qat: Q8_0 stores every weight with the quantizer the model trained with (qat.format q8_0)" in lines
    assert (
        "note: the model was trained for q8_0 (qat:), so Q4_0 rounds its weights differently from what it trained "
        "for; write q8_0 to keep them"
    ) in lines
    with read_gguf(tmp_path / "export" / exported.gguf_files[0]) as gguf:
        for name, module in decoder_linears(capture.model).items():
            stored = gguf.load_tensor(gguf_tensor_name(name))
            role = name.split(".")[-2]
            if role in HEADS:
                stored = unpermute_rope_rows(stored, HEADS[role])
            assert torch.equal(stored, _rounded(module)), name  # bit for bit what training ran on


def test_quantize_says_whether_it_keeps_the_rounding(lora_q8: tuple[Any, Capture, str], tmp_path: Path) -> None:
    from entrenar.quant.run import run_quantize

    result, _, _ = lora_q8
    lines: list[str] = []
    run_quantize(result.output_dir, tmp_path / "same.gguf", "q8_0", log=lines.append)
    assert "qat: Q8_0 stores every weight with the quantizer the model trained with (qat.format q8_0)" in lines
    lines.clear()
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(" ".join(["The lighthouse was built in 1862 and painted red and white."] * 40))
    run_quantize(result.output_dir, tmp_path / "imatrix.gguf", "q8_0", calibration=calibration, samples=2,
                 seq_len=16, log=lines.append)  # fmt: skip
    assert (
        "note: the model was trained for Q8_0 without an importance matrix; --calibration rounds its weights "
        "differently from what it trained for (drop --calibration to keep them)"
    ) in lines


def test_publishing_without_a_type_writes_the_trained_one(lora_q8: tuple[Any, Capture, str]) -> None:
    from entrenar.publish import publish

    result, _, _ = lora_q8
    published = publish(result.output_dir, "me/qat", fmt="gguf", dry_run=True, report=lambda line: None)
    assert [f.path for f in published.files if f.path.endswith(".gguf")] == ["qat-Q8_0.gguf"]


def test_full_fine_tune_int4_with_int8_activations(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    capture = Capture()
    qat = {"format": "int4", "start_after_steps": 2, "activations": "int8"}
    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], lora=None, qat=qat, optimizer={"lr": 1e-3})
    result, log = _train(
        config, "training.max_steps=3", "data.val_split=0.25", "training.eval_every=1", capture=capture
    )
    assert capture.active == [False, True, True]  # on after step 2: step 3 trained quantized
    assert (
        "Quantization-aware training for int4 after 2 steps: 14 decoder linear weights as int4, symmetric, groups of "
        "32 (torchao's IntxFakeQuantizeConfig numerics), inputs fake-quantized to int8 per token"
    ) in log
    saved = load_file(result.output_dir / "model.safetensors")
    assert saved.keys() == load_file(tiny_checkpoints["llama"] / "model.safetensors").keys()  # names unchanged
    quantizer = weight_quantizer("int4", group_size=32)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(1))
    for name, module in decoder_linears(capture.model).items():
        assert isinstance(module, FakeQuantLinear)
        rounded = _rounded(module)
        assert torch.equal(rounded, quantizer(saved[name]).values), name  # what export rounds the output to
        inputs = x[:, : module.in_features]
        assert torch.equal(module(inputs), F.linear(fake_quantize_activations(inputs), rounded, module.bias)), name
        module.fake_quant.switch.active = False
        assert torch.equal(module(inputs), F.linear(inputs, module.weight, module.bias)), name  # off: plain
        module.fake_quant.switch.active = True
    evals = runs.read_metrics(result.output_dir, "eval")
    assert [e["step"] for e in evals] == [0, 1, 2, 3] and evals[2]["eval_loss"] != evals[3]["eval_loss"]
    assert isinstance(module, FakeQuantLinear)
    with torch.inference_mode():  # a rounding made under inference mode (generation) ...
        module.weight.data.add_(0)  # ... of a changed weight
        generated = module(inputs)
    loss = module(inputs).square().sum()  # ... still serves a training step
    loss.backward()
    assert module.weight.grad is not None and torch.equal(generated, module(inputs).detach())
    record = json.loads((result.output_dir / "final_model.json").read_text())
    assert record["techniques"] == ["full", "qat"]
    assert (record["qat"]["format"], record["qat"]["group_size"], record["qat"]["activations"]) == ("int4", 32, "int8")


def test_kill_and_resume_is_bit_identical(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    overrides = ["training.max_steps=5", "training.save_every=2", "training.keep_checkpoints=1"]
    qat = {"format": "q4_0", "start_after_steps": 1}
    straight = runs.write_config(tmp_path / "straight", tiny_checkpoints["llama"], qat=qat)
    expected = load_file(_train(straight, *overrides)[0].output_dir / "adapter_model.safetensors")
    config = runs.write_config(tmp_path / "killed", tiny_checkpoints["llama"], qat=qat)
    with pytest.raises(runs.Killed):
        run_training(
            load_config(config, overrides), console=Console(file=io.StringIO()), callbacks=[runs.kill_after(3)]
        )
    resumed, _ = _train(config, *overrides)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-2"
    ours = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in expected)


def test_rows_the_format_cannot_hold_fail_before_training(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], qat={"format": "int4", "group_size": 128})
    with pytest.raises(QuantizationError, match=r"^qat\.format int4: model\.layers\.0\.self_attn\.q_proj\.weight: "):
        _train(config)
    assert not (tmp_path / "out").exists()


def test_the_card_says_what_the_model_trained_for(lora_q8: tuple[Any, Capture, str]) -> None:
    from entrenar.publish.card import CardContext, render_model_card

    result, _, _ = lora_q8
    record = json.loads((result.output_dir / "final_model.json").read_text())
    card = render_model_card(CardContext("me/qat", "gguf", ("lora", "qat"), record=record, gguf_file="qat-Q8_0.gguf"))
    assert "with LoRA + quantization-aware training using entrenar" in card
    assert (
        "## Quantization-aware training\n\nTrained for `q8_0`: the linear weights of the decoder layers were "
        "fake-quantized in the forward pass from the first step (straight-through gradient).\n"
        "Rounded as: Q8_0 (llama.cpp's quantizer).\n"
        "`entrenar publish --format gguf --gguf-type q8_0` and `entrenar quantize --gguf q8_0` (without "
        "`--calibration`) store these weights exactly as they were rounded in training.\n"
    ) in card
    record["qat"] |= {"format": "int4", "start_after_steps": 2, "activations": "int8", "quantizers": []}
    card = render_model_card(CardContext("me/qat", "model", ("lora", "qat"), record=record))
    assert (
        "Trained for `int4`: the linear weights of the decoder layers were fake-quantized in the forward pass after 2 "
        "optimizer steps in full precision (straight-through gradient), and their inputs fake-quantized to int8 per "
        "token.\n\n"
    ) in card
