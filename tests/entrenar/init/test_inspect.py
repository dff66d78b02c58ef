"""`entrenar.init.inspect`: parameter counts against transformers, base resolution, Hub fetches."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import HubNotFoundError
from aprender.hub import upload_folder
from entrenar.errors import InitError, ModelConfigError
from entrenar.init import count_parameters, inspect_base, load_base_tokenizer
from entrenar.models.config import ModelConfig


def _transformers_count(hf_config: dict[str, Any]) -> int:
    """transformers' own count, on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**hf_config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return int(model.num_parameters())


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_parameter_count_matches_transformers_on_tiny_checkpoints(
    family: str, tiny_checkpoints: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_checkpoints[family]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base = inspect_base(str(folder))
    assert base.source == "local"
    assert base.folder == folder
    assert base.config.model_type == family
    assert base.num_parameters == model.num_parameters()


@st.composite
def _hf_configs(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(st.sampled_from(["llama", "qwen2", "qwen3", "mistral"]))
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    head_dim = 2 * draw(st.integers(1, 4))
    config: dict[str, Any] = {
        "model_type": family,
        "vocab_size": draw(st.integers(5, 70)),
        "hidden_size": heads * head_dim,
        "intermediate_size": draw(st.integers(1, 40)),
        "num_hidden_layers": draw(st.integers(1, 3)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "tie_word_embeddings": draw(st.booleans()),
    }
    if family == "qwen3":  # head_dim decoupled from hidden / heads
        config["head_dim"] = 2 * draw(st.integers(1, 5))
    if family in ("llama", "qwen3"):
        config["attention_bias"] = draw(st.booleans())
    if family == "llama":
        config["mlp_bias"] = draw(st.booleans())
    return config


@settings(max_examples=30, deadline=None)
@given(_hf_configs())
def test_parameter_count_matches_transformers_for_random_configs(hf_config: dict[str, Any]) -> None:
    assert count_parameters(ModelConfig.from_hf_dict(hf_config)) == _transformers_count(hf_config)


def test_parameter_count_of_qwen2_5_0_5b_by_hand() -> None:
    # Qwen2.5-0.5B's config.json: V=151936, H=896, I=4864, 24 layers, 14 heads, 2 KV heads (d=64), tied.
    # embed 151936*896 = 136,134,656; per layer: q 896*896+896 = 803,712, k and v 896*128+128 = 114,816 each,
    # o 896*896 = 802,816, MLP 3*896*4864 = 13,074,432, norms 2*896 = 1,792 -> 14,912,384; x24 = 357,897,216;
    # + final norm 896 -> 494,032,768 (the count on the model card).
    raw = {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    }
    assert count_parameters(ModelConfig.from_hf_dict(raw)) == 494_032_768 == _transformers_count(raw)


def test_unsupported_model_type_names_the_base(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    with pytest.raises(ModelConfigError, match=r"^--base .*: config.json: model_type 'gpt2' is not supported"):
        inspect_base(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"config.json: not found; the base model folder needs"),
        (b"{not json", r"config.json: not valid JSON"),
        (b"\xff\xfe", r"config.json: not valid JSON"),
        (b"[1, 2]", r"config.json: must hold a JSON object, got list"),
    ],
)
def test_bad_local_config_json(tmp_path: Path, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(InitError, match=message):
        inspect_base(str(tmp_path))


def test_base_file_and_unknown_name_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"  # a .gguf file is a base model (converted)
    weights.write_bytes(b"{}")
    with pytest.raises(InitError, match=r"is a file; pass the model folder"):
        inspect_base(str(weights))
    for missing in (str(tmp_path / "nowhere"), "no/such/thing", "user/model.safetensors", "-bad-/name"):
        with pytest.raises(InitError, match=r"no such folder, and not a Hub repo id"):
            inspect_base(missing)


def test_home_folder_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, word_model: Any) -> None:
    folder = word_model()
    monkeypatch.setenv("HOME", str(folder.parent))
    base = inspect_base(f"~/{folder.name}")
    assert base.folder == folder and base.source == "local"


def test_missing_local_tokenizer_is_a_clear_error(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    shutil.copy(tiny_checkpoints["qwen2"] / "config.json", tmp_path / "config.json")
    base = inspect_base(str(tmp_path))
    with pytest.raises(InitError, match=rf"cannot load the tokenizer from {tmp_path} .*needs tokenizer.json"):
        load_base_tokenizer(base)


def test_local_tokenizer_is_the_folders(tiny_checkpoints: dict[str, Path]) -> None:
    tokenizer = load_base_tokenizer(inspect_base(str(tiny_checkpoints["llama"])))
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.add_bos_token  # the llama flavour of the fixture


def _fetched_paths(records: list[logging.LogRecord]) -> set[str]:
    """Repo file paths the client asked the server for (``GET|HEAD /alice/x/resolve/<rev>/<path> <status>``)."""
    paths = set()
    for record in records:
        method, path, _status = record.getMessage().split(" ")
        if "/resolve/" in path and method in ("GET", "HEAD"):
            paths.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
    return paths


def _cached_files() -> set[str]:
    cache = Path(os.environ["HF_HUB_CACHE"])
    return {p.name for p in cache.rglob("*") if p.is_file() and "snapshots" in p.parts}


def test_repo_id_fetches_only_config_and_tokenizer(
    local_hub: Any, tiny_checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_checkpoints["qwen2"]
    assert (folder / "model.safetensors").is_file()  # the repo holds weights, so not fetching them means something
    upload_folder("alice/tiny-qwen2", folder, token=local_hub.tokens["alice"])
    caplog.clear()
    caplog.set_level(logging.INFO, logger="aprender.hub.server")

    base = inspect_base("alice/tiny-qwen2")
    tokenizer = load_base_tokenizer(base)

    assert base.source == "hub" and base.folder is None
    assert base.num_parameters == inspect_base(str(folder)).num_parameters
    assert tokenizer.encode("hello world") == load_base_tokenizer(inspect_base(str(folder))).encode("hello world")
    fetched = _fetched_paths([r for r in caplog.records if r.name == "aprender.hub.server"])
    assert fetched == {"config.json", "tokenizer.json", "tokenizer_config.json"}
    assert _cached_files() == {"config.json", "tokenizer.json", "tokenizer_config.json"}

    # Offline, both come from the HF cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    offline = inspect_base("alice/tiny-qwen2")
    assert offline.config == base.config
    assert load_base_tokenizer(offline).vocab_size == tokenizer.vocab_size


def test_repo_without_tokenizer_or_repo_missing(
    local_hub: Any, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(tiny_checkpoints["mistral"] / "config.json", only_config / "config.json")
    upload_folder("bob/no-tokenizer", only_config, token=local_hub.tokens["bob"])
    base = inspect_base("bob/no-tokenizer")
    assert base.config.model_type == "mistral"
    with pytest.raises(InitError, match=r"from the Hub repo bob/no-tokenizer .*needs tokenizer.json"):
        load_base_tokenizer(base)
    with pytest.raises(HubNotFoundError):
        inspect_base("bob/absent")
