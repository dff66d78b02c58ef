"""Distillation runs end to end on the tiny fixtures (they share one tokenizer): a Qwen2 teacher, a Llama student.

What is checked: the loss parts and their weighting, the KL to the teacher in evaluations, that
distillation brings the student closer to its teacher than plain fine-tuning does, layer-wise transfer with
a teacher of another width (its projection trains and is checkpointed: a killed run resumes bit for bit),
the vocabulary rules, a quantized teacher, and that the output publishes with its teacher named.
"""

from __future__ import annotations

import io
import json
import shutil
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from aprender.format.safetensors import load_file
from entrenar.config import load_config
from entrenar.train import run_training
from fixtures.cli import run_cli

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


def _quiet() -> Console:
    return Console(file=io.StringIO())


def _config(tmp_path: Path, student: Path, teacher: Path, **distill: Any) -> Path:
    section = {"teacher": str(teacher), "temperature": 2.0, "alpha": 0.5} | distill
    return runs.write_config(tmp_path, student, distill=section, data={"val_split": 0.25})


def test_parts_weighting_and_kl_in_evaluations(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_checkpoints["llama"], tiny_checkpoints["qwen2"])
    console = Console(file=io.StringIO(), width=300)
    result = run_training(load_config(config, ["training.max_steps=6", "training.eval_every=3"]), console=console)
    train = runs.read_metrics(result.output_dir)
    assert all(set(r["parts"]) == {"ce", "kd"} for r in train)
    for record in train:  # total = (1 - alpha) * ce + alpha * kd, as means per token
        assert record["loss"] == pytest.approx(0.5 * record["parts"]["ce"] + 0.5 * record["parts"]["kd"], rel=1e-5)
    assert train[-1]["parts"]["kd"] < train[0]["parts"]["kd"]  # the student moves toward the teacher
    evals = runs.read_metrics(result.output_dir, "eval")
    assert [e["step"] for e in evals] == [0, 3, 6] and all(e["eval_kl_to_teacher"] > 0 for e in evals)  # 0: base
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"| KL to teacher {evals[-1]['eval_kl_to_teacher']:.4f}" in shown  # in the progress too
    record = json.loads((result.output_dir / "final_model.json").read_text())
    assert (record["output"], record["techniques"]) == ("adapter", ["lora", "distill"])


def test_distillation_brings_the_student_closer_than_plain_fine_tuning(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    kls = {}
    for alpha in (0.0, 1.0):  # alpha 0: the same run trained on the data alone (the KL is still measured)
        config = _config(tmp_path / str(alpha), tiny_checkpoints["llama"], tiny_checkpoints["qwen2"], alpha=alpha)
        result = run_training(load_config(config, ["training.max_steps=8"]), console=_quiet())
        kls[alpha] = runs.read_metrics(result.output_dir, "eval")[-1]["eval_kl_to_teacher"]
    assert kls[1.0] < 0.8 * kls[0.0], kls


def _wider_teacher(tiny: Path, out: Path) -> Path:
    """A Qwen2 of width 96 (the fixtures are 64) with the fixtures' tokenizer: a teacher of another width."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size, config.num_hidden_layers, config.layer_types = 96, 3, ["full_attention"] * 3
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, out / name)
    return out


def test_layer_wise_transfer_resumes_bit_for_bit(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    teacher = _wider_teacher(tiny_checkpoints["qwen2"], tmp_path / "teacher")
    hidden = {"layers": "auto", "loss": "cosine", "weight": 0.3, "schedule": "progressive"}
    overrides = ["training.max_steps=6", "training.save_every=3", "training.keep_checkpoints=1"]
    straight = run_training(
        load_config(_config(tmp_path / "a", tiny_checkpoints["llama"], teacher, hidden=hidden), overrides),
        console=_quiet(),
    )
    records = runs.read_metrics(straight.output_dir)
    assert all(set(r["parts"]) == {"ce", "kd", "hidden"} for r in records)
    projections = [p for name, p in straight.run.trainable_parameters().items() if name.startswith("trainables.")]
    assert [tuple(p.shape) for p in projections] == [(96, 64), (96, 64)]  # a projection per pair, 64 -> 96

    config = _config(tmp_path / "b", tiny_checkpoints["llama"], teacher, hidden=hidden)
    with pytest.raises(runs.Killed):
        run_training(load_config(config, overrides), console=_quiet(), callbacks=[runs.kill_after(4)])
    resumed = run_training(load_config(config, overrides), console=_quiet())
    ours = load_file(resumed.output_dir / "adapter_model.safetensors")
    theirs = load_file(straight.output_dir / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    untimed = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in runs.read_metrics(resumed.output_dir)]
    assert untimed == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]  # all but wall-clock


def test_vocabulary_rules(vocab_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    student = vocab_models["qwen2"]
    console = Console(file=io.StringIO(), width=300)
    padded = _config(tmp_path / "padded", student, vocab_models["extra"])
    run_training(load_config(padded, ["training.max_steps=2"]), console=console)
    assert "its 3 rows after the student's 1024 tokens are left out" in console.file.getvalue()  # type: ignore[attr-defined]
    different = _config(tmp_path / "different", student, vocab_models["fewer"])
    code, _, err = run_cli(capsys, "train", str(different), "training.max_steps=2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has 1020 tokens and the student 1024, and id 7 is" in err


def test_quantized_teacher_and_publishing_the_student(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tiny_checkpoints["llama"], tiny_checkpoints["qwen2"], teacher_quantize="nf4")
    result = run_training(load_config(config, ["training.max_steps=2"]), console=_quiet())
    from entrenar.publish.detect import detect_model_folder

    folder = detect_model_folder(result.output_dir)
    assert folder.techniques == ("lora", "distill")
    code, out, err = run_cli(capsys, "publish", str(result.output_dir), "--repo", "alice/student", "--dry-run")
    assert code == 0 and "Dry run" in out and "model.safetensors" in out, err
    from entrenar.publish.card import CardContext, render_model_card

    card = render_model_card(CardContext("alice/student", "adapter", folder.techniques, record=folder.record))
    assert f"| Distillation | from {tiny_checkpoints['qwen2']}: forward_kl, temperature 2, alpha 0.5 |" in card
    assert "with LoRA + knowledge distillation" in card
