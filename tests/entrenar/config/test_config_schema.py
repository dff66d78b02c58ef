"""Every key of schema v1 parses and lands in its dataclass field; defaults and derived values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from entrenar.config import (
    DataSection,
    DistillHidden,
    DistillSection,
    DistillTeacher,
    LoraSection,
    ModelSection,
    OptimizerSection,
    PruneSection,
    PublishSection,
    QatSection,
    QuantizeSection,
    SchedulerSection,
    TrainConfig,
    TrainingSection,
    load_config,
)

Expected = Any | Callable[[Path], Any]
WriteConfig = Callable[..., Path]
TEACHER = {"distill": {"teacher": "org/t"}}

# (key path, value written to the YAML file, other keys the value needs, expected field value).
# Every value differs from the key's default, so a key that is read but not stored fails its row.
GRADUAL: dict[str, Any] = {"prune": {"sparsity": 0.5, "end_step": 8}}
ONESHOT_CALIBRATED: dict[str, Any] = {
    "prune": {"schedule": "oneshot", "method": "wanda", "sparsity": 0.5, "calibration": "data/val.jsonl"}
}
KEY_TABLE: list[tuple[str, Any, dict[str, Any], Expected]] = [
    ("model.path", "models/tiny", {}, lambda p: str(p / "models" / "tiny")),
    ("model.revision", "v1.0", {}, "v1.0"),
    ("model.dtype", "bfloat16", {}, "bfloat16"),
    ("data.train_path", "data/*.jsonl", {}, lambda p: str(p / "data" / "*.jsonl")),
    ("data.val_path", "data/val.jsonl", {}, lambda p: str(p / "data" / "val.jsonl")),
    ("data.val_split", 0.1, {}, 0.1),
    ("data.format", "sharegpt", {}, "sharegpt"),
    ("data.seq_len", 16, {}, 16),
    ("data.batch_size", 2, {}, 2),
    ("data.packing", False, {}, False),
    ("data.train_on", "all", {}, "all"),
    ("data.skip_invalid", True, {}, True),
    ("optimizer.name", "adam", {}, "adam"),
    ("optimizer.lr", 1e-3, {}, 1e-3),
    ("optimizer.weight_decay", 0.01, {}, 0.01),
    ("optimizer.betas", [0.8, 0.95], {}, (0.8, 0.95)),
    ("optimizer.eps", 1e-6, {}, 1e-6),
    ("optimizer.momentum", 0.9, {"optimizer": {"name": "sgd"}}, 0.9),
    ("optimizer.loraplus_lr_ratio", 16, {"lora": {}}, 16.0),
    ("scheduler.name", "constant", {}, "constant"),
    ("scheduler.warmup_steps", 5, {}, 5),
    ("scheduler.min_lr_ratio", 0.0, {}, 0.0),
    ("scheduler.step_size", 10, {"scheduler": {"name": "step"}}, 10),
    ("scheduler.gamma", 0.5, {"scheduler": {"name": "step", "step_size": 3}}, 0.5),
    ("lora.rank", 8, {}, 8),
    ("lora.alpha", 32, {}, 32.0),
    ("lora.dropout", 0.05, {}, 0.05),
    ("lora.target_modules", ["q_proj", "v_proj", "q_proj"], {}, ("q_proj", "v_proj")),
    ("lora.use_rslora", True, {}, True),
    ("lora.use_dora", True, {}, True),
    ("lora.init", "pissa", {}, "pissa"),
    ("quantize.bits", 8, {"lora": {}}, 8),
    ("quantize.type", "int8", {"lora": {}, "quantize": {"bits": 8}}, "int8"),
    ("quantize.double_quant", False, {"lora": {}}, False),
    ("distill.teacher", "models/tiny", {}, lambda p: str(p / "models" / "tiny")),
    ("distill.revision", "v1.0", TEACHER, "v1.0"),
    (
        "distill.teachers",
        [{"path": "org/a"}, {"path": "org/b", "weight": 2}],
        {},
        (DistillTeacher("org/a", 1.0, None, "hub"), DistillTeacher("org/b", 2.0, None, "hub")),
    ),
    ("distill.teacher_quantize", "nf4", TEACHER, "nf4"),
    ("distill.loss", "reverse_kl", TEACHER, "reverse_kl"),
    ("distill.beta", 0.25, {"distill": {"teacher": "org/t", "loss": "jsd"}}, 0.25),
    ("distill.skew", 0.2, {"distill": {"teacher": "org/t", "loss": "skew_forward_kl"}}, 0.2),
    ("distill.temperature", 2, TEACHER, 2.0),
    ("distill.alpha", 1, TEACHER, 1.0),
    ("distill.hidden", {"loss": "cosine"}, TEACHER, DistillHidden(loss="cosine")),
    ("distill.cache", "kd", TEACHER, lambda p: str(p / "kd")),
    ("distill.cache_top_k", 8, {"distill": {"teacher": "org/t", "cache": "kd"}}, 8),
    ("prune.schedule", "oneshot", {"prune": {"sparsity": 0.5}}, "oneshot"),
    ("prune.method", "wanda", ONESHOT_CALIBRATED, "wanda"),
    ("prune.sparsity", 0.25, GRADUAL, 0.25),
    ("prune.pattern", "4:8", {"prune": {"schedule": "oneshot"}}, "4:8"),
    ("prune.initial_sparsity", 0.1, GRADUAL, 0.1),
    ("prune.start_step", 2, GRADUAL, 2),
    ("prune.end_step", 6, GRADUAL, 6),
    ("prune.update_every", 2, GRADUAL, 2),
    ("prune.calibration", "data/more.jsonl", ONESHOT_CALIBRATED, lambda p: str(p / "data" / "more.jsonl")),
    ("prune.samples", 4, ONESHOT_CALIBRATED, 4),
    ("prune.seq_len", 16, ONESHOT_CALIBRATED, 16),
    ("prune.seed", 3, ONESHOT_CALIBRATED, 3),
    ("qat.format", "Q5_K_S", {}, "q5_k_s"),
    ("qat.group_size", 64, {"qat": {"format": "int4"}}, 64),
    ("qat.start_after_steps", 5, {"qat": {"format": "nf4"}}, 5),
    ("qat.activations", "int8", {"qat": {"format": "q8_0"}}, "int8"),
    ("training.epochs", 1, {}, 1),
    ("training.max_steps", 50, {}, 50),
    ("training.grad_accum", 4, {}, 4),
    ("training.grad_clip", 0.5, {}, 0.5),
    ("training.eval_every", 10, {}, 10),
    ("training.save_every", 20, {}, 20),
    ("training.keep_checkpoints", 3, {}, 3),
    ("training.seed", 7, {}, 7),
    ("training.output_dir", "runs/a", {}, lambda p: str(p / "runs" / "a")),
    ("training.early_stopping_patience", 2, {"data": {"val_split": 0.1}}, 2),
    ("training.gradient_checkpointing", True, {}, True),
    ("training.log_every", 1, {}, 1),
    ("training.report_to", ["tensorboard", "tensorboard"], {}, ("tensorboard",)),
    ("training.sample_prompts", ["Hi", "Why?"], {}, ("Hi", "Why?")),
    ("training.sample_every", 5, {"training": {"sample_prompts": ["Hi"]}}, 5),
    ("training.sample_max_new_tokens", 16, {"training": {"sample_prompts": ["Hi"]}}, 16),
    ("publish.repo", "me/tiny-ft", {}, "me/tiny-ft"),
    ("publish.private", True, {"publish": {"repo": "me/x"}}, True),
    ("publish.model_card", False, {"publish": {"repo": "me/x"}}, False),
    ("publish.merge_adapters", False, {"lora": {}, "publish": {"repo": "me/x"}}, False),
    ("publish.format", "gguf", {"publish": {"repo": "me/x"}}, "gguf"),
    ("publish.gguf_type", "q4_0", {"publish": {"repo": "me/x", "format": "gguf"}}, "q4_0"),
    ("publish.gguf_type", "Q4_K_M, q8_0", {"publish": {"repo": "me/x", "format": "gguf"}}, "q4_k_m,q8_0"),
    ("publish.endpoint", "http://127.0.0.1:8080", {"publish": {"repo": "me/x"}}, "http://127.0.0.1:8080"),
]

SECTION_CLASSES = {
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "scheduler": SchedulerSection,
    "lora": LoraSection,
    "quantize": QuantizeSection,
    "distill": DistillSection,
    "prune": PruneSection,
    "qat": QatSection,
    "training": TrainingSection,
    "publish": PublishSection,
}


def test_table_covers_every_key() -> None:
    keys = {f"{s}.{f.name}" for s, cls in SECTION_CLASSES.items() for f in fields(cls) if "spec" in f.metadata}
    assert keys == {row[0] for row in KEY_TABLE}
    assert [f.name for f in fields(TrainConfig)] == list(SECTION_CLASSES)


@pytest.mark.parametrize(("key", "value", "extra", "expected"), KEY_TABLE, ids=[row[0] for row in KEY_TABLE])
def test_every_key_lands_in_its_field(
    key: str, value: Any, extra: dict[str, Any], expected: Expected, project: Path, write_config: WriteConfig
) -> None:
    section, name = key.split(".")
    content = {s: dict(v) for s, v in extra.items()}
    content.setdefault(section, {})[name] = value
    cfg = load_config(write_config(content))
    want = expected(project) if callable(expected) else expected
    got = getattr(getattr(cfg, section), name)
    assert got == want
    assert type(got) is type(want)  # ints given for floats become floats, lists become tuples


def test_defaults_of_a_minimal_config(project: Path, write_config: WriteConfig) -> None:
    cfg = load_config(write_config())
    # Hand-written from the schema: DESIGN.md section 3 values, the Adam-family optimizer fills
    # betas/eps, the cosine schedule fills min_lr_ratio.
    assert cfg == TrainConfig(
        model=ModelSection(path="Qwen/Qwen2.5-0.5B", revision=None, dtype="auto", source="hub"),
        data=DataSection(
            train_path=str(project / "data" / "train.jsonl"),
            val_path=None,
            val_split=None,
            format="auto",
            seq_len=1024,
            batch_size=8,
            packing=True,
            train_on="completion",
            skip_invalid=False,
        ),
        optimizer=OptimizerSection(
            name="adamw", lr=2e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, momentum=None
        ),
        scheduler=SchedulerSection(name="cosine", warmup_steps=0, min_lr_ratio=0.1, step_size=None, gamma=None),
        lora=None,
        quantize=None,
        training=TrainingSection(output_dir=str(project / "output")),
        publish=None,
    )
    assert cfg.training == TrainingSection(
        epochs=3,
        max_steps=None,
        grad_accum=1,
        grad_clip=1.0,
        eval_every=100,
        save_every=200,
        keep_checkpoints=2,
        seed=42,
        output_dir=str(project / "output"),
        early_stopping_patience=None,
        gradient_checkpointing=False,
        log_every=10,
    )
    assert cfg.method == "full"


@pytest.mark.parametrize(
    ("sections", "method"),
    [({}, "full"), ({"lora": {}}, "lora"), ({"lora": {}, "quantize": {}}, "qlora"), ({"lora": None}, "full")],
)
def test_method_is_derived_from_the_sections(sections: dict[str, Any], method: str, write_config: WriteConfig) -> None:
    assert load_config(write_config(sections)).method == method


def test_empty_lora_section_takes_the_design_defaults(write_config: WriteConfig) -> None:
    cfg = load_config(write_config({"lora": {}, "quantize": {}}))
    assert cfg.lora == LoraSection(
        rank=64, alpha=16.0, dropout=0.0, target_modules="all-linear", use_rslora=False, use_dora=False, init="default"
    )
    assert cfg.quantize == QuantizeSection(bits=4, type="nf4", double_quant=True)


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ({"name": "sgd"}, (None, None, 0.0)),
        ({"name": "sgd", "momentum": 0.5, "betas": None}, (None, None, 0.5)),
        ({"name": "adam"}, ((0.9, 0.999), 1e-8, None)),
        ({"name": "adamw8bit", "momentum": None}, ((0.9, 0.999), 1e-8, None)),
    ],
)
def test_optimizer_fills_the_keys_of_its_family(
    optimizer: dict[str, Any], expected: tuple[Any, Any, Any], write_config: WriteConfig
) -> None:
    opt = load_config(write_config({"optimizer": optimizer})).optimizer
    assert (opt.betas, opt.eps, opt.momentum) == expected


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ({"name": "constant"}, (None, None, None)),
        ({"name": "linear"}, (0.1, None, None)),
        ({"name": "cosine", "min_lr_ratio": 0}, (0.0, None, None)),
        ({"name": "step", "step_size": 4}, (None, 4, 0.1)),
        ({"name": "inverse_sqrt", "warmup_steps": 10}, (None, None, None)),
    ],
)
def test_scheduler_fills_the_keys_of_its_schedule(
    scheduler: dict[str, Any], expected: tuple[Any, Any, Any], write_config: WriteConfig
) -> None:
    sch = load_config(write_config({"scheduler": scheduler})).scheduler
    assert (sch.min_lr_ratio, sch.step_size, sch.gamma) == expected


def test_quantize_type_and_double_quant_follow_bits(write_config: WriteConfig) -> None:
    assert load_config(write_config({"lora": {}, "quantize": {"bits": 8}})).quantize == QuantizeSection(
        bits=8, type="int8", double_quant=False
    )
    assert load_config(write_config({"lora": {}, "quantize": {"type": "nf4", "double_quant": False}})).quantize == (
        QuantizeSection(bits=4, type="nf4", double_quant=False)
    )


def test_publish_defaults_depend_on_method_and_format(write_config: WriteConfig) -> None:
    full = load_config(write_config({"publish": {"repo": "me/x"}})).publish
    assert full == PublishSection(repo="me/x", merge_adapters=None, format="safetensors", gguf_type=None)
    lora = load_config(write_config({"lora": {}, "publish": {"repo": "me/x", "format": "gguf"}})).publish
    assert lora == PublishSection(repo="me/x", merge_adapters=True, format="gguf", gguf_type="f16")


@pytest.mark.parametrize(
    ("targets", "expected"),
    [("ALL-LINEAR", "all-linear"), (r".*\.(q|v)_proj", r".*\.(q|v)_proj"), (["o_proj"], ("o_proj",))],
)
def test_target_modules_forms(targets: Any, expected: Any, write_config: WriteConfig) -> None:
    lora = load_config(write_config({"lora": {"target_modules": targets}})).lora
    assert lora is not None and lora.target_modules == expected


def test_model_source_local_folder_file_and_hub(project: Path, write_config: WriteConfig) -> None:
    local = load_config(write_config({"model": {"path": "models/tiny"}})).model
    assert (local.path, local.source) == (str(project / "models" / "tiny"), "local")
    weights = project / "models" / "tiny" / "model.gguf"
    weights.write_bytes(b"GGUF")
    file = load_config(write_config({"model": {"path": str(weights)}})).model
    assert (file.path, file.source) == (str(weights), "local")
    hub = load_config(write_config({"model": {"path": "HuggingFaceTB/SmolLM2-135M", "revision": "abc123"}})).model
    assert (hub.path, hub.source, hub.revision) == ("HuggingFaceTB/SmolLM2-135M", "hub", "abc123")


def test_existing_folder_shaped_like_a_repo_id_is_local(project: Path, write_config: WriteConfig) -> None:
    (project / "Qwen" / "Qwen2.5-0.5B").mkdir(parents=True)  # a folder named like the Hub id wins
    model = load_config(write_config({"model": {"path": "Qwen/Qwen2.5-0.5B"}})).model
    assert (model.path, model.source) == (str(project / "Qwen" / "Qwen2.5-0.5B"), "local")


def test_home_is_expanded_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("hello\n")
    assert load_config(write_config({"data": {"train_path": "~/corpus.txt"}})).data.train_path == str(
        tmp_path / "corpus.txt"
    )


def test_yaml_12_floats_and_dialect(write_config: WriteConfig) -> None:
    text = "model: {path: Qwen/Qwen2.5-0.5B}\ndata: {train_path: data/train.jsonl}\noptimizer: {lr: 2e-4, eps: 1.0e6}\n"
    opt = load_config(write_config(text)).optimizer
    assert (opt.lr, opt.eps) == (2e-4, 1e6)  # PyYAML alone reads both as strings
