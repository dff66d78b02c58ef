"""``training.report_to: [tensorboard]``: TensorBoard's own reader (EventAccumulator) reads back the scalars of
``metrics.jsonl``, equal as float32, also after a kill and resume (the killed run's steps past its checkpoint are
hidden, as they are gone from ``metrics.jsonl``)."""

from __future__ import annotations

import io
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from entrenar.config import load_config
from entrenar.train import run_training
from entrenar.train.tensorboard import TENSORBOARD_DIR, train_scalars

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = event_accumulator.EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _expected(out: Path) -> dict[str, list[tuple[int, float]]]:
    """The tags and float32 values `metrics.jsonl` holds."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in runs.read_metrics(out, "train"):
        for tag, value in train_scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    for record in runs.read_metrics(out, "eval"):
        for tag, value in record.items():
            if tag.startswith("eval_"):
                expected.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    return expected


def _train(config: Path, *overrides: str, callbacks: list[Any] | None = None) -> Any:
    return run_training(load_config(config, list(overrides)), console=Console(file=io.StringIO()), callbacks=callbacks)


def test_tensorboard_reads_what_metrics_jsonl_holds(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], training={"report_to": ["tensorboard"]})
    result = _train(config, "training.max_steps=4", "data.val_split=0.25", "training.eval_every=2")
    scalars = _scalars(result.output_dir / TENSORBOARD_DIR)
    expected = _expected(result.output_dir)
    assert set(scalars) == {
        "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "epoch", "parts/ce",
        "eval_loss", "eval_perplexity", "eval_token_accuracy", "eval_tokens",
    }  # fmt: skip
    assert scalars == expected and [step for step, _ in scalars["eval_loss"]] == [0, 2, 4]  # 0: the base model


def test_without_report_to_there_are_no_event_files(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result = _train(runs.write_config(tmp_path, tiny_checkpoints["llama"]), "training.max_steps=1")
    assert not (result.output_dir / TENSORBOARD_DIR).exists()


def test_a_resumed_run_hides_the_killed_runs_later_steps(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], training={"report_to": ["tensorboard"]})
    overrides = ["training.max_steps=6", "training.save_every=2"]
    with pytest.raises(runs.Killed):
        _train(config, *overrides, callbacks=[runs.kill_after(3)])  # logged steps 1-3, checkpoint at 2
    resumed = _train(config, *overrides)
    assert resumed.resumed_from.name == "step-2"
    folder = resumed.output_dir / TENSORBOARD_DIR
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    scalars = _scalars(folder)
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]  # step 3 once: the resumed run's
    assert scalars == _expected(resumed.output_dir)
