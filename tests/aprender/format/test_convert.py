"""GGUF -> Hugging Face conversion.

Oracles: transformers (loading our folder, loading the same GGUF itself with `gguf_file=`, its RoPE
code), the `gguf` package (tensor names, quantization, dequantization), llama.cpp's permutation
rewritten here from its converter, and the tiny random models the GGUFs were written from.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from aprender.errors import ConversionError, InvalidArgumentError
from aprender.format import convert as convert_module
from aprender.format import safetensors
from aprender.format.convert import (
    SUPPORTED_ARCHITECTURES,
    convert_gguf_to_hf,
    hf_config_from_gguf,
    hf_generation_config,
    hf_tensor_name,
    llama3_rope_scaling,
    unpermute_rope_rows,
)
from fixtures.gguf_vocab import GGUFVocab, byte_level_vocab, sentencepiece_vocab

Q8_0, F16, F32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
# Tensor types of the tiny GGUFs: a mix, as real files have (norms and biases stay F32).
QUANT = {"token_embd": Q8_0, "attn_q": Q8_0, "attn_k": F16, "ffn_down": Q8_0, "output": F16}


def llamacpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: interleave the two RoPE halves of each head."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(
    path: Path, model: Any, arch: str, vocab: GGUFVocab, *, pre: str | None = None, rope_freqs: np.ndarray | None = None
) -> Path:
    """Write an HF model as llama.cpp would: gguf's tensor names, permuted llama q/k, mixed quant types."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)
    vocab.write(writer, pre=pre)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        data = tensor.float().numpy()
        role = name.split(".")[-2]
        if arch == "llama" and role in ("attn_q", "attn_k"):
            data = llamacpp_permute(data, cfg.num_attention_heads if role == "attn_q" else cfg.num_key_value_heads)
        qtype = QUANT.get(role, F32) if name.endswith(".weight") else F32
        if qtype == F16:
            data = data.astype(np.float16)
        elif qtype != F32:
            data = gguf.quants.quantize(data, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama() -> LlamaForCausalLM:
    """head_dim 32 with hidden 64 and 4 heads: head_dim differs from hidden/heads; lm_head untied."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(sentencepiece_vocab().tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    return LlamaForCausalLM(config).eval()


def tiny_qwen2() -> Qwen2ForCausalLM:
    """Tied embeddings, random q/k/v biases."""
    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=len(byte_level_vocab().tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        initializer_range=0.1,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def llama_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("llama")
    model = tiny_llama()
    path = write_gguf(folder / "tiny-llama.gguf", model, "llama", sentencepiece_vocab())
    out = convert_gguf_to_hf(path, folder / "hf")
    return {"model": model, "gguf": path, "out": out}


@pytest.fixture(scope="module")
def qwen2_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("qwen2")
    model = tiny_qwen2()
    path = write_gguf(folder / "tiny-qwen2.gguf", model, "qwen2", byte_level_vocab(), pre="qwen2")
    out = convert_gguf_to_hf(path, folder / "hf")
    return {"model": model, "gguf": path, "out": out}


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# ------------------------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("case", ["llama_case", "qwen2_case"])
def test_logits_match_transformers_gguf_loader(request: pytest.FixtureRequest, case: str) -> None:
    data = request.getfixturevalue(case)
    ours = AutoModelForCausalLM.from_pretrained(data["out"], dtype=torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(data["gguf"].parent, gguf_file=data["gguf"].name, dtype=torch.float32)
    text = "The capital of France is Paris. café 👍 12345"
    ids = AutoTokenizer.from_pretrained(data["out"])(text)["input_ids"]
    assert ids == AutoTokenizer.from_pretrained(data["gguf"].parent, gguf_file=data["gguf"].name)(text)["input_ids"]
    # Both dequantize the same bytes with the same formulas: identical up to float32 summation order.
    torch.testing.assert_close(_logits(ours, ids), _logits(theirs, ids), rtol=1e-5, atol=1e-5)
    # Against the model the GGUF was written from: only Q8_0/F16 rounding separates them.
    torch.testing.assert_close(_logits(ours, ids), _logits(data["model"], ids), rtol=0.0, atol=0.05)


@pytest.mark.parametrize("case", ["llama_case", "qwen2_case"])
def test_float32_tensors_equal_the_original(request: pytest.FixtureRequest, case: str) -> None:
    data = request.getfixturevalue(case)
    ours = safetensors.load(data["out"])
    original = data["model"].state_dict()
    tied = data["model"].config.tie_word_embeddings
    assert set(ours) == set(original) - ({"lm_head.weight"} if tied else set())
    for name, tensor in ours.items():
        role = hf_role(name)
        if role in QUANT:  # rounded by Q8_0/F16: close, and its rows are in the original order
            assert torch.corrcoef(torch.stack([tensor.flatten(), original[name].flatten()]))[0, 1] > 0.999, name
        else:  # F32 in the file: exact, q/k biases un-permuted
            assert torch.equal(tensor, original[name]), name


def hf_role(hf_name: str) -> str:
    """The GGUF role of an HF tensor name (the test's own reverse table)."""
    roles = {"q_proj": "attn_q", "k_proj": "attn_k", "down_proj": "ffn_down", "embed_tokens": "token_embd"}
    roles["lm_head"] = "output"
    return next((role for part, role in roles.items() if part in hf_name), "")


def test_llama_config(llama_case: dict[str, Any]) -> None:
    config = json.loads((llama_case["out"] / "config.json").read_text())
    # the values tiny_llama() was built with; bos/eos/unk ids of the sentencepiece vocabulary
    vocab = sentencepiece_vocab()
    assert config == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": pytest.approx(1e-5),
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "max_position_embeddings": 256,
        "vocab_size": len(vocab.tokens),
        "tie_word_embeddings": False,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "pad_token_id": None,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    assert AutoConfig.from_pretrained(llama_case["out"]).head_dim == 32
    generation = GenerationConfig.from_pretrained(llama_case["out"])
    assert (generation.bos_token_id, generation.eos_token_id) == (vocab.bos, vocab.eos)
    assert sorted(os.listdir(llama_case["out"])) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_qwen2_config(qwen2_case: dict[str, Any]) -> None:
    config = json.loads((qwen2_case["out"] / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 1000000.0
    assert "head_dim" not in config and "attention_bias" not in config  # 64/4 = 16; Qwen2 always has q/k/v biases
    assert "lm_head.weight" not in safetensors.load(qwen2_case["out"])


def test_bfloat16_output(tmp_path: Path, llama_case: dict[str, Any]) -> None:
    out = convert_gguf_to_hf(llama_case["gguf"], tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ours, reference = safetensors.load(out), safetensors.load(llama_case["out"])
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16


def test_shards_and_stale_weights(tmp_path: Path, qwen2_case: dict[str, Any]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("kept")
    convert_gguf_to_hf(qwen2_case["gguf"], out, max_shard_size="100KB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    sharded = AutoModelForCausalLM.from_pretrained(out)
    ids = [1, 2, 3, 40, 50]
    torch.testing.assert_close(_logits(sharded, ids), _logits(qwen2_case["model"], ids), rtol=0.0, atol=0.05)
    convert_gguf_to_hf(qwen2_case["gguf"], out)  # one file now: the shards and index of the first run go
    assert sorted(os.listdir(out)) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_failure_leaves_out_dir_untouched(
    tmp_path: Path, llama_case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(convert_module.safetensors, "save_file", broken_save)  # what writes each shard
    with pytest.raises(OSError, match="disk full"):
        convert_gguf_to_hf(llama_case["gguf"], out)
    assert os.listdir(out) == ["config.json"] and (out / "config.json").read_text() == "{}"


def test_bad_arguments(tmp_path: Path, llama_case: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"dtype torch\.int8 is not supported"):
        convert_gguf_to_hf(llama_case["gguf"], tmp_path / "a", dtype=torch.int8)
    with pytest.raises(InvalidArgumentError):
        convert_gguf_to_hf(llama_case["gguf"], tmp_path / "b", max_shard_size="lots")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _write_minimal(path: Path, arch: str, tensors: dict[str, np.ndarray], **keys: Any) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    for key, value in keys.items():
        writer.add_uint32(key, value)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_file(tmp_path: Path) -> None:
    path = _write_minimal(tmp_path / "m.gguf", "mamba", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(ConversionError, match="architecture 'mamba' is not supported; supported: llama, qwen2"):
        convert_gguf_to_hf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert SUPPORTED_ARCHITECTURES == ("llama", "qwen2")


def test_unknown_tensor_in_file(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    sentencepiece_vocab().write(writer)
    writer.add_tensor("token_embd.weight", np.zeros((len(sentencepiece_vocab().tokens), 8), np.float32))
    writer.add_tensor("blk.0.attn_rot_embd.weight", np.zeros((8,), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match=r"'blk\.0\.attn_rot_embd\.weight' has no counterpart"):
        convert_gguf_to_hf(tmp_path / "m.gguf", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # the staging folder is gone


# ------------------------------------------------------------------------------------------ config pieces


def _llama_meta(**changes: Any) -> dict[str, Any]:
    meta = {
        "general.architecture": "llama",
        "llama.context_length": 128,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 96,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 4,
        "llama.attention.layer_norm_rms_epsilon": 1e-6,
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


SHAPES = {"token_embd.weight": (100, 64), "blk.0.attn_q.weight": (64, 64)}


@pytest.mark.parametrize(
    "key",
    [
        "general.architecture",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.layer_norm_rms_epsilon",
    ],
)
def test_missing_metadata_is_named(key: str) -> None:
    with pytest.raises(ConversionError, match=f"no '{key}'"):
        hf_config_from_gguf(_llama_meta(**{key: None}), SHAPES)


def test_config_defaults_and_ids() -> None:
    meta = _llama_meta(**{"llama.attention.head_count_kv": None, "tokenizer.ggml.padding_token_id": 3})
    config = hf_config_from_gguf(meta, SHAPES, dtype=torch.float16)
    # llama.cpp's defaults: kv heads = heads, rope base 10000; vocab from token_embd's rows
    assert config["num_key_value_heads"] == 4 and config["rope_theta"] == 10000.0 and config["vocab_size"] == 100
    assert config["pad_token_id"] == 3 and config["bos_token_id"] is None and config["torch_dtype"] == "float16"
    with pytest.raises(ConversionError, match=re.escape("no 'token_embd.weight' tensor")):
        hf_config_from_gguf(meta, {})


def test_shape_and_rope_dimension_checks() -> None:
    with pytest.raises(ConversionError, match=re.escape("attn_q.weight has 48 rows; 4 heads of 16 need 64")):
        hf_config_from_gguf(_llama_meta(), {**SHAPES, "blk.0.attn_q.weight": (48, 64)})
    with pytest.raises(ConversionError, match=re.escape("rope.dimension_count 8 differs from head_dim 16")):
        hf_config_from_gguf(_llama_meta(**{"llama.rope.dimension_count": 8}), SHAPES)


def test_bias_flags() -> None:
    attention = {f"blk.0.{r}.bias": (64,) for r in ("attn_q", "attn_k", "attn_v", "attn_output")}
    mlp = {f"blk.0.{r}.bias": (64,) for r in ("ffn_gate", "ffn_up", "ffn_down")}
    config = hf_config_from_gguf(_llama_meta(), {**SHAPES, **attention})
    assert (config["attention_bias"], config["mlp_bias"]) == (True, False)
    config = hf_config_from_gguf(_llama_meta(), {**SHAPES, **mlp})
    assert (config["attention_bias"], config["mlp_bias"]) == (False, True)
    with pytest.raises(ConversionError, match="Llama needs all or none"):
        hf_config_from_gguf(_llama_meta(), {**SHAPES, "blk.0.attn_q.bias": (64,)})
    qwen = {k.replace("llama.", "qwen2."): v for k, v in _llama_meta(**{"general.architecture": "qwen2"}).items()}
    with pytest.raises(ConversionError, match="Qwen2 needs exactly attn_q, attn_k and attn_v"):
        hf_config_from_gguf(qwen, SHAPES)


def test_linear_and_yarn_rope_scaling() -> None:
    linear = _llama_meta(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    assert hf_config_from_gguf(linear, SHAPES)["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    yarn = _llama_meta(
        **{
            "llama.rope.scaling.type": "yarn",
            "llama.rope.scaling.factor": 4.0,
            "llama.rope.scaling.original_context_length": 32,
            "llama.rope.scaling.yarn_beta_fast": 32.0,
        }
    )
    expected = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32.0}
    assert hf_config_from_gguf(yarn, SHAPES)["rope_scaling"] == expected
    assert LlamaConfig(**hf_config_from_gguf(yarn, SHAPES)).rope_parameters["rope_type"] == "yarn"
    none = _llama_meta(**{"llama.rope.scaling.type": "none"})
    assert hf_config_from_gguf(none, SHAPES)["rope_scaling"] is None
    with pytest.raises(ConversionError, match=re.escape("rope.scaling.type 'longrope' is not supported")):
        hf_config_from_gguf(
            _llama_meta(**{"llama.rope.scaling.type": "longrope", "llama.rope.scaling.factor": 2}), SHAPES
        )
    with pytest.raises(ConversionError, match=re.escape("no 'llama.rope.scaling.factor'")):
        hf_config_from_gguf(_llama_meta(**{"llama.rope.scaling.type": "linear"}), SHAPES)


def test_llama3_rope_freqs_round_trip() -> None:
    # transformers computes Llama 3.1 inverse frequencies; llama.cpp stores default / scaled as rope_freqs.
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    sizes = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 64, "max_position_embeddings": 131072}
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**sizes, rope_theta=500000.0, rope_scaling=dict(scaling)))
    default = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64)  # RoFormer's theta_i
    rope_freqs = default / scaled
    meta = _llama_meta(
        **{"llama.rope.freq_base": 500000.0, "llama.attention.key_length": 64, "llama.context_length": 131072}
    )
    shapes = {**SHAPES, "blk.0.attn_q.weight": (256, 64), "rope_freqs.weight": (32,)}
    config = hf_config_from_gguf(meta, shapes, rope_freqs=rope_freqs)
    assert config["rope_scaling"] == pytest.approx(scaling)
    ours, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**config))
    torch.testing.assert_close(ours, scaled)
    with pytest.raises(ConversionError, match="pass its values as rope_freqs"):
        hf_config_from_gguf(meta, shapes)


def test_llama3_rope_freqs_file(tmp_path: Path) -> None:
    # tiny_llama (head_dim 32, theta 10000) with Llama 3 factors computed by transformers, as llama.cpp stores them
    model = tiny_llama()
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    sizes = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32, "max_position_embeddings": 16384}
    llama3 = LlamaConfig(**sizes, rope_theta=10000.0, rope_scaling={"rope_type": "llama3", **scaling})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](llama3)
    default = 1.0 / 10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)
    factors = (default / scaled).numpy()
    assert factors.max() > 1.0 and factors.min() == pytest.approx(1.0)  # a real mix of scaled and unscaled
    path = write_gguf(tmp_path / "l3.gguf", model, "llama", sentencepiece_vocab(), rope_freqs=factors)
    out = convert_gguf_to_hf(path, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == pytest.approx({"rope_type": "llama3", **scaling})
    assert not any("rope" in name for name in safetensors.load(out))


def test_llama3_rope_freqs_rejects_other_shapes() -> None:
    assert llama3_rope_scaling(torch.ones(32), 64, 500000.0) is None  # no scaling at all
    with pytest.raises(ConversionError, match="has 16 entries; expected head_dim/2 = 32"):
        llama3_rope_scaling(torch.ones(16), 64, 500000.0)
    with pytest.raises(ConversionError, match="does not follow Llama 3 RoPE scaling"):
        llama3_rope_scaling(torch.linspace(1.0, 8.0, 32), 64, 500000.0)


def test_generation_config() -> None:
    meta = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0}
    assert hf_generation_config(meta) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    meta |= {"tokenizer.ggml.eot_token_id": 7, "tokenizer.ggml.eom_token_id": 2}
    assert hf_generation_config(meta)["eos_token_id"] == [2, 7]  # eom repeats eos: listed once
    assert hf_generation_config({}) == {}


# ------------------------------------------------------------------------------------------ names, rows


@pytest.mark.parametrize(
    ("gguf_name", "hf_name"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
        ("blk.11.ffn_norm.weight", "model.layers.11.post_attention_layernorm.weight"),
        ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"),
        ("blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"),
        ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
        ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
    ],
)
def test_tensor_names(gguf_name: str, hf_name: str) -> None:
    assert hf_tensor_name(gguf_name) == hf_name
    # the gguf package's own HF -> GGUF table agrees
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 12)
    assert table.get_name(hf_name, try_suffixes=(".weight", ".bias")) == gguf_name


@pytest.mark.parametrize("name", ["token_embd.bias", "blk.0.attn_norm.bias", "blk.0.ffn_gate_exps.weight", "x"])
def test_unknown_tensor_names(name: str) -> None:
    with pytest.raises(ConversionError, match="has no counterpart"):
        hf_tensor_name(name)


@settings(max_examples=60, deadline=None)
@given(
    heads=st.integers(1, 6),
    half=st.integers(1, 8),
    cols=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_unpermute_inverts_llamacpp_permute(heads: int, half: int, cols: int, seed: int) -> None:
    shape = (heads * 2 * half, cols) if cols else (heads * 2 * half,)
    original = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    restored = unpermute_rope_rows(torch.from_numpy(llamacpp_permute(original, heads)), heads)
    assert torch.equal(restored, torch.from_numpy(original))


def test_unpermute_by_hand_and_errors() -> None:
    # one head, head_dim 4: HF rows (a0, a1, b0, b1) are stored by llama.cpp as (a0, b0, a1, b1)
    stored = torch.tensor([10.0, 20.0, 11.0, 21.0])
    assert unpermute_rope_rows(stored, 1).tolist() == [10.0, 11.0, 20.0, 21.0]
    with pytest.raises(ConversionError, match="cannot split 6 rows"):
        unpermute_rope_rows(torch.zeros(6, 2), 2)


# ------------------------------------------------------------------------------------------ SmolLM2 (real)


@pytest.mark.slow
def test_smollm2_says_paris(smollm2_hf_dir: Path) -> None:
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = int(model(ids).logits[0, -1].argmax())
    assert tokenizer.decode([next_id]) == " Paris"


@pytest.mark.slow
def test_smollm2_tensors_equal_gguf_dequantization(smollm2_hf_dir: Path, smollm2_gguf_path: Path) -> None:
    reader = gguf.GGUFReader(smollm2_gguf_path)
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    ours = safetensors.load(smollm2_hf_dir)
    assert len(ours) == len(reader.tensors) == 272 and "lm_head.weight" not in ours  # tied
    for tensor in reader.tensors:
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape)))
        role = tensor.name.split(".")[-2]
        got = ours[hf_tensor_name(tensor.name)].numpy()
        if role in ("attn_q", "attn_k"):  # llama.cpp's order is what the file holds: permute ours forward
            got = llamacpp_permute(got, heads if role == "attn_q" else kv_heads)
        np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=tensor.name)


@pytest.mark.slow
def test_smollm2_config(smollm2_hf_dir: Path) -> None:
    config = json.loads((smollm2_hf_dir / "config.json").read_text())
    # SmolLM2-135M: 30 blocks, 576 hidden, 9 heads, 3 kv heads, vocab 49152, tied (no output.weight)
    expected = {
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert {k: config[k] for k in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(1e-5) and "head_dim" not in config
