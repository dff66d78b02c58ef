"""``entrenar validate`` and ``entrenar info``: what they print, and that they read no weights."""

from __future__ import annotations

import os
import shutil
from importlib import import_module
from pathlib import Path

import pytest
import yaml

from entrenar.cli import main
from entrenar.config import config_to_dict, load_config
from fixtures.hub import LocalHub

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def _no_weights(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "qwen2"
    shutil.copytree(tiny_checkpoints["qwen2"], folder)
    (folder / "model.safetensors").unlink()
    return folder


def test_validate(tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = runs.write_config(tmp_path, _no_weights(tiny_checkpoints, tmp_path))
    lines = _run(capsys, "validate", str(config), "data.val_split=0.25").splitlines()
    assert lines[0] == f"{config}: valid lora config"
    assert lines[1] == (
        "  model: qwen2, 2 layers, hidden 64, 4 heads (2 kv), vocab 1024; 16,384 of 221,760 parameters train"
    )
    assert lines[2].startswith("  train: 6 samples (prompt_completion) from 1 file(s); ")
    assert lines[3].startswith("  validation: 2 samples (prompt_completion)")
    assert lines[4] == "  plan: 10 optimizer steps (2 batches per epoch)"
    assert not (tmp_path / "out").exists()


def test_info(tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = runs.write_config(tmp_path, _no_weights(tiny_checkpoints, tmp_path))
    out = _run(capsys, "info", str(config))
    head, _, tail = out.partition("\nmodel: ")
    assert head.startswith(f"# {config} resolved (lora)\n")
    assert yaml.safe_load(head) == config_to_dict(load_config(config))
    lines = tail.splitlines()
    assert lines[0] == "qwen2, 2 layers, hidden 64, 4 heads (2 kv), vocab 1024"
    assert lines[1] == "parameters: 221,760 total, 16,384 trainable (7.39%)"
    # float32: weights (205,376 frozen + 16,384 trainable) x 4 B = 887,040 B = 866.25 KiB; gradients and AdamW
    # moments of the 16,384 adapter weights: 64 KiB and 128 KiB; activations 256 tokens x 2 layers x 832 x 4 B
    # + 3 x 256 x 1024 x 4 B of loss buffers = 4,849,664 B = 4.6 MiB.
    assert lines[2:] == [
        "estimated training memory:",
        "  weights:     866.2 KiB",
        "  gradients:   64.0 KiB",
        "  optimizer:   128.0 KiB",
        "  activations: 4.6 MiB",
        "  total:       5.7 MiB",
    ]


def test_info_reads_only_config_json_from_the_hub(
    local_hub: LocalHub, tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aprender.hub import upload_folder

    upload_folder("alice/tiny", tiny_checkpoints["qwen2"], token=local_hub.tokens["alice"])
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], model={"path": "alice/tiny"})
    assert "parameters: 221,760 total" in _run(capsys, "info", str(config), "training.max_steps=1")
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert sorted(p.name for p in cache.glob("models--alice--tiny/snapshots/*/*")) == ["config.json"]
