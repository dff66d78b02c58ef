"""Every invalid config yields a ConfigError with one line per problem, each naming the file and the key path.

Expected messages are written by hand from the rule each case breaks; positions in YAML errors are
counted by hand (1-based line and column of the offending character).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrenar.config import ConfigError, TrainConfig, load_config
from entrenar.errors import EntrenarError

WriteConfig = Callable[..., Path]
SECTIONS = "model, data, optimizer, scheduler, lora, quantize, distill, prune, qat, training, publish"
LORA_KEYS = "rank, alpha, dropout, target_modules, use_rslora, use_dora, init"


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # so the source label is the relative name "config.yaml"


def error_of(path: str | Path = "config.yaml", overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, EntrenarError) and isinstance(info.value, ValueError)
    return message


# (content merged into the minimal config, exact message after "config.yaml: ")
KEY_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"lora": {"rnak": 8}}, "lora.rnak: unknown key; did you mean rank?"),
    ({"trainig": {"epochs": 1}}, "trainig: unknown key; did you mean training?"),
    (
        {"lora": {"zzz": 1}},
        "lora.zzz: unknown key; valid keys: rank, alpha, dropout, target_modules, use_rslora, use_dora, init",
    ),
    ({"model": {"source": "hub"}}, "model.source: unknown key; valid keys: path, revision, dtype"),
    ({"training": {"epochs": "three"}}, "training.epochs: expected an integer, got 'three'"),
    ({"training": {"epochs": True}}, "training.epochs: expected an integer, got true"),
    ({"training": {"epochs": 3.0}}, "training.epochs: expected an integer, got 3.0"),
    ({"training": {"epochs": None}}, "training.epochs: expected an integer, got null"),
    ({"training": {"epochs": [1]}}, "training.epochs: expected an integer, got a list"),
    ({"data": {"packing": "yes please"}}, "data.packing: expected true or false, got 'yes please'"),
    ({"optimizer": {"lr": -1}}, "optimizer.lr: must be > 0, got -1"),
    ({"optimizer": {"lr": 0.0}}, "optimizer.lr: must be > 0, got 0.0"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr: expected a finite number, got nan"),
    ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay: must be >= 0, got -0.1"),
    ({"optimizer": {"lr": "fast"}}, "optimizer.lr: expected a number, got 'fast'"),
    ({"lora": {"rank": 0}}, "lora.rank: must be >= 1, got 0"),
    ({"lora": {"alpha": 0}}, "lora.alpha: must be > 0, got 0"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout: must be in [0, 1), got 1.0"),
    ({"data": {"val_split": 1}}, "data.val_split: must be in (0, 1), got 1"),
    ({"data": {"val_split": 0.0}}, "data.val_split: must be in (0, 1), got 0.0"),
    ({"data": {"seq_len": 1}}, "data.seq_len: must be >= 2, got 1"),
    ({"data": {"batch_size": 0}}, "data.batch_size: must be >= 1, got 0"),
    ({"training": {"grad_accum": 0}}, "training.grad_accum: must be >= 1, got 0"),
    ({"training": {"keep_checkpoints": 0}}, "training.keep_checkpoints: must be >= 1, got 0"),
    ({"training": {"grad_clip": 0}}, "training.grad_clip: must be > 0, got 0"),
    ({"training": {"seed": 2**32}}, "training.seed: must be in [0, 4294967295], got 4294967296"),
    ({"scheduler": {"min_lr_ratio": 1.5}}, "scheduler.min_lr_ratio: must be in [0, 1], got 1.5"),
    ({"scheduler": {"warmup_steps": -1}}, "scheduler.warmup_steps: must be >= 0, got -1"),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas: expected a list of two numbers like [0.9, 0.999], got a list"),
    ({"optimizer": {"betas": "0.9"}}, "optimizer.betas: expected a list of two numbers like [0.9, 0.999], got '0.9'"),
    ({"optimizer": {"betas": [0.9, "x"]}}, "optimizer.betas[1]: expected a number, got 'x'"),
    ({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas[1]: must be in [0, 1), got 1.0"),
    ({"model": {"dtype": "fp8"}}, "model.dtype: 'fp8' is not one of auto, float32, bfloat16, float16"),
    (
        {"optimizer": {"name": "adamw9"}},
        "optimizer.name: 'adamw9' is not one of adamw, adam, sgd, adamw8bit; did you mean adamw?",
    ),
    (
        {"data": {"format": "jsonl"}},
        "data.format: 'jsonl' is not one of auto, text, prompt_completion, alpaca, messages, sharegpt",
    ),
    ({"lora": {}, "quantize": {"bits": 6}}, "quantize.bits: 6 is not one of 4, 8"),
    (  # values longer than 60 characters are cut: 1 quote + 56 x + "..."
        {"model": {"dtype": "x" * 70}},
        "model.dtype: '" + "x" * 56 + "... is not one of auto, float32, bfloat16, float16",
    ),
    (
        {"model": {"path": "./models/missing"}},
        "model.path: './models/missing' is neither an existing file or folder ({p}/models/missing) nor a Hub repo "
        "id like 'Qwen/Qwen2.5-0.5B'",
    ),
    (
        {"model": {"path": "models\ndir"}},
        r"model.path: 'models\ndir' is neither an existing file or folder ({p}/models\ndir) nor a Hub repo id "
        "like 'Qwen/Qwen2.5-0.5B'",
    ),
    ({"model": {"revision": 1234}}, "model.revision: expected a string, got 1234 (quote it in YAML)"),
    ({"model": {"path": "  "}}, "model.path: expected a non-empty string"),
    ({"lora": 3}, "lora: expected a mapping of keys, got 3"),
    ({"model": None}, "model.path: missing required key"),
    ({"data": {"train_path": None}}, "data.train_path: expected a string, got null"),
    ({"publish": {"private": True}}, "publish.repo: missing required key"),
    (
        {"lora": {"target_modules": []}},
        "lora.target_modules: expected 'all-linear', a regex string or a list of module names, got a list",
    ),
    ({"lora": {"target_modules": ["q_proj", 3]}}, "lora.target_modules[1]: expected a module name like q_proj, got 3"),
    (
        {"lora": {"target_modules": ""}},
        "lora.target_modules: expected 'all-linear', a regex string or a list of module names, got ''",
    ),
    (
        {"lora": {"target_modules": "(q"}},
        "lora.target_modules: regex '(q' does not compile (missing ), unterminated subpattern at position 0); "
        "fix the pattern",
    ),
    (
        {"model": {"path": "gpt2"}},
        "model.path: 'gpt2' is neither an existing file or folder ({p}/gpt2) nor a Hub "
        "repo id like 'Qwen/Qwen2.5-0.5B'",
    ),
    (
        {"model": {"path": "org/model.gguf"}},
        "model.path: 'org/model.gguf' is neither an existing file or folder "
        "({p}/org/model.gguf) nor a Hub repo id like 'Qwen/Qwen2.5-0.5B'",
    ),
    (
        {"model": {"path": "models/tiny", "revision": "main"}},
        "model.revision: applies to Hub repo ids only, and model.path is the local path {p}/models/tiny",
    ),
    (
        {"data": {"train_path": "data/nope.jsonl"}},
        "data.train_path: {p}/data/nope.jsonl does not exist (relative paths are resolved against the config's folder)",
    ),
    (
        {"data": {"train_path": "data/*.parquet"}},
        "data.train_path: the pattern {p}/data/*.parquet matches no file; check it (relative to {p})",
    ),
    (
        {"data": {"val_path": "../val.jsonl"}},
        "data.val_path: {t}/val.jsonl does not exist (relative paths are resolved against the config's folder)",
    ),
    (
        {"data": {"val_path": "data/val.jsonl", "val_split": 0.1}},
        "data.val_split: cannot be used with data.val_path; keep one of the two",
    ),
    (
        {"publish": {"repo": "me/bad--name"}},
        "publish.repo: repo id 'me/bad--name': the name 'bad--name' must not contain '--' or '..'",
    ),
    (
        {"publish": {"repo": "gpt2"}},
        "publish.repo: repo id 'gpt2' must be 'namespace/name' with exactly one '/', e.g. 'me/my-model'",
    ),
    ({"quantize": {}}, "quantize: QLoRA trains LoRA adapters on a quantized base; add a lora section or drop this"),
    (
        {"lora": {}, "quantize": {"bits": 8, "type": "nf4"}},
        "quantize.type: nf4 does not store 8-bit weights; use int8 or change quantize.bits",
    ),
    (
        {"lora": {}, "quantize": {"bits": 8, "double_quant": True}},
        "quantize.double_quant: applies to nf4 only, not int8; remove it",
    ),
    (
        {"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}},
        "optimizer.betas: applies to optimizer.name adamw or adam or adamw8bit only, not sgd; remove it",
    ),
    (
        {"optimizer": {"name": "sgd", "eps": 1e-8}},
        "optimizer.eps: applies to optimizer.name adamw or adam or adamw8bit only, not sgd; remove it",
    ),
    ({"optimizer": {"momentum": 0.9}}, "optimizer.momentum: applies to optimizer.name sgd only, not adamw; remove it"),
    (
        {"optimizer": {"loraplus_lr_ratio": 16}},
        "optimizer.loraplus_lr_ratio: LoRA+ needs a lora section; add lora: or remove this key",
    ),
    (
        {"scheduler": {"name": "step"}},
        "scheduler.step_size: required when scheduler.name is step (steps between decays)",
    ),
    ({"scheduler": {"gamma": 0.5}}, "scheduler.gamma: applies to scheduler.name step only, not cosine; remove it"),
    (
        {"scheduler": {"name": "constant", "min_lr_ratio": 0.1}},
        "scheduler.min_lr_ratio: applies to scheduler.name linear or cosine only, not constant; remove it",
    ),
    (
        {"scheduler": {"name": "inverse_sqrt"}},
        "scheduler.warmup_steps: inverse_sqrt needs warmup_steps > 0 (lr = sqrt(warmup / step))",
    ),
    (
        {"scheduler": {"warmup_steps": 10}, "training": {"max_steps": 10}},
        "scheduler.warmup_steps: 10 must be below training.max_steps (10) for a cosine schedule; lower it",
    ),
    (
        {"training": {"output_dir": "data/train.jsonl"}},
        "training.output_dir: {p}/data/train.jsonl is a file; choose a folder",
    ),
    (
        {"training": {"early_stopping_patience": 2}},
        "training.early_stopping_patience: needs validation data; set data.val_path or data.val_split",
    ),
    (
        {"publish": {"repo": "me/x", "merge_adapters": True}},
        "publish.merge_adapters: applies to LoRA/QLoRA runs only (there is no lora section)",
    ),
    (
        {"publish": {"repo": "me/x", "gguf_type": "q8_0"}},
        "publish.gguf_type: applies to publish.format gguf only, not safetensors; remove it",
    ),
    (
        {"publish": {"repo": "me/x", "format": "gguf", "gguf_type": "q8_0,q4_k"}},
        "publish.gguf_type: GGUF type 'q4_k' is not supported; use one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
        "q5_1, q2_k, q2_k_s, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k",
    ),
    (
        {"publish": {"repo": "me/x", "format": "gguf", "gguf_type": "q2_k_s"}},
        "publish.gguf_type: Q2_K_S needs an importance matrix, which publishing does not compute; use entrenar "
        "quantize --calibration, or another type",
    ),
    (
        {"lora": {}, "publish": {"repo": "me/x", "format": "gguf", "merge_adapters": False}},
        "publish.format: gguf needs merged weights; set publish.merge_adapters: true",
    ),
    (
        {"publish": {"repo": "me/x", "endpoint": "ftp://hub.local"}},
        "publish.endpoint: 'ftp://hub.local' is not an http:// or https:// URL like https://huggingface.co",
    ),
    (
        {"publish": {"repo": "me/x", "endpoint": "http://"}},
        "publish.endpoint: 'http://' is not an http:// or https:// URL like https://huggingface.co",
    ),
    (
        {"publish": {"repo": "me/x", "endpoint": "http://[::1"}},
        "publish.endpoint: 'http://[::1' is not a URL (Invalid IPv6 URL)",
    ),
]


@pytest.mark.parametrize(("content", "message"), KEY_ERRORS, ids=[m.split(":")[0] for _, m in KEY_ERRORS])
def test_key_errors(content: dict[str, Any], message: str, project: Path, write_config: WriteConfig) -> None:
    write_config(content)
    assert error_of() == "config.yaml: " + message.format(p=project, t=project.parent)


def errors_of(path: str | Path = "config.yaml", overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value).splitlines()


def test_every_error_is_reported_in_document_order(write_config: WriteConfig) -> None:
    # Validation builds training before lora and publish last; the report follows the file instead.
    write_config(
        "publish: {repo: bad}\n"
        "model: {path: Qwen/Qwen2.5-0.5B}\n"
        "data: {train_path: data/train.jsonl}\n"
        "training: {epochs: three}\n"
        "lora: {rnak: 8}\n"
    )
    assert errors_of() == [
        "config.yaml: publish.repo: repo id 'bad' must be 'namespace/name' with exactly one '/', e.g. 'me/my-model'",
        "config.yaml: training.epochs: expected an integer, got 'three'",
        "config.yaml: lora.rnak: unknown key; did you mean rank?",
    ]


def test_keys_of_one_section_are_all_checked(write_config: WriteConfig) -> None:
    write_config(
        "model: {path: Qwen/Qwen2.5-0.5B, dtype: fp8}\n"
        "data: {train_path: data/train.jsonl}\n"
        "optimizer: {lr: -1, name: sgd, betas: [0.9, 0.99], momentum: 2, wd: 0.1}\n"
    )
    assert errors_of() == [
        "config.yaml: model.dtype: 'fp8' is not one of auto, float32, bfloat16, float16",
        "config.yaml: optimizer.lr: must be > 0, got -1",
        # name and betas are valid: their cross-field check runs (momentum is broken: its check does not)
        "config.yaml: optimizer.betas: applies to optimizer.name adamw or adam or adamw8bit only, not sgd; remove it",
        "config.yaml: optimizer.momentum: must be in [0, 1), got 2",
        "config.yaml: optimizer.wd: unknown key; valid keys: name, lr, weight_decay, betas, eps, momentum, "
        "loraplus_lr_ratio",
    ]


def test_an_invalid_key_triggers_no_follow_up_errors(write_config: WriteConfig) -> None:
    # A mistyped scheduler name must not be read as the default (cosine) and blame step_size and gamma on it;
    # a broken max_steps must not be compared with the warmup.
    write_config(
        {
            "scheduler": {"name": "stepp", "step_size": 10, "gamma": 0.5, "warmup_steps": 50},
            "training": {"max_steps": "ten"},
            "data": {"val_path": "data/missing.jsonl"},
        }
    )
    assert errors_of() == [
        f"config.yaml: data.val_path: {Path.cwd()}/data/missing.jsonl does not exist (relative paths are "
        "resolved against the config's folder)",
        "config.yaml: scheduler.name: 'stepp' is not one of constant, linear, cosine, step, inverse_sqrt; "
        "did you mean step?",
        "config.yaml: training.max_steps: expected an integer, got 'ten'",
    ]


def test_thirty_errors_are_capped_at_twenty(write_config: WriteConfig) -> None:
    write_config({"lora": {f"unknown_{i:02d}": i for i in range(30)}})
    lines = errors_of()
    assert len(lines) == 21
    assert lines[0] == "config.yaml: lora.unknown_00: unknown key; valid keys: " + LORA_KEYS
    assert lines[19] == "config.yaml: lora.unknown_19: unknown key; valid keys: " + LORA_KEYS
    assert lines[20] == "... and 10 more errors in config.yaml"


def test_override_errors_join_the_file_errors(write_config: WriteConfig) -> None:
    write_config({"lora": {"rank": 0}})
    assert errors_of(overrides=("max_steps", "training.epochs=three", "lora.alpha=0")) == [
        "config.yaml: override 'max_steps': expected key=value, e.g. training.max_steps=10 (from the command line)",
        "config.yaml: lora.rank: must be >= 1, got 0",
        "config.yaml: lora.alpha: must be > 0, got 0 (from the command line)",
        "config.yaml: training.epochs: expected an integer, got 'three' (from the command line)",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model:\n  path: Qwen/Qwen2.5-0.5B\ndata: {train_path: [a, b\n",
            "config.yaml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow "
            "sequence)",
        ),
        ("model:\n  path: x\n    bad: 1\n", "config.yaml:3:8: invalid YAML: mapping values are not allowed here"),
        (
            "model: {path: x}\ndata: {train_path: y}\nmodel: {path: z}\n",
            "config.yaml:3:1: invalid YAML: duplicate key 'model'; keep only one",
        ),
        ("lora:\n  rank: 4\n  rank: 8\n", "config.yaml:3:3: invalid YAML: duplicate key 'rank'; keep only one"),
        (
            "a: 1\n---\nb: 2\n",
            "config.yaml:2:1: invalid YAML: but found another document (expected a single document in the stream)",
        ),
        ("a: *anchor\n", "config.yaml:1:4: invalid YAML: found undefined alias 'anchor'"),
        (
            "a: !!python/object:os.system x\n",
            "config.yaml:1:4: invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object:os.system'",
        ),
        (
            "a: \x07\n",
            "config.yaml: invalid YAML: unacceptable character #x0007: special characters are not allowed in "
            '"<unicode string>", position 3',
        ),
        ("[" * 5000, "config.yaml: invalid YAML: nested too deeply for a config"),
        ("- model\n- data\n", f"config.yaml: expected a mapping of sections ({SECTIONS}), got a list"),
        ("just text\n", f"config.yaml: expected a mapping of sections ({SECTIONS}), got 'just text'"),
        ("", "config.yaml: the file is empty; it needs at least model.path and data.train_path"),
        ("# only a comment\n", "config.yaml: the file is empty; it needs at least model.path and data.train_path"),
        (  # one line per problem (the "one-line error" convention became "one line per error")
            "1: x\n",
            f"config.yaml: 1: unknown key; valid keys: {SECTIONS}\n"
            "config.yaml: model.path: missing required key\n"
            "config.yaml: data.train_path: missing required key",
        ),
        ("data: {train_path: data/train.jsonl}\n", "config.yaml: model.path: missing required key"),
        ("model: {path: Qwen/Qwen2.5-0.5B}\n", "config.yaml: data.train_path: missing required key"),
    ],
)
def test_file_errors(text: str, message: str, write_config: WriteConfig) -> None:
    write_config(text)
    assert "\n".join(errors_of()) == message


def test_yaml_merge_keys_are_not_duplicates(write_config: WriteConfig) -> None:
    write_config(
        "model: {path: Qwen/Qwen2.5-0.5B}\ndata: {train_path: data/train.jsonl}\n"
        "scheduler: {<<: {name: linear}, name: constant}\n"
    )
    assert load_config("config.yaml").scheduler.name == "constant"  # the explicit key overrides the merged one


def test_file_level_errors(project: Path) -> None:
    assert error_of("missing.yaml") == "missing.yaml: no such file; check the path or write one with `entrenar init`"
    assert error_of("data") == "data: is a folder; pass the YAML config file inside it"
    (project / "latin1.yaml").write_bytes(b"model: {path: caf\xe9}\n")
    assert error_of("latin1.yaml") == "latin1.yaml: not UTF-8 text (byte 17); save the file as UTF-8"
    # The NUL byte is escaped: messages are always one printable line.
    assert error_of("bad\x00name.yaml") == r"bad\x00name.yaml: cannot read (embedded null byte)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_file(write_config: WriteConfig) -> None:
    path = write_config()
    path.chmod(0)
    try:
        assert error_of() == "config.yaml: cannot read (Permission denied)"
    finally:
        path.chmod(0o644)


def test_from_dict_errors_name_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(["model"])
    assert str(info.value) == f"<dict>: expected a mapping of sections ({SECTIONS}), got a list"
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(None)
    assert str(info.value) == f"<dict>: expected a mapping of sections ({SECTIONS}), got null"
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"model": {"path": "Qwen/X"}, "data": {"train_path": "nope"}}, source="cli", base_dir="/")
    assert str(info.value) == (
        "cli: data.train_path: /nope does not exist (relative paths are resolved against the config's folder)"
    )
