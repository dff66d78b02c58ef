"""`entrenar.init.template`: the written config loads and would train, is commented key by key, and is safe to write."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from entrenar.config import config_to_dict, load_config, parse_yaml
from entrenar.config.schema import LoraSection
from entrenar.errors import ConfigError, InitError
from entrenar.init import (
    PUBLISH_REPO_PLACEHOLDER,
    InitPlan,
    build_plan,
    check_output,
    key_docs,
    render_config,
    write_config,
)
from entrenar.init.template import SECTIONS
from entrenar.train.validate import validate_run

_KEY_LINE = re.compile(r"^  (\w+): ")


@pytest.fixture
def project(tmp_path: Path, chat_data: Callable[[int], Path]) -> Path:
    """``proj/`` holding ``data/train.jsonl`` (30 chat records)."""
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    chat_data(30).rename(root / "data" / "train.jsonl")
    return root


def _plan(base: Path | str, method: str, project: Path, name: str = "config.yaml") -> InitPlan:
    return build_plan(str(base), method, str(project / "data" / "train.jsonl"), project / name)


@pytest.mark.parametrize(
    ("family", "method"), [("llama", "lora"), ("qwen2", "qlora"), ("qwen3", "full"), ("mistral", "lora")]
)
def test_written_config_loads_and_would_train(
    family: str, method: str, project: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    plan = _plan(tiny_checkpoints[family], method, project)
    path = write_config(plan, force=False)
    cfg = load_config(path)
    assert cfg.method == method
    assert cfg.model.path == str(tiny_checkpoints[family]) and cfg.model.source == "local"
    assert cfg.data.train_path == str(project / "data" / "train.jsonl")
    assert (cfg.data.format, cfg.data.seq_len) == ("messages", plan.data.seq_len)
    assert cfg.optimizer.lr == plan.lr
    assert cfg.training.output_dir == str(project / "output")
    assert cfg.publish is None
    if method == "full":
        assert cfg.lora is None
    else:
        assert cfg.lora is not None
        assert (cfg.lora.rank, cfg.lora.alpha) == (plan.lora_rank, plan.lora_alpha) == (64, 16.0)
    assert cfg.scheduler.warmup_steps == plan.warmup_steps == plan.steps // 10
    assert (cfg.quantize is not None) == (method == "qlora")
    # What `entrenar validate` checks: model config and tokenizer, every record encoded, LoRA targets, schedule.
    report = validate_run(cfg)
    assert len(report.train_data.samples) == 30
    assert report.plan.total_steps == plan.steps  # init's estimate is the trainer's plan
    # The header's example override keeps the warmup (a tenth of the 3 epochs' steps) inside the run.
    assert "# Override:  entrenar train config.yaml training.epochs=1   (any key.path=value)\n" in path.read_text()
    assert validate_run(load_config(path, ["training.epochs=1"])).plan.total_steps > plan.warmup_steps
    if method == "full":
        assert report.parameters.trainable == report.parameters.total == plan.base.num_parameters


def test_every_schema_key_is_written_with_a_comment(project: Path, tiny_checkpoints: dict[str, Path]) -> None:
    lines = render_config(_plan(tiny_checkpoints["qwen2"], "qlora", project)).split("\n")
    data = yaml.safe_load("\n".join(lines))
    assert list(data) == ["model", "data", "optimizer", "scheduler", "lora", "quantize", "training"]
    for name, section in data.items():
        keys = [f.name for f in fields(SECTIONS[name]) if "spec" in f.metadata]
        assert list(section) == keys
    for index, line in enumerate(lines):
        if _KEY_LINE.match(line):  # each key line follows a comment line
            assert lines[index - 1].startswith("  # "), line


def test_key_docs_come_from_the_schema() -> None:
    docs = key_docs(LoraSection)
    assert docs["rank"] == "r, the inner width of the adapter, >= 1."
    assert docs["target_modules"].startswith("`all-linear` (every linear layer but the LM head), a list of module")
    assert docs["target_modules"].endswith("or a regex string matched against whole module paths.")
    for section in SECTIONS.values():
        assert all(text.strip() for text in key_docs(section).values())
    assert "source" not in key_docs(SECTIONS["model"])  # derived, not a key


def test_key_docs_report_an_undocumented_key() -> None:
    class Undocumented(LoraSection):
        """Only the rank is documented.

        Attributes:
            rank: documented.
        """

    with pytest.raises(KeyError, match="alpha"):
        key_docs(Undocumented)


def test_init_notes_explain_the_chosen_values(project: Path, tiny_checkpoints: dict[str, Path]) -> None:
    plan = _plan(tiny_checkpoints["qwen2"], "lora", project)
    text = render_config(plan).replace("\n  # ", " ")  # join wrapped comment lines
    n = f"{plan.base.num_parameters:,}"
    p95 = sorted(plan.data.lengths)[28]  # nearest rank ceil(0.95 * 30) = 29
    assert f"init: qwen2, {n} parameters\n  path: " in text
    assert f"init: for a base of {n} parameters (< 1B: 64, larger: 128)" in text
    assert "init: 16 at every rank, QLoRA's setting (scale alpha / rank = 0.25)\n  alpha: 16.0 " in text
    assert (
        f"init: 100 steps, capped at a tenth of the run's {plan.steps} planned optimizer steps\n"
        f"  warmup_steps: {plan.steps // 10} "
    ) in text
    assert (
        f"init: the 95th percentile of your samples' lengths ({p95} tokens, longest {max(plan.data.lengths)}) "
        f"rounded up to a multiple of 64, at most the model's context (512); {plan.data.truncated} of 30 samples "
        f"are longer and will be cut\n  seq_len: {plan.data.seq_len} "
    ) in text
    assert f"init: about {plan.steps} optimizer steps" in text
    full = render_config(_plan(tiny_checkpoints["qwen2"], "full", project))
    assert "# init: full fine-tune: 10x below LoRA's 2e-4\n  lr: 2.0e-05\n" in full
    assert "\nlora:" not in full and "\nquantize:" not in full


def _uncomment_publish(text: str) -> str:
    head, publish = text.split("# publish:\n")
    body = [line.removeprefix("# ") for line in publish.rstrip("\n").split("\n")]
    return head + "publish:\n" + "\n".join(body) + "\n"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_publish_section_is_commented_out_and_valid_once_uncommented(
    method: str, project: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    text = render_config(_plan(tiny_checkpoints["llama"], method, project))
    assert parse_yaml(text, "c").get("publish") is None
    assert f"#   repo: {PUBLISH_REPO_PLACEHOLDER}\n" in text
    enabled = project / "enabled.yaml"
    enabled.write_text(_uncomment_publish(text))
    cfg = load_config(enabled)
    assert cfg.publish is not None and cfg.publish.repo == PUBLISH_REPO_PLACEHOLDER
    assert cfg.publish.merge_adapters is (None if method == "full" else True)


def test_hub_base_is_written_as_the_repo_id(local_hub: Any, project: Path, tiny_checkpoints: dict[str, Path]) -> None:
    from aprender.hub import upload_folder

    upload_folder("alice/tiny-llama", tiny_checkpoints["llama"], token=local_hub.tokens["alice"])
    plan = _plan("alice/tiny-llama", "qlora", project)
    cfg = load_config(write_config(plan, force=False))
    assert (cfg.model.path, cfg.model.source, cfg.model.revision) == ("alice/tiny-llama", "hub", None)
    local = load_config(write_config(_plan(tiny_checkpoints["llama"], "qlora", project, "local.yaml"), force=False))
    expected = config_to_dict(local)
    expected["model"]["path"] = "alice/tiny-llama"
    assert config_to_dict(cfg) == expected  # the same proposal from the Hub as from the folder


def test_force_and_folders(project: Path, tiny_checkpoints: dict[str, Path]) -> None:
    plan = _plan(tiny_checkpoints["qwen3"], "lora", project)
    plan.output.write_text("keep me\n")
    with pytest.raises(InitError, match=r"already exists; pass --force"):
        write_config(plan, force=False)
    assert plan.output.read_text() == "keep me\n"
    write_config(plan, force=True)
    assert plan.output.read_text() == render_config(plan)
    assert [p.name for p in project.iterdir() if p.name.startswith(".")] == []  # no temp file left
    with pytest.raises(InitError, match=r"is a folder; name the config file"):
        check_output(project / "data", force=True)
    check_output(project / "new.yaml", force=False)


def test_missing_folders_are_created(project: Path, tiny_checkpoints: dict[str, Path]) -> None:
    plan = _plan(tiny_checkpoints["qwen3"], "full", project, "configs/run1/config.yaml")
    path = write_config(plan, force=False)
    assert path == project / "configs" / "run1" / "config.yaml"
    cfg = load_config(path)
    assert cfg.data.train_path == str(project / "data" / "train.jsonl")  # "./../../data" is outside: absolute
    assert cfg.training.output_dir == str(project / "configs" / "run1" / "output")


def test_an_invalid_rendering_is_not_written(
    project: Path, tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from entrenar.init import template

    plan = _plan(tiny_checkpoints["qwen3"], "lora", project)
    monkeypatch.setattr(template, "_yaml_scalar", lambda value: "[oops")  # unbalanced flow sequence
    with pytest.raises(ConfigError):
        write_config(plan, force=False)
    assert not plan.output.exists()


def test_awkward_paths_and_globs_survive_yaml(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], chat_data: Callable[[int], Path]
) -> None:
    folder = tmp_path / "proj" / "data: #1 'x'"
    folder.mkdir(parents=True)
    chat_data(5).rename(folder / "a.jsonl")
    chat_data(7).rename(folder / "b.jsonl")
    plan = build_plan(str(tiny_checkpoints["qwen2"]), "lora", str(folder / "*.jsonl"), tmp_path / "proj" / "c.yaml")
    assert plan.train_path == "./data: #1 'x'/*.jsonl"
    cfg = load_config(write_config(plan, force=False))
    assert cfg.data.train_path == str(folder / "*.jsonl")
    assert plan.data.samples == 12 and len(plan.data.files) == 2
