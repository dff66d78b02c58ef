"""ModelConfig: reading HF config.json (transformers 4 and 5 layouts), defaults, validation, round trips.

Oracle: transformers' own config classes and model classes (built on the meta device, so no memory).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrenar.errors import EntrenarError, ModelConfigError
from entrenar.models import SUPPORTED_MODEL_TYPES, CausalLM, ModelConfig, read_config

MINIMAL: dict[str, Any] = {
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


def _hf_config(raw: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(**raw)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def _ours_and_hf_shapes(raw: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        ours = CausalLM(ModelConfig.from_hf_dict(raw))
        reference = AutoModelForCausalLM.from_config(_hf_config(raw))
    hf = _shapes(reference)
    if raw.get("tie_word_embeddings"):
        hf.pop("lm_head.weight")  # a tied head is the embedding: transformers lists it twice, we once
    return _shapes(ours), hf


def test_reads_each_tiny_fixture_like_transformers(tiny_checkpoint: tuple[str, Path]) -> None:
    family, folder = tiny_checkpoint
    ours = read_config(folder)
    raw = json.loads((folder / "config.json").read_text())
    hf = _hf_config(raw)
    assert ours.model_type == family
    assert (ours.hidden_size, ours.num_layers, ours.num_heads, ours.num_kv_heads) == (64, 2, 4, 2)
    assert ours.head_dim == (32 if family == "qwen3" else 16)
    assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    assert ours.rope_type == hf.rope_parameters["rope_type"]
    assert ours.rms_norm_eps == hf.rms_norm_eps
    assert ours.tie_word_embeddings == hf.tie_word_embeddings
    assert ours.sliding_window == (16 if family == "mistral" else None)
    assert ours.torch_dtype == "float32"
    shapes, reference = _ours_and_hf_shapes(raw)
    assert shapes == reference


@pytest.mark.parametrize(
    "extra",
    [
        {"model_type": "llama", "attention_bias": True, "mlp_bias": True},
        {"model_type": "llama", "tie_word_embeddings": True},
        {"model_type": "qwen2", "attention_bias": True, "mlp_bias": True},  # qwen2 ignores both: q/k/v bias always
        {"model_type": "qwen3", "attention_bias": True, "head_dim": 8},
        {"model_type": "mistral", "num_key_value_heads": 1, "attention_bias": True},  # mistral ignores it
    ],
)
def test_architecture_matches_transformers_parameter_for_parameter(extra: dict[str, Any]) -> None:
    # Expected: the names and shapes of transformers' model built from the same config.json.
    shapes, reference = _ours_and_hf_shapes(MINIMAL | extra)
    assert shapes == reference


@pytest.mark.parametrize("family", SUPPORTED_MODEL_TYPES)
def test_absent_keys_take_the_transformers_defaults(family: str) -> None:
    raw: dict[str, Any] = {key: value for key, value in MINIMAL.items() if key != "num_key_value_heads"}
    raw |= {"model_type": family, "hidden_size": 64, "num_attention_heads": 32}
    ours = ModelConfig.from_hf_dict(raw)
    hf = _hf_config(raw)
    assert ours.num_kv_heads == hf.num_key_value_heads  # 32 for llama (= heads) and qwen, 8 for mistral
    assert ours.head_dim == 2
    assert ours.max_position_embeddings == hf.max_position_embeddings
    assert ours.rms_norm_eps == hf.rms_norm_eps
    assert ours.tie_word_embeddings == hf.tie_word_embeddings
    assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    assert ours.sliding_window == getattr(hf, "sliding_window", None)


def test_transformers_4_layout_equals_transformers_5_layout(tiny_checkpoints: dict[str, Path]) -> None:
    raw = json.loads((tiny_checkpoints["llama"] / "config.json").read_text())
    rope = raw.pop("rope_parameters")
    v4 = raw | {"rope_theta": rope.pop("rope_theta"), "rope_scaling": {"type": rope.pop("rope_type"), **rope}}
    v4["torch_dtype"] = v4.pop("dtype")
    assert ModelConfig.from_hf_dict(v4) == read_config(tiny_checkpoints["llama"])


def test_smollm2_style_config() -> None:
    # The keys of SmolLM2-135M's config.json (transformers 4 layout, rope_scaling null).
    raw: dict[str, Any] = MINIMAL | {
        "model_type": "llama",
        "rope_theta": 1e5,
        "rope_scaling": None,
        "torch_dtype": "bfloat16",
    }
    raw |= {"num_key_value_heads": 2, "tie_word_embeddings": True, "eos_token_id": [2, 3], "pad_token_id": 2}
    config = ModelConfig.from_hf_dict(raw)
    assert (config.rope_type, config.rope_theta, config.torch_dtype) == ("default", 100000.0, "bfloat16")
    assert config.eos_token_id == (2, 3) and config.num_kv_heads == 2
    assert config.to_hf_dict()["eos_token_id"] == [2, 3]


def test_scaled_rope_without_original_context_uses_max_positions() -> None:
    # transformers fills original_max_position_embeddings from max_position_embeddings for llama3 and yarn.
    raw = MINIMAL | {"model_type": "qwen2", "max_position_embeddings": 4096}
    config = ModelConfig.from_hf_dict(raw | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    hf = _hf_config(raw | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    assert (
        config.rope_original_max_position_embeddings == hf.rope_parameters["original_max_position_embeddings"] == 4096
    )


def test_qwen_sliding_layers_follow_max_window_layers() -> None:
    raw = MINIMAL | {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}
    config = ModelConfig.from_hf_dict(raw)
    assert config.layer_types == tuple(_hf_config(raw).layer_types)
    assert [config.layer_window(i) for i in range(3)] == [None, 8, 8]
    explicit = ModelConfig.from_hf_dict(
        raw | {"layer_types": ["sliding_attention", "full_attention"] * 1 + ["full_attention"]}
    )
    assert [explicit.layer_window(i) for i in range(3)] == [8, None, None]
    off = ModelConfig.from_hf_dict(raw | {"use_sliding_window": False})
    assert off.sliding_window is None and set(off.layer_types or ()) == {"full_attention"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported; supported: llama, mistral, qwen2, qwen3"),
        ({"model_type": None}, "model_type None is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"hidden_size": None}, "required key 'hidden_size' is missing"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "RoPE type 'dynamic' is not supported; supported:"),
        ({"rope_parameters": {"rope_type": "longrope"}}, "RoPE type 'longrope' is not supported"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 is not supported"),
        ({"rope_scaling": {"type": "linear"}}, "RoPE type 'linear' needs rope_factor"),
        ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
        ({"torch_dtype": "float64"}, "torch_dtype 'float64' is not supported"),
        ({"bos_token_id": 32}, "bos_token_id 32 is outside the vocabulary [0, 32)"),
        ({"attention_dropout": 1.0}, "attention_dropout 1.0 must lie in [0, 1)"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps 0.0 must be a positive number"),
        ({"vocab_size": 0}, "vocab_size 0 must be a positive integer"),
        ({"head_dim": 2.5}, "head_dim 2.5 must be a positive integer"),
        ({"rope_theta": -1.0}, "rope_theta -1.0 must be a positive number"),
    ],
)
def test_invalid_config_json_is_refused_with_a_clear_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelConfigError) as error:
        ModelConfig.from_hf_dict(MINIMAL | {"model_type": "llama"} | change)
    assert message in str(error.value)
    assert isinstance(error.value, EntrenarError)


def test_read_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MINIMAL | {"model_type": "bert"}))
    with pytest.raises(ModelConfigError, match=r"config\.json: model_type 'bert' is not supported"):
        read_config(tmp_path)


BASE = ModelConfig.from_hf_dict(MINIMAL | {"model_type": "llama"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral", "attention_bias": True}, "attention_bias=True is not part of the mistral"),
        ({"model_type": "qwen3", "mlp_bias": True}, "mlp_bias=True is not part of the qwen3"),
        ({"sliding_window": 4}, "sliding_window is not part of the llama"),
        ({"model_type": "qwen2", "sliding_window": 0}, "sliding_window 0 must be a positive integer"),
        ({"layer_types": ("full_attention",)}, "layer_types ['full_attention'] must hold 3 entries"),
        ({"layer_types": ("sliding_attention",) * 3}, "sliding_attention layers but sliding_window is None"),
        (
            {
                "model_type": "mistral",
                "sliding_window": 4,
                "layer_types": ("full_attention", "sliding_attention") * 1 + ("full_attention",),
            },
            "layer_types must be uniform",
        ),
        ({"num_layers": True}, "num_layers True must be a positive integer"),
        ({"model_type": "phi3"}, "model_type 'phi3' is not supported; supported: llama, mistral, qwen2, qwen3"),
        ({"rope_type": "dynamic"}, "RoPE type 'dynamic' is not supported; supported: default, linear, llama3, yarn"),
    ],
)
def test_family_rules_are_enforced(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelConfigError) as error:
        replace(BASE, **change)
    assert message in str(error.value)


# ------------------------------------------------------------------------------------------ round trips

_ROPES = st.sampled_from(
    [
        {},
        {"rope_type": "linear", "rope_factor": 2.0},
        {
            "rope_type": "llama3",
            "rope_factor": 8.0,
            "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0,
            "rope_original_max_position_embeddings": 64,
        },
        {"rope_type": "yarn", "rope_factor": 4.0, "rope_original_max_position_embeddings": 32},
        {
            "rope_type": "yarn",
            "rope_factor": 4.0,
            "rope_original_max_position_embeddings": 32,
            "rope_beta_fast": 16.0,
            "rope_beta_slow": 2.0,
            "rope_mscale": 0.7,
            "rope_mscale_all_dim": 0.5,
            "rope_truncate": False,
        },
        {
            "rope_type": "yarn",
            "rope_factor": 2.0,
            "rope_original_max_position_embeddings": 32,
            "rope_attention_factor": 1.5,
        },
    ]
)


@st.composite
def configs(draw: st.DrawFn) -> ModelConfig:
    family = draw(st.sampled_from(SUPPORTED_MODEL_TYPES))
    kv_heads = draw(st.sampled_from([1, 2, 4]))
    layers = draw(st.integers(1, 4))
    window = draw(st.none() | st.integers(1, 64)) if family != "llama" else None
    layer_types = None
    if window is not None and family != "mistral":
        layer_types = tuple(draw(st.sampled_from(["full_attention", "sliding_attention"])) for _ in range(layers))
    values: dict[str, Any] = {
        "model_type": family,
        "vocab_size": draw(st.integers(8, 512)),
        "hidden_size": 32,
        "intermediate_size": draw(st.integers(1, 100)),
        "num_layers": layers,
        "num_heads": 4,
        "num_kv_heads": kv_heads,
        "head_dim": draw(st.sampled_from([8, 16])),
        "max_position_embeddings": draw(st.integers(64, 4096)),
        "rms_norm_eps": draw(st.sampled_from([1e-5, 1e-6])),
        "tie_word_embeddings": draw(st.booleans()),
        "attention_bias": draw(st.booleans()) and family in ("llama", "qwen3"),
        "mlp_bias": draw(st.booleans()) and family == "llama",
        "attention_dropout": draw(st.sampled_from([0.0, 0.1])),
        "sliding_window": window,
        "layer_types": layer_types,
        "rope_theta": draw(st.sampled_from([10000.0, 1e6])),
        "bos_token_id": draw(st.none() | st.integers(0, 7)),
        "eos_token_id": draw(st.none() | st.integers(0, 7) | st.tuples(st.integers(0, 7), st.integers(0, 7))),
        "pad_token_id": draw(st.none() | st.integers(0, 7)),
        "torch_dtype": draw(st.sampled_from([None, "float32", "bfloat16", "float16"])),
    }
    return ModelConfig(**(values | draw(_ROPES)))


@settings(max_examples=60, deadline=None)
@given(configs())
def test_to_hf_dict_round_trips(config: ModelConfig) -> None:
    raw = config.to_hf_dict()
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(raw))) == config


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_transformers_reads_to_hf_dict_as_the_same_architecture(config: ModelConfig) -> None:
    # Oracle: transformers parses our config.json, writes its own; reading that back gives the same config.
    hf = _hf_config(config.to_hf_dict())
    again = ModelConfig.from_hf_dict(json.loads(hf.to_json_string()))
    assert again == config
