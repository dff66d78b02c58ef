"""Command-line ``key=value`` overrides: applied before validation, validated like file keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrenar.config import ConfigError, apply_overrides, load_config, parse_override

WriteConfig = Callable[..., Path]


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)


def error_of(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config("config.yaml", overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "parts", "value"),
    [
        ("training.max_steps=10", ["training", "max_steps"], 10),
        ("optimizer.lr=1e-4", ["optimizer", "lr"], 1e-4),  # YAML 1.2 float, as in files
        ("lora.target_modules=[q_proj,v_proj]", ["lora", "target_modules"], ["q_proj", "v_proj"]),
        ("optimizer.betas=[0.9,0.95]", ["optimizer", "betas"], [0.9, 0.95]),
        ("publish.private=true", ["publish", "private"], True),
        ("model.revision=null", ["model", "revision"], None),
        ("lora={rank: 4}", ["lora"], {"rank": 4}),
        ("data.train_path=a=b.jsonl", ["data", "train_path"], "a=b.jsonl"),  # split at the first '='
        (" model.dtype = float16", ["model", "dtype"], "float16"),
    ],
)
def test_parse_override(text: str, parts: list[str], value: Any) -> None:
    assert parse_override(text, "config.yaml") == (parts, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps", "config.yaml: override 'max_steps': expected key=value, e.g. training.max_steps=10"),
        ("=3", "config.yaml: override '=3': expected key=value, e.g. training.max_steps=10"),
        ("training..seed=1", "config.yaml: training..seed: malformed key path; write section.key, e.g. lora.rank"),
        ("training. seed=1", "config.yaml: training. seed: malformed key path; write section.key, e.g. lora.rank"),
        ("training.seed=", "config.yaml: training.seed: empty value; write training.seed=null to unset it"),
        (
            "lora.target_modules=[q_proj,",
            # "[q_proj," has 8 characters: the stream ends at column 9
            "config.yaml: lora.target_modules: value:1:9: invalid YAML: expected the node content, but found "
            "'<stream end>' (while parsing a flow node)",
        ),
    ],
)
def test_malformed_overrides(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text, "config.yaml")
    assert str(info.value) == message + " (from the command line)"


def test_overrides_apply_in_order_to_a_copy() -> None:
    data = {"training": {"epochs": 3}, "lora": None}
    result, keys, problems = apply_overrides(
        data, ["training.epochs=1", "lora.rank=4", "bad", "training.epochs=2"], "c.yaml"
    )
    assert result == {"training": {"epochs": 2}, "lora": {"rank": 4}}
    assert keys == ["training.epochs", "lora.rank", "training.epochs"]
    assert problems == [
        "c.yaml: override 'bad': expected key=value, e.g. training.max_steps=10 (from the command line)"
    ]
    assert data == {"training": {"epochs": 3}, "lora": None}  # the caller's mapping is untouched


def test_overrides_really_apply(project: Path, write_config: WriteConfig) -> None:
    write_config({"lora": {"target_modules": "all-linear"}})
    cfg = load_config(
        "config.yaml",
        [
            "training.max_steps=10",
            "lora.target_modules=[q_proj,v_proj]",
            "optimizer.betas=[0.9,0.95]",
            "publish.repo=me/tiny",
            "publish.private=true",
            "data.train_path=data/more.jsonl",
            "optimizer.lr=5e-5",
        ],
    )
    assert cfg.training.max_steps == 10
    assert cfg.lora is not None and cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.optimizer.betas == (0.9, 0.95)
    assert cfg.optimizer.lr == 5e-5
    assert cfg.publish is not None and (cfg.publish.repo, cfg.publish.private) == ("me/tiny", True)
    assert cfg.data.train_path == str(project / "data" / "more.jsonl")  # relative to the config's folder


def test_overrides_switch_the_method(write_config: WriteConfig) -> None:
    write_config({"lora": {}, "quantize": {"bits": 4}})
    assert load_config("config.yaml").method == "qlora"
    assert load_config("config.yaml", ["quantize=null"]).method == "lora"
    assert load_config("config.yaml", ["quantize=null", "lora=null"]).method == "full"
    write_config({"lora": {}})
    assert load_config("config.yaml", ["quantize.bits=4"]).method == "qlora"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.rnak=8"], "lora.rnak: unknown key; did you mean rank?"),
        (["lorra.rank=8"], "lorra: unknown key; did you mean lora?"),
        (["training.epochs=three"], "training.epochs: expected an integer, got 'three'"),
        (["training.max_steps=0"], "training.max_steps: must be >= 1, got 0"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas[1]: must be in [0, 1), got 1.5"),
        (["lora={rnak: 4}"], "lora.rnak: unknown key; did you mean rank?"),
        (
            ["publish.repo=not a repo"],
            "publish.repo: repo id 'not a repo' must be 'namespace/name' with exactly one '/', e.g. 'me/my-model'",
        ),
        (
            ["training.epochs.x=1"],
            "training.epochs.x: training.epochs is 3, not a section; set training.epochs=... instead",
        ),
        (  # the betas in the file clash with the name set on the command line
            ["optimizer.name=sgd"],
            "optimizer.betas: applies to optimizer.name adamw or adam or adamw8bit only, not sgd; remove it",
        ),
    ],
)
def test_override_errors_say_from_the_command_line(
    overrides: list[str], message: str, write_config: WriteConfig
) -> None:
    write_config({"training": {"epochs": 3}, "optimizer": {"betas": [0.9, 0.99]}})
    assert error_of(overrides) == "config.yaml: " + message + " (from the command line)"


def test_errors_in_the_file_are_not_blamed_on_overrides(write_config: WriteConfig) -> None:
    write_config({"lora": {"rank": 0}})
    assert error_of(["training.max_steps=5"]) == "config.yaml: lora.rank: must be >= 1, got 0"
