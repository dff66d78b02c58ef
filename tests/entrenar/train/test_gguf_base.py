"""A `.gguf` file as `model.path`: converted once by aprender's GGUF reader, then trained like any base model."""

from __future__ import annotations

import io
from importlib import import_module
from pathlib import Path

import pytest
import torch
from rich.console import Console

from aprender.format.gguf_export import export_gguf
from aprender.reference import gguf_cache_folder
from entrenar.config import load_config
from entrenar.models import from_pretrained
from entrenar.train import run_training
from entrenar.train.setup import model_source_line
from fixtures.cli import run_cli

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


def test_a_gguf_base_validates_and_trains(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = export_gguf(tiny_checkpoints["llama"], tmp_path / "tiny-llama.f32.gguf", gguf_type="f32")
    config = runs.write_config(tmp_path, gguf)
    code, out, err = run_cli(capsys, "validate", str(config))
    assert (code, err) == (0, "") and "valid lora config" in out
    console = Console(file=io.StringIO())
    result = run_training(load_config(config, ["training.max_steps=3"]), console=console)
    assert result.state.step == 3
    # `validate` converted it already; a file never seen is converted by the run that needs it.
    assert console.file.getvalue().startswith(f"Converting {gguf} to SafeTensors... [cached]\n")  # type: ignore[attr-defined]
    fresh = export_gguf(tiny_checkpoints["llama"], tmp_path / "fresh.gguf", gguf_type="f32")
    assert model_source_line(load_config(config, [f"model.path={fresh}"]).model) == (
        f"Converting {fresh} to SafeTensors..."
    )
    # the run trained on the converted folder, whose weights are the original model's (f32: lossless)
    converted = gguf_cache_folder(gguf)
    assert result.run.model_dir == converted
    ids = torch.tensor([[3, 40, 91, 300, 12]])
    with torch.no_grad():
        original = from_pretrained(tiny_checkpoints["llama"])(ids)
        torch.testing.assert_close(from_pretrained(converted)(ids), original, rtol=1e-5, atol=1e-5)
    assert (result.output_dir / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_smollm2_gguf_trains(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, smollm2_gguf_path, data={"seq_len": 96, "batch_size": 2})
    cfg = load_config(config, ["training.max_steps=2", "training.log_every=1"])
    result = run_training(cfg, console=Console(file=io.StringIO()))
    losses = [record["loss"] for record in runs.read_metrics(result.output_dir)]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    assert result.run.model.config.num_layers == 30
