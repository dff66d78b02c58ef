"""The ``qat:`` section: defaults, every bad combination as one line naming its key path, exit code 2; the GGUF type
publishing writes by default for a QAT run.

Expected messages are written by hand from the rule each case breaks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrenar.config import ConfigError, QatSection, load_config
from fixtures.cli import run_cli

WriteConfig = Callable[..., Path]
TRAINABLE = "q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k"


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # so the source label is the relative name "config.yaml"


@pytest.mark.parametrize(
    ("qat", "extra", "expected", "techniques"),
    [
        ({"format": "Q4_K_M"}, {"lora": {}}, QatSection("q4_k_m"), ("lora", "qat")),
        ({"format": "int4"}, {}, QatSection("int4", group_size=32), ("full", "qat")),  # torchao's usual group
        ({"format": "int8"}, {}, QatSection("int8"), ("full", "qat")),  # per output channel
        (
            {"format": "int8", "group_size": 64, "start_after_steps": 3, "activations": "int8"},
            {"lora": {}},
            QatSection("int8", group_size=64, start_after_steps=3, activations="int8"),
            ("lora", "qat"),
        ),
        ({"format": "nf4"}, {"lora": {"dropout": 0.0}}, QatSection("nf4"), ("lora", "qat")),
    ],
)
def test_defaults_and_techniques(
    qat: dict[str, Any],
    extra: dict[str, Any],
    expected: QatSection,
    techniques: tuple[str, ...],
    write_config: WriteConfig,
) -> None:
    cfg = load_config(write_config({"qat": qat, **extra}))
    assert cfg.qat == expected and cfg.techniques == techniques


@pytest.mark.parametrize(("fmt", "expected"), [("q5_k_m", "q5_k_m"), ("q8_0", "q8_0"), ("int4", "f16"), (None, "f16")])
def test_publishing_to_gguf_writes_the_trained_type_by_default(
    fmt: str | None, expected: str, write_config: WriteConfig
) -> None:
    sections: dict[str, Any] = {"lora": {}, "publish": {"repo": "me/m", "format": "gguf"}}
    if fmt is not None:
        sections["qat"] = {"format": fmt}
    assert load_config(write_config(sections)).publish.gguf_type == expected  # type: ignore[union-attr]
    sections["publish"]["gguf_type"] = "q8_0,q4_0"  # a type given is kept
    assert load_config(write_config(sections)).publish.gguf_type == "q8_0,q4_0"  # type: ignore[union-attr]


BAD: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({}, {}, "qat.format: missing required key"),
    (
        {"format": "fp8"},
        {},
        f"qat.format: fp8 is not a format QAT trains for; use nf4, int8, int4 or a GGUF type: {TRAINABLE}",
    ),
    (
        {"format": "f16"},
        {},
        f"qat.format: f16 does not round weights to integers; use nf4, int8, int4 or a GGUF type: {TRAINABLE}",
    ),
    (
        {"format": "q2_k_s"},
        {},
        f"qat.format: q2_k_s needs an importance matrix, which QAT does not use; use nf4, int8, int4 or a GGUF type: "
        f"{TRAINABLE}",
    ),
    (
        {"format": "q4_k_m", "group_size": 32},
        {},
        "qat.group_size: applies to qat.format int8 or int4 only, not q4_k_m; remove it",
    ),
    ({"format": "int4", "group_size": 48}, {}, "qat.group_size: 48 is not a power of two; use 32, 64, 128 or 256"),
    ({"format": "int4", "group_size": 1}, {}, "qat.group_size: must be >= 2, got 1"),
    ({"format": "int8", "activations": "int4"}, {}, "qat.activations: 'int4' is not one of int8; did you mean int8?"),
    ({"format": "int8", "start_after_steps": -1}, {}, "qat.start_after_steps: must be >= 0, got -1"),
    (
        {"format": "int8", "start_after_steps": 10},
        {"training": {"max_steps": 10}},
        "qat.start_after_steps: 10 is not below training.max_steps (10), so no step would train quantized; lower it",
    ),
    (
        {"format": "nf4"},
        {"lora": {}, "quantize": {}},
        "qat: cannot be used with quantize: (QLoRA's base is already quantized and publishing merges into the float "
        "checkpoint; drop quantize:)",
    ),
    (
        {"format": "nf4"},
        {"prune": {"sparsity": 0.5, "end_step": 4}},
        "qat: cannot be used with prune: (train the pruned model without qat:, then train for the format in a second "
        "run)",
    ),
    (
        {"format": "q8_0"},
        {"lora": {"use_dora": True}},
        "qat: cannot be used with lora.use_dora (DoRA's rescaled weight is not fake-quantized)",
    ),
    (
        {"format": "q8_0"},
        {"lora": {"dropout": 0.1}},
        "lora.dropout: must be 0 with qat: (the merged weight W + BA is fake-quantized, so the adapter's input cannot "
        "be dropped on its own); set lora.dropout: 0",
    ),
    ({"format": "q8_0", "fromat": 1}, {}, "qat.fromat: unknown key; did you mean format?"),
]


@pytest.mark.parametrize(
    ("qat", "extra", "message"), BAD, ids=[row[2].split(":")[0] + str(i) for i, row in enumerate(BAD)]
)
def test_bad_sections_are_one_line(
    qat: dict[str, Any], extra: dict[str, Any], message: str, write_config: WriteConfig
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"qat": qat, **extra}).name)
    assert str(info.value) == f"config.yaml: {message}"


def test_train_exits_2_with_one_line(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config({"qat": {"format": "q4_k_m", "group_size": 32}})
    code, out, err = run_cli(capsys, "train", str(config))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {config}: qat.group_size: applies to qat.format int8 or int4 only, not q4_k_m; remove it"
    ]
