"""The resolved config: to_dict / from_dict round trips, the written config.yaml reloads, path resolution."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrenar.config import (
    CONFIG_FILENAME,
    ModelSection,
    TrainConfig,
    config_to_dict,
    load_config,
    write_resolved_config,
)

WriteConfig = Callable[..., Path]

VARIANTS: list[dict[str, Any]] = [
    {},
    {"lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"]}, "optimizer": {"loraplus_lr_ratio": 16}},
    {"lora": {}, "quantize": {"bits": 8}, "publish": {"repo": "me/x", "format": "gguf", "gguf_type": "q8_0"}},
    {"optimizer": {"name": "sgd", "momentum": 0.9}, "scheduler": {"name": "step", "step_size": 5, "gamma": 0.5}},
    {"data": {"val_path": "data/val.jsonl"}, "training": {"early_stopping_patience": 3, "max_steps": 100}},
    {"model": {"path": "models/tiny", "dtype": "float16"}, "data": {"train_path": "data/*.jsonl", "val_split": 0.2}},
    {"model": {"revision": "main"}, "publish": {"repo": "me/x", "endpoint": "http://127.0.0.1:1234", "private": True}},
]


def test_config_to_dict_is_plain_and_complete(project: Path, write_config: WriteConfig) -> None:
    cfg = load_config(write_config({"lora": {"target_modules": ["q_proj"]}, "publish": {"repo": "me/x"}}))
    data = config_to_dict(cfg)
    # Hand-written: the defaults of schema.py, tuples as lists, absent quantize left out, paths absolute.
    assert data == {
        "model": {"path": "Qwen/Qwen2.5-0.5B", "revision": None, "dtype": "auto"},
        "data": {
            "train_path": str(project / "data" / "train.jsonl"),
            "val_path": None,
            "val_split": None,
            "format": "auto",
            "seq_len": 1024,
            "batch_size": 8,
            "packing": True,
            "train_on": "completion",
            "skip_invalid": False,
        },
        "optimizer": {
            "name": "adamw",
            "lr": 2e-4,
            "weight_decay": 0.0,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "momentum": None,
            "loraplus_lr_ratio": None,
        },
        "scheduler": {"name": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1, "step_size": None, "gamma": None},
        "lora": {
            "rank": 64,
            "alpha": 16.0,
            "dropout": 0.0,
            "target_modules": ["q_proj"],
            "use_rslora": False,
            "use_dora": False,
            "init": "default",
        },
        "training": {
            "epochs": 3,
            "max_steps": None,
            "grad_accum": 1,
            "grad_clip": 1.0,
            "eval_every": 100,
            "save_every": 200,
            "keep_checkpoints": 2,
            "seed": 42,
            "output_dir": str(project / "output"),
            "early_stopping_patience": None,
            "gradient_checkpointing": False,
            "log_every": 10,
            "report_to": [],
            "sample_prompts": [],
            "sample_every": None,
            "sample_max_new_tokens": None,
        },
        "publish": {
            "repo": "me/x",
            "private": False,
            "model_card": True,
            "merge_adapters": True,
            "format": "safetensors",
            "gguf_type": None,
            "endpoint": None,
        },
    }
    assert json.loads(json.dumps(data)) == data  # JSON-able as is (final_model.json)


@pytest.mark.parametrize("content", VARIANTS)
def test_round_trip_through_dict_is_identity(content: dict[str, Any], write_config: WriteConfig) -> None:
    cfg = load_config(write_config(content))
    again = TrainConfig.from_dict(config_to_dict(cfg), source="resolved", base_dir="/nonexistent")
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("content", VARIANTS)
def test_written_config_reloads_to_the_same_config(
    content: dict[str, Any], tmp_path: Path, write_config: WriteConfig
) -> None:
    cfg = load_config(write_config(content))
    out = tmp_path / "elsewhere" / "run"
    path = write_resolved_config(cfg, out)
    assert path == out / CONFIG_FILENAME
    assert load_config(path) == cfg
    assert path.read_text().startswith(f"# Resolved entrenar config ({cfg.method}):")
    assert sorted(os.listdir(out)) == [CONFIG_FILENAME]  # no temp file left behind


def test_write_replaces_an_existing_config(tmp_path: Path, write_config: WriteConfig) -> None:
    (tmp_path / CONFIG_FILENAME).write_text("old: true\n")
    cfg = load_config(write_config({"training": {"seed": 1}}))
    write_resolved_config(cfg, str(tmp_path))
    assert yaml.safe_load((tmp_path / CONFIG_FILENAME).read_text())["training"]["seed"] == 1


def test_relative_paths_resolve_against_the_config_folder(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    elsewhere = tmp_path / "cwd"
    (elsewhere / "data").mkdir(parents=True)  # a decoy: the same relative path under the working directory
    (elsewhere / "data" / "train.jsonl").write_text("{}\n")
    monkeypatch.chdir(elsewhere)
    path = write_config({"data": {"val_path": "./data/../data/val.jsonl"}, "training": {"output_dir": "out"}})
    cfg = load_config(os.path.relpath(path, elsewhere))
    assert cfg.data.train_path == str(project / "data" / "train.jsonl")
    assert cfg.data.val_path == str(project / "data" / "val.jsonl")  # normalised
    assert cfg.training.output_dir == str(project / "out")


def test_from_dict_resolves_against_base_dir_or_the_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_base = TrainConfig.from_dict(
        {"model": {"path": "../models/tiny"}, "data": {"train_path": "train.jsonl"}}, base_dir=str(project / "data")
    )
    assert with_base.data.train_path == str(project / "data" / "train.jsonl")
    assert with_base.model == ModelSection(path=str(project / "models" / "tiny"), source="local")
    assert with_base.training.output_dir == str(project / "data" / "output")
    monkeypatch.chdir(project)
    from_cwd = TrainConfig.from_dict({"model": {"path": "models/tiny"}, "data": {"train_path": "data/train.jsonl"}})
    assert from_cwd.data.train_path == str(project / "data" / "train.jsonl")
    assert from_cwd.training.output_dir == str(project / "output")


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Random valid config mappings over every section (relative paths inside the `project` fixture)."""
    method = draw(st.sampled_from(["full", "lora", "qlora"]))
    opt = draw(st.sampled_from(["adamw", "adam", "sgd", "adamw8bit"]))
    sched = draw(st.sampled_from(["constant", "linear", "cosine", "step", "inverse_sqrt"]))
    unit = st.floats(0.0, 0.99, allow_nan=False)
    positive = st.floats(1e-9, 10.0, allow_nan=False)
    small = st.integers(1, 1000)
    cfg: dict[str, Any] = {
        "model": {"path": draw(st.sampled_from(["models/tiny", "org/some-model"])), "dtype": "bfloat16"},
        "data": {
            "train_path": draw(st.sampled_from(["data/train.jsonl", "data/*.jsonl", "data"])),
            "seq_len": draw(st.integers(2, 8192)),
            "batch_size": draw(small),
            "packing": draw(st.booleans()),
        },
        "optimizer": {"name": opt, "lr": draw(positive), "weight_decay": draw(unit)},
        "scheduler": {"name": sched, "warmup_steps": draw(st.integers(1, 50))},
        "training": {"max_steps": draw(st.none() | st.integers(51, 10_000)), "seed": draw(st.integers(0, 2**32 - 1))},
    }
    if draw(st.booleans()):
        cfg["data"]["val_split"] = draw(st.floats(0.01, 0.99))
        cfg["training"]["early_stopping_patience"] = draw(small)
    if opt == "sgd":
        cfg["optimizer"]["momentum"] = draw(unit)
    else:
        cfg["optimizer"]["betas"] = [draw(unit), draw(unit)]
    if sched == "step":
        cfg["scheduler"] |= {"step_size": draw(small), "gamma": draw(st.floats(0.01, 1.0))}
    if method != "full":
        cfg["lora"] = {"rank": draw(small), "alpha": draw(positive), "dropout": draw(unit)}
        cfg["lora"]["target_modules"] = draw(st.sampled_from(["all-linear", ["q_proj", "k_proj"], r".*proj"]))
    if method == "qlora":
        cfg["quantize"] = {"bits": draw(st.sampled_from([4, 8]))}
    if draw(st.booleans()):
        fmt = draw(st.sampled_from(["safetensors", "gguf"]))
        cfg["publish"] = {"repo": "me/model-1", "private": draw(st.booleans()), "format": fmt}
    return cfg


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=valid_configs())
def test_round_trip_of_random_valid_configs(data: dict[str, Any], project: Path) -> None:
    cfg = TrainConfig.from_dict(data, base_dir=str(project))
    assert cfg.method == ("full" if "lora" not in data else "qlora" if "quantize" in data else "lora")
    resolved = config_to_dict(cfg)
    assert TrainConfig.from_dict(resolved) == cfg
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(resolved))) == cfg  # through YAML text too
