"""The ``prune:`` section: defaults, every bad combination as one line naming its key path, exit code 2.

Expected messages are written by hand from the rule each case breaks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrenar.config import ConfigError, PruneSection, load_config
from fixtures.cli import run_cli

WriteConfig = Callable[..., Path]


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # so the source label is the relative name "config.yaml"


def test_gradual_defaults_and_techniques(write_config: WriteConfig) -> None:
    cfg = load_config(write_config({"prune": {"sparsity": 0.5, "end_step": 10}}))
    assert cfg.prune == PruneSection(
        schedule="gradual", method="magnitude", sparsity=0.5, initial_sparsity=0.0, start_step=0, end_step=10,
        update_every=1,
    )  # fmt: skip
    assert cfg.techniques == ("full", "prune")


def test_oneshot_wanda_defaults(write_config: WriteConfig, project: Path) -> None:
    prune = {"schedule": "oneshot", "method": "wanda", "pattern": "2:4", "calibration": "data/val.jsonl"}
    cfg = load_config(write_config({"prune": prune, "lora": {}}))
    assert cfg.prune == PruneSection(
        schedule="oneshot", method="wanda", pattern="2:4", calibration=str(project / "data" / "val.jsonl"),
        samples=128, seed=0,
    )  # fmt: skip
    assert cfg.techniques == ("lora", "prune")


BAD: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({"sparsity": 0.5}, {}, "prune.end_step: required with schedule gradual: the step that reaches prune.sparsity"),
    ({"end_step": 4}, {}, "prune.sparsity: missing; set prune.sparsity (e.g. 0.5) or prune.pattern (2:4 or 4:8)"),
    (
        {"schedule": "oneshot", "sparsity": 0.5, "pattern": "2:4"},
        {},
        "prune.pattern: cannot be used with prune.sparsity; keep one of the two",
    ),
    (
        {"pattern": "2:4", "end_step": 4},
        {},
        "prune.pattern: applies to prune.schedule oneshot only, not gradual; remove it",
    ),
    ({"schedule": "oneshot", "pattern": "3:4"}, {}, "prune.pattern: '3:4' is not one of 2:4, 4:8; did you mean 2:4?"),
    ({"sparsity": 1.0, "end_step": 4}, {}, "prune.sparsity: must be in [0, 1), got 1.0"),
    (
        {"schedule": "oneshot", "sparsity": 0.5, "end_step": 4},
        {},
        "prune.end_step: applies to prune.schedule gradual only, not oneshot; remove it",
    ),
    (
        {"method": "wanda", "sparsity": 0.5, "end_step": 4, "calibration": "data/val.jsonl"},
        {},
        "prune.method: wanda prunes once from calibration; use schedule: oneshot or magnitude",
    ),
    (
        {"schedule": "oneshot", "method": "sparsegpt", "sparsity": 0.5},
        {},
        "prune.calibration: required with method sparsegpt: a text or JSONL file to calibrate on",
    ),
    (
        {"schedule": "oneshot", "sparsity": 0.5, "samples": 8},
        {},
        "prune.samples: applies to prune.method wanda or sparsegpt only, not magnitude; remove it",
    ),
    (
        {"sparsity": 0.5, "initial_sparsity": 0.6, "end_step": 4},
        {},
        "prune.initial_sparsity: 0.6 is above prune.sparsity (0.5); lower it",
    ),
    ({"sparsity": 0.5, "start_step": 4, "end_step": 4}, {}, "prune.end_step: 4 must be above prune.start_step (4)"),
    (
        {"sparsity": 0.5, "end_step": 10, "update_every": 3},
        {},
        "prune.end_step: end_step - start_step = 10 is not a multiple of prune.update_every (3): masks update at "
        "start_step + k * update_every and must land on end_step",
    ),
    (
        {"sparsity": 0.5, "end_step": 20},
        {"training": {"max_steps": 10}},
        "prune.end_step: 20 is past training.max_steps (10); lower it",
    ),
    (
        {"sparsity": 0.5, "end_step": 4},
        {"lora": {}, "quantize": {}},
        "prune: cannot be used with quantize: (4-bit weights hold no exact mask); drop quantize: for LoRA, or prune "
        "the base with `entrenar prune` and train LoRA with prune: {schedule: keep} on its output",
    ),
    ({"sparsity": 0.5, "end_step": 4, "spars": 1}, {}, "prune.spars: unknown key; did you mean sparsity?"),
]


@pytest.mark.parametrize(
    ("prune", "extra", "message"), BAD, ids=[row[2].split(":")[0] + str(i) for i, row in enumerate(BAD)]
)
def test_bad_sections_are_one_line(
    prune: dict[str, Any], extra: dict[str, Any], message: str, write_config: WriteConfig
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"prune": prune, **extra}).name)
    assert str(info.value) == f"config.yaml: {message}"


def test_train_exits_2_with_one_line(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config({"prune": {"schedule": "oneshot", "method": "wanda", "sparsity": 0.5}})
    code, out, err = run_cli(capsys, "train", str(config))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {config}: prune.calibration: required with method wanda: a text or JSONL file to calibrate on"
    ]
