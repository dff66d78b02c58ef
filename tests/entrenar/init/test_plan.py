"""`entrenar.init.plan`: the decisions, how paths are written, and the order of the checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from entrenar.config.schema import OptimizerSection
from entrenar.errors import DataError, InitError, ModelConfigError
from entrenar.init import FULL_FINETUNE_LR, build_plan, config_path_value, warmup_steps_for


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/proj/data/train.jsonl", "./data/train.jsonl"),
        ("/proj/data/*.jsonl", "./data/*.jsonl"),
        ("/proj", "."),
        ("/project/data.jsonl", "/project/data.jsonl"),  # a sibling folder sharing the prefix is outside
        ("/elsewhere/train.jsonl", "/elsewhere/train.jsonl"),
    ],
)
def test_config_path_value(path: str, expected: str) -> None:
    assert config_path_value(path, "/proj") == expected


def test_plan_of_a_lora_run(
    word_model: Callable[..., Path], text_samples: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    model = word_model()
    text_samples(project / "data" / "train.jsonl", list(range(1, 21)))
    monkeypatch.chdir(project)
    plan = build_plan(str(model), "lora", "data/train.jsonl", "config.yaml")
    assert plan.output == project / "config.yaml"
    assert plan.model_path == str(model)  # outside the project: absolute
    assert plan.train_path == "./data/train.jsonl"
    # llama with V=6, H=16, I=32, 1 layer, 2 heads, 1 KV head (d=8), untied:
    # 6*16 + (16*16 + 2*16*8 + 16*16 + 3*16*32 + 2*16) + 16 + 6*16 = 96 + 2336 + 16 + 96 = 2544.
    assert plan.base.num_parameters == 2544
    assert (plan.lora_rank, plan.lora_alpha, plan.lr) == (64, 16.0, OptimizerSection.lr)
    # Lengths 2..21, p95 = 20 -> 64; packed into rows of 64 (sum 230 -> 4 rows), one batch of 8, 3 epochs.
    assert (plan.data.seq_len, plan.steps) == (64, 3)
    assert plan.warmup_steps == 0  # a tenth of 3 steps


@pytest.mark.parametrize(
    ("steps", "warmup"), [(0, 0), (9, 0), (10, 1), (24, 2), (999, 99), (1000, 100), (1234, 100), (10**6, 100)]
)
def test_warmup_is_100_steps_capped_at_a_tenth_of_the_run(steps: int, warmup: int) -> None:
    assert warmup_steps_for(steps) == warmup


def test_plan_of_a_full_run_has_no_lora_and_a_lower_lr(
    word_model: Callable[..., Path], text_samples: Callable[..., Path], tmp_path: Path
) -> None:
    model = word_model()
    data = text_samples(tmp_path / "train.jsonl", [3, 4])
    plan = build_plan(str(model), "full", str(data), tmp_path / "out" / "config.yaml")
    assert (plan.lora_rank, plan.lora_alpha, plan.lr) == (None, None, FULL_FINETUNE_LR)
    assert plan.train_path == str(data)  # not inside out/


def test_local_base_inside_the_project_is_relative(
    word_model: Callable[..., Path], text_samples: Callable[..., Path], tmp_path: Path
) -> None:
    model = word_model()  # tmp_path/word-model-512
    data = text_samples(tmp_path / "train.jsonl", [3])
    plan = build_plan(str(model), "qlora", str(data), tmp_path / "config.yaml")
    assert (plan.model_path, plan.train_path) == (f"./{model.name}", "./train.jsonl")


def test_checks_fail_in_order_before_any_download(
    word_model: Callable[..., Path], text_samples: Callable[..., Path], tmp_path: Path
) -> None:
    data = text_samples(tmp_path / "train.jsonl", [3])
    with pytest.raises(InitError, match=r"--method 'dora': expected one of lora, qlora, full"):
        build_plan("no/such-model", "dora", str(tmp_path / "missing.jsonl"), tmp_path / "c.yaml")
    # The data path is checked before the Hub is asked (HF_ENDPOINT is a dead port in tests).
    with pytest.raises(DataError, match=r"missing.jsonl: no such file or directory"):
        build_plan("no/such-model", "lora", str(tmp_path / "missing.jsonl"), tmp_path / "c.yaml")
    unsupported = tmp_path / "gpt2"
    unsupported.mkdir()
    (unsupported / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelConfigError, match=r"model_type 'gpt2' is not supported"):
        build_plan(str(unsupported), "lora", str(data), tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").exists()
