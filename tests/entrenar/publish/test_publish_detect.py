"""`detect_model_folder`: adapters, full models, training records, and the refusal of checkpoints."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrenar.errors import PublishError
from entrenar.publish.detect import detect_model_folder, read_training_record


@pytest.fixture
def output(tmp_path: Path, lora_output: Any) -> Path:
    """A private copy of the LoRA run's output folder (tests edit it)."""
    return Path(shutil.copytree(lora_output.output, tmp_path / "output"))


def _set_record(folder: Path, content: object) -> None:
    (folder / "final_model.json").write_text(json.dumps(content), encoding="utf-8")


def test_lora_output_is_an_adapter_with_its_record(output: Path, lora_output: Any) -> None:
    folder = detect_model_folder(output)
    assert (folder.kind, folder.techniques) == ("adapter", ("lora",))
    assert folder.base_model == str(lora_output.base)  # adapter_config.json's base_model_name_or_path
    assert folder.base_revision is None
    assert folder.record["steps"] == 12
    assert folder.metrics_path == output / "metrics.jsonl"


def test_full_output_is_a_model_and_takes_the_base_from_the_record(full_output: Path) -> None:
    folder = detect_model_folder(full_output)
    assert (folder.kind, folder.techniques, folder.base_model) == ("full", ("full",), "Qwen/Qwen2.5-0.5B")


def test_plain_folders_without_record_or_metrics(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    folder = detect_model_folder(tiny_checkpoints["qwen3"])
    assert (folder.kind, folder.techniques, folder.base_model, folder.record, folder.metrics_path) == (
        "full",
        ("full",),
        None,
        {},
        None,
    )


def test_sharded_model_is_recognised_by_its_index(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "model.safetensors.index.json").write_text("{}", encoding="utf-8")
    assert detect_model_folder(tmp_path).kind == "full"


def test_record_revision_is_the_commit_trained_on_when_it_describes_the_adapters_base(
    output: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    config = json.loads((output / "adapter_config.json").read_text())
    summary = make_record(config["base_model_name_or_path"])
    summary["base_model"] |= {"revision": "main", "resolved_revision": "a" * 40}
    _set_record(output, summary)
    assert detect_model_folder(output).base_revision == "a" * 40


def test_adapter_base_and_revision_win_when_the_record_names_another_base(output: Path) -> None:
    config = json.loads((output / "adapter_config.json").read_text())
    config |= {"base_model_name_or_path": "acme/base", "revision": "v1"}
    (output / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    folder = detect_model_folder(output)
    assert (folder.base_model, folder.base_revision) == ("acme/base", "v1")


def test_adapter_without_base_takes_the_records(output: Path, make_record: Callable[..., dict[str, Any]]) -> None:
    config = json.loads((output / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (output / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    summary = make_record("acme/base")
    summary["base_model"]["revision"] = "v2"
    _set_record(output, summary)
    folder = detect_model_folder(output)
    assert (folder.base_model, folder.base_revision) == ("acme/base", "v2")


def test_qlora_method_comes_from_the_record(output: Path, make_record: Callable[..., dict[str, Any]]) -> None:
    # a record written before "techniques" existed: its method stands for the one technique
    _set_record(output, make_record("acme/base", "qlora"))
    assert detect_model_folder(output).techniques == ("qlora",)


def test_any_technique_list_is_taken_as_written(output: Path, make_record: Callable[..., dict[str, Any]]) -> None:
    record = make_record("acme/base")
    del record["method"]
    _set_record(output, record | {"output": "adapter", "techniques": ["qlora", "distill", "my-trick"]})
    assert detect_model_folder(output).techniques == ("qlora", "distill", "my-trick")
    _set_record(output, record | {"output": "full", "techniques": ["merge"]})
    with pytest.raises(PublishError, match="says output 'full' but the folder holds an adapter"):
        detect_model_folder(output)


def test_checkpoint_step_folder_is_refused_naming_the_output_folder(output: Path) -> None:
    with pytest.raises(PublishError, match=r"training checkpoint \(step 12\)") as exc:
        detect_model_folder(output / "checkpoints" / "step-12")
    assert f"publish the output folder {output} " in str(exc.value)
    assert "--resume" in str(exc.value)


def test_checkpoint_outside_a_checkpoints_folder_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "trainer_state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(PublishError, match="publish the output folder of the finished run"):
        detect_model_folder(tmp_path)


def test_checkpoints_folder_is_refused_naming_its_parent(output: Path) -> None:
    with pytest.raises(PublishError, match=f"publish its parent {output} "):
        detect_model_folder(output / "checkpoints")


def test_unfinished_run_says_to_resume(tmp_path: Path, output: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(output / "checkpoints", unfinished / "checkpoints")
    (unfinished / "metrics.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(PublishError, match=r"training did not finish; run `entrenar train CONFIG --resume`"):
        detect_model_folder(unfinished)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="no such folder"):
        detect_model_folder(tmp_path / "nope")
    with pytest.raises(PublishError, match="holds neither an adapter"):
        detect_model_folder(tmp_path)


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_half_an_adapter_names_the_missing_file(output: Path, missing: str) -> None:
    (output / missing).unlink()
    with pytest.raises(PublishError, match=f"has an adapter but no {missing}"):
        detect_model_folder(output)


def test_unsupported_adapter_config_is_a_publish_error(output: Path) -> None:
    config = json.loads((output / "adapter_config.json").read_text())
    (output / "adapter_config.json").write_text(json.dumps(config | {"peft_type": "IA3"}), encoding="utf-8")
    with pytest.raises(PublishError, match="peft_type 'IA3' is not LORA"):
        detect_model_folder(output)


def test_record_saying_full_for_an_adapter_is_refused(output: Path, make_record: Callable[..., dict[str, Any]]) -> None:
    _set_record(output, make_record("acme/base", "full"))
    with pytest.raises(PublishError, match="says method 'full' but the folder holds an adapter"):
        detect_model_folder(output)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read as JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"method": "dpo"}', "method 'dpo' is not one of lora, qlora, full"),
        ('{"output": "lora"}', "output 'lora' is not one of adapter, full"),
        ('{"techniques": "lora"}', "techniques must be a list of names"),
        ('{"techniques": ["lora", ""]}', "techniques must be a list of names"),
        ('{"base_model": "acme/base"}', "base_model must be an object with a string 'path'"),
        ('{"base_model": {"path": 3}}', "base_model must be an object with a string 'path'"),
    ],
)
def test_bad_records_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "final_model.json").write_text(content, encoding="utf-8")
    with pytest.raises(PublishError, match=message):
        read_training_record(tmp_path)
