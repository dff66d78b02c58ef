"""The model card: front matter (parsed back as YAML), training table, license, datasets, usage snippets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from entrenar import __version__
from entrenar.publish.card import (
    CardContext,
    base_license,
    card_metadata,
    hub_dataset_ids,
    render_model_card,
    write_model_card,
)
from entrenar.publish.curve import LossPoints

RecordFactory = Callable[..., dict[str, Any]]


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def _ctx(make_record: RecordFactory, **overrides: Any) -> CardContext:
    values: dict[str, Any] = {
        "repo_id": "alice/tiny",
        "layout": "model",
        "techniques": ("lora",),
        "base_model": "acme/base",
        "license": "apache-2.0",
        "datasets": ("acme/chat-set",),
        "record": make_record("acme/base"),
        "chat": True,
    }
    return CardContext(**(values | overrides))


def test_front_matter_of_a_merged_model(make_record: RecordFactory) -> None:
    meta = _front_matter(render_model_card(_ctx(make_record)))
    assert meta == {
        "base_model": "acme/base",
        "library_name": "transformers",
        "license": "apache-2.0",
        "datasets": ["acme/chat-set"],
        "pipeline_tag": "text-generation",
        "tags": ["entrenar", "lora", "fine-tuned"],
    }


def test_front_matter_of_an_adapter_and_of_gguf(make_record: RecordFactory) -> None:
    assert card_metadata(_ctx(make_record, layout="adapter"))["library_name"] == "peft"
    meta = card_metadata(_ctx(make_record, layout="gguf", techniques=("qlora",), gguf_file="tiny-Q8_0.gguf"))
    assert "library_name" not in meta
    assert meta["tags"] == ["entrenar", "qlora", "fine-tuned", "gguf"]


def test_unknown_keys_are_left_out_not_invented(make_record: RecordFactory) -> None:
    meta = _front_matter(render_model_card(_ctx(make_record, base_model=None, license=None, datasets=())))
    assert meta == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["entrenar", "lora", "fine-tuned"],
    }


def test_training_table_from_the_record(make_record: RecordFactory) -> None:
    card = render_model_card(_ctx(make_record))
    rows = [
        "| Method | LoRA |",
        "| LoRA rank / alpha | 4 / 8 |",
        "| Trainable parameters | 12,345 of 140,000 (8.82%) |",  # 100 * 12345 / 140000 = 8.8178...
        "| Steps | 12 |",
        "| Epochs | 3 |",
        "| Training tokens | 24,576 |",
        "| Optimizer | adamw |",
        "| Learning rate | 0.0002 (cosine schedule, 2 warmup steps) |",
        "| Batch size | 4 x 2 gradient accumulation |",
        "| Sequence length | 256 |",
        "| Final training loss | 1.65 |",
        "| Best training loss | 1.65 |",
        "| Final evaluation loss | 1.9 |",
        "| Best evaluation loss | 1.9 (step 12) |",
        "| Wall time | 1h 02m 05s |",  # 3725.4 s -> 3725 = 3600 + 2 * 60 + 5
    ]
    table = card.split("## Training details\n\n")[1].split("\n\n")[0]
    assert table.splitlines() == ["| Setting | Value |", "|---|---|", *rows]
    evaluation = card.split("## Evaluation\n\n")[1].split("\n\n")[0]
    assert evaluation.splitlines()[2:] == [
        "| eval_loss | 1.9 |",
        "| eval_perplexity | 6.686 |",
        "| eval_tokens | 900 |",
    ]
    assert f"using entrenar {__version__}" in card
    assert "fine-tuned from [acme/base](https://huggingface.co/acme/base) with LoRA" in card


def test_qlora_early_stopping_and_short_runs(make_record: RecordFactory) -> None:
    record = make_record("acme/base", "qlora")
    record["config"]["quantize"] = {"bits": 4, "type": "nf4", "double_quant": True}
    record["config"]["training"]["grad_accum"] = 1
    record |= {"stop_reason": "early_stopping", "wall_time_s": 75.6}
    card = render_model_card(_ctx(make_record, techniques=("qlora",), record=record))
    for row in (
        "| Method | QLoRA |",
        "| Base quantization | 4-bit NF4 with double quantization |",
        "| Batch size | 4 |",
        "| Stopped by | early stopping |",
        "| Wall time | 1m 16s |",
    ):
        assert row in card


def test_empty_record_gives_only_the_techniques(make_record: RecordFactory) -> None:
    card = render_model_card(_ctx(make_record, record={}, techniques=("full",), base_model=None))
    assert "| Method | full fine-tuning |" in card
    assert "## Evaluation" not in card and "| Steps |" not in card
    assert "fine-tuned from a base model with full fine-tuning" in card


def test_odd_record_values_are_shown_as_they_are(make_record: RecordFactory) -> None:
    record = {"steps": "12", "epochs": 2.5, "loss": {"final_train": 1.23456789e-5}, "parameters": {"total": 0}}
    card = render_model_card(_ctx(make_record, record=record))
    assert "| Steps | 12 |" in card and "| Epochs | 2.5 |" in card
    assert "| Final training loss | 1.235e-05 |" in card
    assert "Trainable parameters" not in card


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("model", 'AutoModelForCausalLM.from_pretrained("alice/tiny")'),
        ("adapter", 'AutoPeftModelForCausalLM.from_pretrained("alice/tiny")'),
        ("gguf", "llama-cli --hf-repo alice/tiny --hf-file tiny-Q4_0.gguf"),
    ],
)
def test_usage_snippet_fits_the_layout(make_record: RecordFactory, layout: str, expected: str) -> None:
    card = render_model_card(_ctx(make_record, layout=layout, gguf_file="tiny-Q4_0.gguf"))
    assert expected in card.split("## Usage")[1]


def test_snippet_prompt_uses_the_chat_template_only_when_there_is_one(make_record: RecordFactory) -> None:
    assert "apply_chat_template" in render_model_card(_ctx(make_record, chat=True))
    plain = render_model_card(_ctx(make_record, chat=False))
    assert "apply_chat_template" not in plain and 'tokenizer("Hello", return_tensors="pt")' in plain


def _snippet(card: str) -> str:
    return card.split("```python\n")[1].split("```")[0]


@pytest.mark.parametrize("chat", [True, False])
def test_transformers_snippet_runs(make_record: RecordFactory, tiny_checkpoints: dict[str, Path], chat: bool) -> None:
    """The snippet, pointed at a local folder instead of the repo, loads the model and generates."""
    folder = tiny_checkpoints["qwen2"]
    code = _snippet(render_model_card(_ctx(make_record, chat=chat))).replace('"alice/tiny"', repr(str(folder)))
    torch.manual_seed(0)
    namespace: dict[str, Any] = {}
    exec(compile(code, "<card snippet>", "exec"), namespace)
    assert namespace["outputs"].shape[-1] > namespace["inputs"]["input_ids"].shape[-1]


def test_base_license_from_readme_then_config(tmp_path: Path) -> None:
    assert base_license(None) is None
    assert base_license(tmp_path) is None
    (tmp_path / "config.json").write_text('{"license": "mit"}', encoding="utf-8")
    assert base_license(tmp_path) == "mit"
    (tmp_path / "README.md").write_text("---\nlicense: llama3.2\ntags: [x]\n---\n# card\n", encoding="utf-8")
    assert base_license(tmp_path) == "llama3.2"


@pytest.mark.parametrize(
    "readme",
    [
        "# no front matter\nlicense: mit\n",
        "---\nlicense: mit\n",  # never closed
        "---\n- a list\n---\n",
        "---\nlicense: 3\n---\n",
        "",
    ],
)
def test_readme_without_a_usable_license_falls_back(tmp_path: Path, readme: str) -> None:
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    assert base_license(tmp_path) is None


@pytest.mark.parametrize("config", ['{"license": ""}', "[1]", "{oops"])
def test_config_without_a_usable_license_gives_none(tmp_path: Path, config: str) -> None:
    (tmp_path / "config.json").write_text(config, encoding="utf-8")
    assert base_license(tmp_path) is None


def test_invalid_front_matter_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: [unclosed\n---\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert base_license(tmp_path) is None
    assert "front matter is not valid YAML" in caplog.text


def test_dataset_ids_come_from_hf_cache_paths(make_record: RecordFactory) -> None:
    assert hub_dataset_ids(make_record("acme/base")) == ("acme/chat-set",)
    record = {
        "data_files": {"/home/me/data/train.jsonl": "x", "/c/hub/datasets--HuggingFaceH4--no_robots/s/a.parquet": "y"},
        "config": {"data": {"train_path": "/c/datasets--org--set.v2/snapshots/1/t.jsonl", "val_path": None}},
    }
    assert hub_dataset_ids(record) == ("HuggingFaceH4/no_robots", "org/set.v2")
    assert hub_dataset_ids({"data_files": [["/a/datasets--x--y/f"]], "config": []}) == ("x/y",)
    assert hub_dataset_ids({"data_files": {"/home/me/datasets/train.jsonl": "x"}}) == ()


def test_write_model_card_with_and_without_a_curve(tmp_path: Path, make_record: RecordFactory) -> None:
    written = write_model_card(tmp_path, _ctx(make_record), LossPoints(train=[(1.0, 2.0), (2.0, 1.0)]))
    assert written == [tmp_path / "README.md", tmp_path / "loss_curve.svg"]
    assert "![Training loss](loss_curve.svg)" in (tmp_path / "README.md").read_text()
    other = tmp_path / "other"
    other.mkdir()
    for points in (None, LossPoints(eval=[(1.0, 2.0)])):
        assert write_model_card(other, _ctx(make_record), points) == [other / "README.md"]
        assert "## Loss curve" not in (other / "README.md").read_text()
    assert not (other / "loss_curve.svg").exists()


def test_any_technique_list_is_named(make_record: RecordFactory) -> None:
    # techniques later issues add, and unknown ones, are shown by their own name
    ctx = _ctx(make_record, techniques=("qlora", "distill", "my-trick"))
    card = render_model_card(ctx)
    assert "| Method | QLoRA + knowledge distillation + my-trick |" in card
    assert "with QLoRA + knowledge distillation + my-trick using entrenar" in card
    assert card_metadata(ctx)["tags"] == ["entrenar", "qlora", "distill", "my-trick", "fine-tuned"]
