"""Hugging Face -> GGUF export.

Oracles: the `gguf` package (GGUFReader, its HF -> GGUF tensor-name table, its reference quantizers),
transformers (the models before export, its own GGUF model and tokenizer loaders, its Llama 3 RoPE code),
sentencepiece itself (SentencePiece vocabularies), llama.cpp's q/k permutation and score-greedy
SentencePiece merging rewritten here from its sources, and our GGUF importer (`convert_gguf_to_hf`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from aprender.errors import ConversionError, InvalidArgumentError
from aprender.format import gguf_export
from aprender.format import safetensors as st_format
from aprender.format.convert import (
    convert_gguf_to_hf,
    hf_tensor_name,
    llama3_rope_divisors,
    llama3_rope_scaling,
    permute_rope_rows,
    unpermute_rope_rows,
)
from aprender.format.gguf_export import (
    GGUF_TYPES,
    SUPPORTED_MODEL_TYPES,
    export_gguf,
    export_tensor_types,
    gguf_tensor_name,
)
from aprender.format.gguf_mixtures import FILE_TYPES as FILE_TYPES_ALL
from aprender.format.gguf_mixtures import ModelShape, tensor_types
from aprender.format.gguf_quantize import quantize_rows
from aprender.format.gguf_tokenizer import save_gguf_tokenizer
from fixtures.gguf_vocab import CHAT_TEMPLATE, sentencepiece_vocab

Q = gguf.GGMLQuantizationType
# the file types whose blocks the gguf package can also write (its quantizer is the oracle of the file's bytes)
GGUF_PACKAGE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}  # llama.cpp's LLAMA_FTYPE values
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I'm fine, they'll see.",
    "café naïve crème brûlée 👍",
    "def f(x):\n\treturn [1, 2]  # 12345\n",
    "<|im_start|>user\nHi there<|im_end|>\n",
]


def llamacpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, rewritten here as the oracle."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def fields(path: Path) -> dict[str, Any]:
    """GGUF metadata as plain Python values, read by the gguf package's reader."""
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def logits(folder: Path, ids: list[int], **kwargs: Any) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def variant(
    tmp_path: Path,
    source: Path,
    config: dict[str, Any] | None = None,
    edit: Callable[[Path], None] | None = None,
) -> Path:
    """A copy of a checkpoint folder with config.json keys replaced (None deletes) and other edits."""
    folder = tmp_path / f"variant-{source.name}"
    shutil.copytree(source, folder)
    data = json.loads((folder / "config.json").read_text())
    for key, value in (config or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data))
    if edit is not None:
        edit(folder)
    return folder


def edit_json(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return apply


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> Callable[..., Path]:
    """(family, gguf_type) -> the exported GGUF, built once per module."""
    folder = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(family: str, gguf_type: str) -> Path:
        if (family, gguf_type) not in cache:
            cache[family, gguf_type] = export_gguf(
                tiny_checkpoints[family], folder / f"{family}-{gguf_type}.gguf", gguf_type=gguf_type
            )
        return cache[family, gguf_type]

    return get


@pytest.fixture(scope="module")
def imported(exported: Callable[..., Path]) -> Callable[..., Path]:
    """(family, gguf_type) -> our importer's HF folder of the exported GGUF."""
    cache: dict[tuple[str, str], Path] = {}

    def get(family: str, gguf_type: str) -> Path:
        if (family, gguf_type) not in cache:
            path = exported(family, gguf_type)
            cache[family, gguf_type] = convert_gguf_to_hf(path, path.with_suffix(".hf"))
        return cache[family, gguf_type]

    return get


# ------------------------------------------------------------------------------------------ tensors


def mixture(path: Path, family: str, gguf_type: str) -> dict[str, int]:
    """llama-quantize's type of each tensor (`gguf_mixtures`, checked against llama.cpp in its own tests)."""
    reader = gguf.GGUFReader(path)
    listed = [(t.name, tuple(int(d) for d in reversed(t.shape.tolist()))) for t in reader.tensors]
    meta = fields(path)
    shape = ModelShape(
        family,
        meta[f"{family}.block_count"],
        meta[f"{family}.attention.head_count"],
        meta[f"{family}.attention.head_count_kv"],
    )
    types = tensor_types(listed, FILE_TYPES_ALL[gguf_type], shape)
    return {name: int(Q.F32 if t is None else t) for (name, _), t in zip(listed, types, strict=True)}


@pytest.mark.parametrize("gguf_type", GGUF_PACKAGE_TYPES)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tensors_read_back(
    exported: Callable[..., Path], tiny_checkpoints: dict[str, Path], family: str, gguf_type: str
) -> None:
    path = exported(family, gguf_type)
    original = st_format.load(tiny_checkpoints[family])
    config = json.loads((tiny_checkpoints[family] / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.upper()], config["num_hidden_layers"])
    expected = {names.get_name(n, try_suffixes=(".weight", ".bias")): n for n in original}
    if config["tie_word_embeddings"]:
        assert "lm_head.weight" not in original and "output.weight" not in expected
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected) | ({"rope_freqs.weight"} if family == "llama" else set())
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    types = mixture(path, family, gguf_type)
    for name, hf_name in expected.items():
        tensor, source = tensors[name], original[hf_name].numpy()
        assert tuple(reversed(tensor.shape.tolist())) == source.shape, name  # GGUF lists dims innermost first
        qtype = types[name]
        assert tensor.tensor_type == qtype and (source.ndim == 2 or qtype == Q.F32), name  # norms, biases: F32
        role = name.split(".")[-2]
        if family == "llama" and role in heads:  # llama.cpp's row order
            source = llamacpp_permute(source, heads[role])
        # the gguf package's reference quantizer applied to the original is exactly what the file holds
        want = gguf.quants.dequantize(gguf.quants.quantize(source, qtype), qtype)
        got = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(source.shape)
        np.testing.assert_array_equal(got, want.reshape(source.shape), err_msg=name)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> Path:
    """A Llama 256 wide (K-quant blocks divide its rows; the tiny models' 64 fall back), untied, 2 layers."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    folder = tmp_path_factory.mktemp("wide") / "wide"
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoints["llama"] / name, folder / name)
    return folder


# one file type per K-quant default type (the mixtures themselves are checked against llama.cpp in test_gguf_mixtures)
K_TYPES = ("q2_k", "q3_k_m", "q4_k_m", "q5_k_s", "q6_k")


def source_rows(folder: Path, name: str, heads: dict[str, int]) -> torch.Tensor:
    """The float32 rows the file's tensor `name` was quantized from (llama.cpp's row order for q/k)."""
    original = st_format.load(folder)
    values = original[hf_tensor_name(name)].float()
    role = name.split(".")[-2]
    return permute_rope_rows(values, heads[role]) if role in heads else values


@pytest.mark.parametrize("gguf_type", K_TYPES)
def test_k_quant_mixtures_hold_our_quantizers_bytes(wide_llama: Path, tmp_path: Path, gguf_type: str) -> None:
    path = export_gguf(wide_llama, tmp_path / "wide.gguf", gguf_type=gguf_type)
    types = mixture(path, "llama", gguf_type)
    assert fields(path)["general.file_type"] == int(FILE_TYPES_ALL[gguf_type].ftype)
    kinds = {t for t in types.values() if t != Q.F32}
    assert FILE_TYPES_ALL[gguf_type].default in kinds and (len(kinds) > 1) == (gguf_type != "q6_k")  # a mixture
    heads = {"attn_q": 4, "attn_k": 2}
    planned = export_tensor_types(wide_llama, gguf_type)  # what QAT trains each weight for
    assert {gguf_tensor_name(name): qtype for name, qtype in planned.items()} == types
    for tensor in gguf.GGUFReader(path).tensors:
        assert tensor.tensor_type == types[tensor.name], tensor.name
        if len(tensor.shape) == 2:  # the quantizer's own bytes, checked against llama.cpp's in its tests
            want = quantize_rows(source_rows(wide_llama, tensor.name, heads), Q(tensor.tensor_type))
            np.testing.assert_array_equal(np.asarray(tensor.data).reshape(want.shape), want, err_msg=tensor.name)
    ids = AutoTokenizer.from_pretrained(wide_llama)(TEXT)["input_ids"]
    before, after = logits(wide_llama, ids), logits(convert_gguf_to_hf(path, tmp_path / "hf"), ids)
    assert torch.isfinite(after).all() and (after - before).abs().max() < before.abs().max()


def test_an_importance_matrix_weighs_the_blocks(wide_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"GGUF type Q2_K_S needs an importance matrix"):
        export_gguf(wide_llama, tmp_path / "refused.gguf", gguf_type="q2_k_s")
    assert not (tmp_path / "refused.gguf").exists()
    generator = torch.Generator().manual_seed(0)
    roles = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    imatrix = {
        f"blk.{layer}.{role}.weight": torch.rand(256, generator=generator) + 0.01
        for layer in range(2)
        for role in roles
    }
    path = export_gguf(wide_llama, tmp_path / "wide.gguf", gguf_type="q2_k_s", imatrix=imatrix)
    plain = export_gguf(wide_llama, tmp_path / "plain.gguf", gguf_type="q2_k", imatrix=imatrix)
    heads = {"attn_q": 4, "attn_k": 2}
    for tensor in gguf.GGUFReader(path).tensors:
        if len(tensor.shape) == 2:
            weights = imatrix.get(tensor.name)  # the embedding and the head have none, as in llama-imatrix
            want = quantize_rows(source_rows(wide_llama, tensor.name, heads), Q(tensor.tensor_type), weights)
            np.testing.assert_array_equal(np.asarray(tensor.data).reshape(want.shape), want, err_msg=tensor.name)
    assert path.read_bytes() != plain.read_bytes()


def test_llama3_rope_freqs_tensor(exported: Callable[..., Path], tiny_checkpoints: dict[str, Path]) -> None:
    # the tiny llama's llama3 scaling (factor 4, original context 128): transformers' inverse frequencies give
    # the divisors llama.cpp stores (default / scaled)
    config = LlamaConfig.from_pretrained(tiny_checkpoints["llama"])
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    default = 1.0 / 10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    reader = gguf.GGUFReader(exported("llama", "f16"))
    stored = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    assert stored.tensor_type == Q.F32
    np.testing.assert_allclose(stored.data, (default / scaled).numpy(), rtol=1e-6)
    assert 1.0 < stored.data[2] < 4.0 and stored.data[0] == 1.0 and stored.data[-1] == 4.0  # a real mix


# ------------------------------------------------------------------------------------------ metadata


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_metadata(exported: Callable[..., Path], tiny_checkpoints: dict[str, Path], family: str) -> None:
    folder = tiny_checkpoints[family]
    config = json.loads((folder / "config.json").read_text())
    meta = fields(exported(family, "q8_0"))
    assert meta["general.architecture"] == family and meta["general.name"] == family  # the folder's name
    assert meta["general.file_type"] == FILE_TYPES["q8_0"] and meta["general.quantization_version"] == 2
    expected = {
        "context_length": config["max_position_embeddings"],
        "embedding_length": config["hidden_size"],
        "block_count": config["num_hidden_layers"],
        "feed_forward_length": config["intermediate_size"],
        "attention.head_count": config["num_attention_heads"],
        "attention.head_count_kv": config["num_key_value_heads"],
        "rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "vocab_size": config["vocab_size"],
    }
    assert {key: meta[f"{family}.{key}"] for key in expected} == expected
    assert meta[f"{family}.rope.freq_base"] == config["rope_parameters"]["rope_theta"]
    assert meta[f"{family}.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert not any(".rope.scaling." in key for key in meta)  # llama3 scaling travels as rope_freqs only


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tokenizer_metadata(exported: Callable[..., Path], tiny_checkpoints: dict[str, Path], family: str) -> None:
    folder = tiny_checkpoints[family]
    document = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    meta = fields(exported(family, "f16"))
    vocab = {**document["model"]["vocab"], **{t["content"]: t["id"] for t in document["added_tokens"]}}
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"  # the fixture splits with Qwen2's regex
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.__getitem__)  # byte-level spellings by id
    # the 7 added special tokens (ids 0-6) are CONTROL, every other token NORMAL
    assert meta["tokenizer.ggml.token_type"] == [3] * 7 + [1] * (len(vocab) - 7)
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in document["model"]["merges"]]
    ids = {name: vocab.get(tokenizer_config[f"{name}_token"] or "") for name in ("bos", "eos", "pad")}
    if family == "qwen2":  # no bos token in the tokenizer: config.json's bos_token_id (0), as llama.cpp
        ids["bos"] = json.loads((folder / "config.json").read_text())["bos_token_id"]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (ids["bos"], ids["eos"])
    assert meta["tokenizer.ggml.padding_token_id"] == ids["pad"]
    assert "tokenizer.ggml.unknown_token_id" not in meta and "tokenizer.ggml.scores" not in meta
    assert meta["tokenizer.ggml.add_bos_token"] is (family == "llama")  # the llama flavour adds BOS on encode
    assert meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.chat_template"] == tokenizer_config["chat_template"]


def test_name_and_generation_config(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    sampling = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.1}
    folder = variant(
        tmp_path, tiny_checkpoints["qwen2"], edit=edit_json("generation_config.json", lambda g: g.update(sampling))
    )
    meta = fields(export_gguf(folder, tmp_path / "a.gguf", name="Tiny Qwen2"))
    assert meta["general.name"] == "Tiny Qwen2"
    got = {key: meta[f"general.sampling.{key}"] for key in ("temp", "top_k", "top_p", "penalty_repeat")}
    assert got == pytest.approx({"temp": 0.7, "top_k": 20, "top_p": 0.9, "penalty_repeat": 1.1})
    edit_json("generation_config.json", lambda g: g.update(do_sample=False))(folder)  # greedy: no defaults
    assert not any("sampling" in key for key in fields(export_gguf(folder, tmp_path / "b.gguf")))
    (folder / "generation_config.json").unlink()  # optional
    assert not any("sampling" in key for key in fields(export_gguf(folder, tmp_path / "c.gguf")))


def test_named_chat_templates(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    def add_templates(folder: Path) -> None:
        (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
        (folder / "additional_chat_templates").mkdir()
        (folder / "additional_chat_templates" / "tool_use.jinja").write_text("tools: {{ tools }}")

    meta = fields(export_gguf(variant(tmp_path, tiny_checkpoints["qwen2"], edit=add_templates), tmp_path / "t.gguf"))
    assert meta["tokenizer.chat_template"] == "{{ messages[0]['content'] }}"  # the files win over the config's
    assert meta["tokenizer.chat_template.tool_use"] == "tools: {{ tools }}"
    assert meta["tokenizer.chat_templates"] == ["tool_use"]


# ------------------------------------------------------------------------------------------ round trips

TEXT = "The quick brown fox jumps over the lazy dog. <|im_end|> 42"


@pytest.mark.parametrize("gguf_type", [t for t in GGUF_TYPES if not FILE_TYPES_ALL[t].needs_imatrix])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_import_gives_the_same_logits(
    imported: Callable[..., Path], tiny_checkpoints: dict[str, Path], family: str, gguf_type: str
) -> None:
    source = tiny_checkpoints[family]
    ids = AutoTokenizer.from_pretrained(source)(TEXT)["input_ids"]
    assert AutoTokenizer.from_pretrained(imported(family, gguf_type))(TEXT)["input_ids"] == ids
    before, after = logits(source, ids), logits(imported(family, gguf_type), ids)
    assert torch.isfinite(after).all()
    error = (after - before).abs().max().item()
    agree = (after.argmax(-1) == before.argmax(-1)).float().mean().item()
    scale = before.abs().max().item()
    print(f"{family} {gguf_type}: max |logit error| {error:.4f} (logits up to {scale:.2f}), top-1 {agree:.0%}")
    # f32 stores the exact weights. f16 rounds each weight to 11 significant bits (rms relative error 2^-11/sqrt(3)
    # = 2.8e-4); through 2 layers of width 64-128 to logits of magnitude ~3.4 that gave 2.5e-3 and 3.3e-3: bound 2e-2.
    # bf16 keeps 8 bits (8x f16's error; 0.03-0.04 seen): 0.1. Q8_0 rounds to 1/127 of each 32-weight block's absmax
    # (~2.5 sigma for these Gaussian weights: rms relative error 2.5/127/sqrt(12) = 0.6%, ~20x f16; 0.08-0.10 seen):
    # 0.25. Q4_0 (steps of 1/8 of the absmax) is only checked finite; its top-1 agreement is printed (57-67%).
    bound = {"f32": 1e-4, "f16": 2e-2, "bf16": 0.1, "q8_0": 0.25}
    if gguf_type in bound:
        assert error < bound[gguf_type]


@pytest.fixture(scope="module")
def llama_without_scaling(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> Path:
    """The tiny llama without RoPE scaling (transformers' GGUF loader ignores rope_freqs)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    return variant(tmp_path_factory.mktemp("plain"), tiny_checkpoints["llama"], {"rope_parameters": rope})


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_transformers_gguf_loader_reads_our_f16(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], llama_without_scaling: Path, family: str
) -> None:
    source = llama_without_scaling if family == "llama" else tiny_checkpoints[family]
    path = export_gguf(source, tmp_path / "model.gguf")
    ours = convert_gguf_to_hf(path, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(source)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in SENTENCES:
        assert theirs(text)["input_ids"] == tokenizer(text)["input_ids"], text
    ids = tokenizer(TEXT)["input_ids"]
    # both dequantize the same F16 bytes and undo the same permutation: equal up to float32 summation order
    torch.testing.assert_close(logits(tmp_path, ids, gguf_file=path.name), logits(ours, ids), rtol=1e-5, atol=1e-5)


def test_transformers_gguf_loader_and_llama3_scaling(exported: Callable[..., Path]) -> None:
    # transformers' GGUF loader drops rope_freqs, so only position 0 (where RoPE rotates by 0) agrees with ours
    path = exported("llama", "f16")
    ids = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)(TEXT)["input_ids"]
    theirs = logits(path.parent, ids, gguf_file=path.name)
    ours = logits(convert_gguf_to_hf(path, path.parent / "llama3-import"), ids)
    torch.testing.assert_close(theirs[0], ours[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(theirs[1:], ours[1:], atol=1e-3)


def test_mistral_without_sliding_window_exports_as_llama(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    source = variant(tmp_path, tiny_checkpoints["mistral"], {"sliding_window": None})
    path = export_gguf(source, tmp_path / "mistral.gguf", gguf_type="f32")
    assert fields(path)["general.architecture"] == "llama"  # llama.cpp converts Mistral with its Llama code
    ids = AutoTokenizer.from_pretrained(source)(TEXT)["input_ids"]
    imported = convert_gguf_to_hf(path, tmp_path / "hf")
    torch.testing.assert_close(logits(imported, ids), logits(source, ids), rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_and_old_rotary_buffers(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    tensors = st_format.load(tiny_checkpoints["qwen2"])
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints carry it
    folder = variant(tmp_path, tiny_checkpoints["qwen2"], edit=lambda f: (f / "model.safetensors").unlink())
    assert len(st_format.save(tensors, folder, max_shard_size="100KB")) > 2
    sharded = export_gguf(folder, tmp_path / "sharded.gguf", name="x")
    single = export_gguf(tiny_checkpoints["qwen2"], tmp_path / "single.gguf", name="x")
    assert sharded.read_bytes() == single.read_bytes()  # the buffer is skipped, as llama.cpp skips it


def test_rows_off_the_block_size_fall_back_to_f16(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # hidden 48: every projection reading the hidden state has rows of 48 values, not a multiple of 32
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    folder = tmp_path / "odd"
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoints["llama"] / name, folder / name)
    with caplog.at_level(logging.WARNING, logger="aprender.format.gguf_export"):
        path = export_gguf(folder, tmp_path / "odd.gguf", gguf_type="q4_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == Q.Q4_0  # rows of intermediate_size = 64 values
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == Q.F16
    # one line per kind of fallback: the embedding and six projections (Q4_0 wanted), the head (Q8_0 wanted)
    assert [record.getMessage() for record in caplog.records] == [
        "token_embd.weight and 6 more: rows of 48 values are not a multiple of the Q4_0 block size 32; stored as F16 "
        "(as llama.cpp does)",
        "output.weight: rows of 48 values are not a multiple of the Q8_0 block size 32; stored as F16 (as llama.cpp "
        "does)",
    ]
    ids = AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]
    assert torch.isfinite(logits(convert_gguf_to_hf(path, tmp_path / "hf"), ids)).all()


# ------------------------------------------------------------------------------------------ RoPE scaling


@pytest.mark.parametrize(
    ("family", "rope", "keys"),
    [
        ("llama", {"rope_type": "linear", "factor": 2.0}, {"type": "linear", "factor": 2.0}),
        (
            "qwen2",
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 16.0},
            {"type": "yarn", "factor": 4.0, "original_context_length": 128, "yarn_beta_fast": 16.0},
        ),
    ],
)
def test_rope_scaling_keys_round_trip(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], family: str, rope: dict[str, Any], keys: dict[str, Any]
) -> None:
    source = variant(tmp_path, tiny_checkpoints[family], {"rope_parameters": {"rope_theta": 5000.0, **rope}})
    path = export_gguf(source, tmp_path / "m.gguf", gguf_type="f32")
    meta = fields(path)
    assert {key: meta[f"{family}.rope.scaling.{key}"] for key in keys} == keys
    assert meta[f"{family}.rope.freq_base"] == 5000.0
    ids = AutoTokenizer.from_pretrained(source)(TEXT)["input_ids"]
    imported = convert_gguf_to_hf(path, tmp_path / "hf")
    torch.testing.assert_close(logits(imported, ids), logits(source, ids), rtol=1e-5, atol=1e-5)


def test_older_rope_keys(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    # transformers 4 configs: rope_theta + rope_scaling with "type" instead of rope_parameters
    old = {"rope_parameters": None, "rope_theta": 20000.0, "rope_scaling": {"type": "linear", "factor": 3.0}}
    meta = fields(export_gguf(variant(tmp_path, tiny_checkpoints["qwen2"], old), tmp_path / "m.gguf"))
    assert meta["qwen2.rope.freq_base"] == 20000.0
    assert (meta["qwen2.rope.scaling.type"], meta["qwen2.rope.scaling.factor"]) == ("linear", 3.0)


def test_llama3_scaling_recovered_by_the_importer() -> None:
    # transformers' llama3 inverse frequencies (the oracle) for an original context of 128, not llama.cpp's 8192
    scaling = {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 128}
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, rope_theta=10000.0, rope_scaling={"rope_type": "llama3", **scaling}
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    default = 1.0 / 10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    divisors = llama3_rope_divisors(16, 10000.0, 4.0, 1.0, 4.0, 128)
    torch.testing.assert_close(divisors, default / scaled.double(), rtol=1e-6, atol=0.0)
    assert llama3_rope_scaling(divisors.float(), 16, 10000.0) == {"rope_type": "llama3", **scaling}
    # head_dim 4, theta 1e7: wavelengths 6.3 and 19869, none between 8192/4 and 8192, so no divisor lies strictly
    # between 1 and the factor: llama.cpp's default context 8192 is assumed, and it reproduces transformers' values
    wide = {**scaling, "factor": 8.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(
        hidden_size=8, num_attention_heads=2, rope_theta=1e7, rope_scaling={"rope_type": "llama3", **wide}
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    divisors = (1.0 / 1e7 ** (torch.arange(0, 4, 2, dtype=torch.float32) / 4)) / scaled
    torch.testing.assert_close(divisors, torch.tensor([1.0, 8.0]))
    assert llama3_rope_scaling(divisors, 4, 1e7) == {"rope_type": "llama3", **wide}
    with pytest.raises(ConversionError, match="original context 8192"):  # a step no context explains
        llama3_rope_scaling(torch.tensor([1.0] * 6 + [8.0] * 10), 32, 10000.0)


# ------------------------------------------------------------------------------------------ SentencePiece


def llamacpp_spm_encode(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm): start from characters, repeatedly merge the
    adjacent pair whose joined piece is in the vocabulary with the highest score (leftmost on ties); pieces
    left unknown become their UTF-8 bytes <0xNN>. Rewritten here from llama-vocab.cpp as the oracle."""
    vocab = {token: i for i, token in enumerate(tokens)}
    symbols = list("▁" + text.replace(" ", "▁"))
    while True:
        best: tuple[float, int] | None = None
        for i in range(len(symbols) - 1):
            joined = symbols[i] + symbols[i + 1]
            if joined in vocab and (best is None or scores[vocab[joined]] > best[0]):
                best = (scores[vocab[joined]], i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    ids: list[int] = []
    for symbol in symbols:
        ids += [vocab[symbol]] if symbol in vocab else [vocab[f"<0x{b:02X}>"] for b in symbol.encode()]
    return ids


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with the SentencePiece vocabulary (600 pieces) and 8 spare embedding rows."""
    folder = tmp_path_factory.mktemp("spm")
    vocab = sentencepiece_vocab()
    save_gguf_tokenizer({**vocab.metadata(), "tokenizer.chat_template": CHAT_TEMPLATE}, folder)
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(vocab.tokens) + 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=vocab.bos,
        eos_token_id=vocab.eos,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_sentencepiece_vocabulary(tmp_path: Path, spm_model: Path) -> None:
    import sentencepiece

    vocab = sentencepiece_vocab()
    path = export_gguf(spm_model, tmp_path / "spm.gguf")
    meta = fields(path)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("llama", "default")
    assert meta["tokenizer.ggml.add_space_prefix"] is True and meta["tokenizer.ggml.add_bos_token"] is True
    # the pieces and sentencepiece's own types (normal, unknown, control, user-defined, byte), then padding rows
    assert meta["tokenizer.ggml.tokens"] == [*vocab.tokens, *(f"[PAD{i}]" for i in range(600, 608))]
    assert meta["tokenizer.ggml.token_type"] == [*vocab.types, *[5] * 8]
    ids = (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"])
    assert ids == (vocab.bos, vocab.eos) and meta["tokenizer.ggml.unknown_token_id"] == vocab.unk
    processor = sentencepiece.SentencePieceProcessor(model_proto=vocab.sentencepiece_model)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    imported = AutoTokenizer.from_pretrained(convert_gguf_to_hf(path, tmp_path / "hf"))
    for text in [s for s in SENTENCES if "<|" not in s]:
        expected = processor.encode(text)
        # llama.cpp merges by score: the exported scores make it follow the merge list
        assert llamacpp_spm_encode(text, meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]) == expected
        assert reference(text)["input_ids"] == imported(text)["input_ids"] == [vocab.bos, *expected], text


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}}, True),
        (
            {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": False}},
            False,
        ),
        (  # Llama 2's legacy tokenizer.json
            {
                "normalizer": {
                    "type": "Sequence",
                    "normalizers": [
                        {"type": "Prepend", "prepend": "▁"},
                        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
                    ],
                }
            },
            True,
        ),
        ({"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}}, False),
    ],
)
def test_sentencepiece_space_prefix(document: dict[str, Any], expected: bool) -> None:
    assert gguf_export._space_prefix(document) is expected


def test_sentencepiece_space_prefix_rejects_others() -> None:
    with pytest.raises(ConversionError, match="Metaspace"):
        gguf_export._space_prefix({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "split": True}})
    with pytest.raises(ConversionError, match="Metaspace"):
        gguf_export._space_prefix({"normalizer": {"type": "NFKC"}})


# ------------------------------------------------------------------------------------------ names, rows


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tensor_names_agree_with_the_gguf_package(family: str) -> None:
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.upper()], 4)
    names = [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        *(f"model.layers.3.{part}.weight" for part in ("input_layernorm", "post_attention_layernorm")),
        *(f"model.layers.3.self_attn.{p}_proj.{s}" for p in "qkvo" for s in ("weight", "bias")),
        *(f"model.layers.3.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    ]
    for name in names:
        assert gguf_tensor_name(name) == table.get_name(name, try_suffixes=(".weight", ".bias")), name
        assert hf_tensor_name(gguf_tensor_name(name)) == name


@pytest.mark.parametrize(
    "name", ["model.norm.bias", "model.layers.0.input_layernorm.bias", "model.layers.0.self_attn.q_norm.weight", "x"]
)
def test_unknown_tensor_names(name: str) -> None:
    with pytest.raises(ConversionError, match=r"has no llama\.cpp counterpart"):
        gguf_tensor_name(name)


@settings(max_examples=60, deadline=None)
@given(heads=st.integers(1, 6), half=st.integers(1, 8), cols=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_permute_rope_rows_is_llamacpps_permute(heads: int, half: int, cols: int, seed: int) -> None:
    shape = (heads * 2 * half, cols) if cols else (heads * 2 * half,)
    original = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    permuted = permute_rope_rows(torch.from_numpy(original), heads)
    np.testing.assert_array_equal(permuted.numpy(), llamacpp_permute(original, heads))
    assert torch.equal(unpermute_rope_rows(permuted, heads), torch.from_numpy(original))


def test_permute_rope_rows_by_hand_and_errors() -> None:
    # one head, head_dim 4: HF rows (a0, a1, b0, b1) are stored by llama.cpp as (a0, b0, a1, b1)
    assert permute_rope_rows(torch.tensor([10.0, 11.0, 20.0, 21.0]), 1).tolist() == [10.0, 20.0, 11.0, 21.0]
    with pytest.raises(ConversionError, match="cannot split 6 rows"):
        permute_rope_rows(torch.zeros(6, 2), 2)


# ------------------------------------------------------------------------------------------ errors


def test_unsupported_model_types(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(
        ConversionError, match=r"model_type 'qwen3' cannot be exported to GGUF; supported: llama, mistral, qwen2"
    ):
        export_gguf(tiny_checkpoints["qwen3"], tmp_path / "q3.gguf")
    with pytest.raises(ConversionError, match="sliding_window 16 is active"):
        export_gguf(tiny_checkpoints["mistral"], tmp_path / "m.gguf")
    assert SUPPORTED_MODEL_TYPES == ("llama", "mistral", "qwen2")
    assert not list(tmp_path.iterdir())


def test_bad_gguf_type(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgumentError, match="GGUF type 'q4_k' is not supported; use one of f32, f16"):
        export_gguf(tiny_checkpoints["llama"], tmp_path / "x.gguf", gguf_type="q4_k")


def _set_regex(document: dict[str, Any]) -> None:
    document["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"


CONFIG_ERRORS = [
    ({"hidden_act": "gelu"}, None, "hidden_act 'gelu' is not supported"),
    ({"hidden_size": None}, None, "config.json has no 'hidden_size'"),
    ({"head_dim": 15}, None, "config.json head_dim 15 is odd"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, None, "RoPE scaling 'dynamic' cannot be exported"),
    ({"rope_parameters": {"rope_type": "linear"}}, None, "config.json has no 'factor'"),
    ({"partial_rotary_factor": 0.5}, None, "partial_rotary_factor 0.5 is not supported"),
    ({"use_sliding_window": True, "sliding_window": 8}, None, "sliding_window 8 is active"),
    ({"vocab_size": 1000}, None, r"has id 10\d\d, but the model's embedding has 1000 rows"),
    ({"num_hidden_layers": 3}, None, r"lacks \['blk.2.attn_k.bias'"),
    ({"num_hidden_layers": 1}, None, r"has tensors beyond config.json: \['blk.1"),
    (
        {"intermediate_size": 96},
        None,
        r"model.layers.0.mlp.down_proj.weight has shape \[64, 128\]; config.json implies \[64, 96\]",
    ),
    (
        {"pad_token_id": 5000},
        edit_json("tokenizer_config.json", lambda c: c.update(pad_token=None)),
        "pad_token_id 5000",
    ),
    ({}, edit_json("tokenizer.json", _set_regex), r"splits \['\\\\p\{L\}\+\|\\\\s\+'\]"),
    ({}, edit_json("tokenizer.json", lambda d: d.update(normalizer={"type": "NFKC"})), "normalizer 'NFKC'"),
    ({}, lambda f: (f / "config.json").write_text("[1]"), "expected a JSON object"),
    ({}, lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    ({}, lambda f: (f / "config.json").unlink(), "config.json: file not found"),
]


@pytest.mark.parametrize(("config", "edit", "message"), CONFIG_ERRORS)
def test_conversion_errors(
    tmp_path: Path,
    tiny_checkpoints: dict[str, Path],
    config: dict[str, Any],
    edit: Callable[[Path], None] | None,
    message: str,
) -> None:
    folder = variant(tmp_path, tiny_checkpoints["qwen2"], config, edit)
    with pytest.raises(ConversionError, match=message):
        export_gguf(folder, tmp_path / "out" / "model.gguf")
    assert not (tmp_path / "out").exists()  # nothing written before everything is checked


def test_tokenizer_models_gguf_cannot_hold() -> None:
    with pytest.raises(ConversionError, match=r"tokenizer\.json model 'WordPiece' is not supported"):
        gguf_export._vocab({"model": {"type": "WordPiece", "vocab": {"a": 0}}})
    # a merge of tokens with spaces (transformers' list form allows it); GGUF's "left right" strings cannot
    assert gguf_export._merges({"model": {"merges": [["a", "b"], "c d"]}}) == ["a b", "c d"]
    with pytest.raises(ConversionError, match=r"merge \['a b', 'c'\] holds a space"):
        gguf_export._merges({"model": {"merges": [["a b", "c"]]}})


def test_llama_specific_checks(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    scaling = {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e6}}
    with pytest.raises(
        ConversionError, match=r"RoPE scaling 'llama3' cannot be exported for qwen2; supported: linear, yarn$"
    ):
        export_gguf(variant(tmp_path, tiny_checkpoints["qwen2"], scaling), tmp_path / "a.gguf")
    untied = variant(tmp_path / "b", tiny_checkpoints["llama"], {"tie_word_embeddings": False})
    with pytest.raises(ConversionError, match=r"lacks \['output.weight'\]"):
        export_gguf(untied, tmp_path / "b.gguf")


def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"previous export")
    encode, calls = gguf_export.quantize_rows, []

    def failing(values: torch.Tensor, qtype: Any, imatrix: torch.Tensor | None = None) -> np.ndarray:
        calls.append(qtype)
        if len(calls) == 3:
            raise OSError("disk full")
        return encode(values, qtype, imatrix)

    monkeypatch.setattr(gguf_export, "quantize_rows", failing)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_checkpoints["qwen2"], target, gguf_type="q8_0")
    assert len(calls) == 3  # two tensors were already written to the temp file
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no temp file left behind


# ------------------------------------------------------------------------------------------ SmolLM2 (real)


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory: pytest.TempPathFactory, smollm2_hf_dir: Path) -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct exported to f16 and imported back: (gguf path, imported folder)."""
    folder = tmp_path_factory.mktemp("smollm2")
    path = export_gguf(smollm2_hf_dir, folder / "smollm2.f16.gguf")
    return path, convert_gguf_to_hf(path, folder / "hf")


@pytest.mark.slow
def test_smollm2_gguf_contents(smollm2_export: tuple[Path, Path], smollm2_hf_dir: Path) -> None:
    path, _ = smollm2_export
    reader = gguf.GGUFReader(path)
    # 30 blocks x 9 tensors + token_embd + output_norm; tied, so no output.weight
    assert len(reader.tensors) == 272 and "output.weight" not in {t.name for t in reader.tensors}
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 1} == {Q.F32}
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 2} == {Q.F16}
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}
    expected = {
        "llama.block_count": 30,
        "llama.embedding_length": 576,
        "llama.feed_forward_length": 1536,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
        "llama.context_length": 8192,
        "llama.rope.freq_base": 100000.0,
        "llama.rope.dimension_count": 64,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    assert {key: meta[key] for key in expected} == expected
    config = json.loads((smollm2_hf_dir / "tokenizer_config.json").read_text())
    assert meta["tokenizer.chat_template"] == config["chat_template"]


@pytest.mark.slow
def test_smollm2_still_says_paris(smollm2_export: tuple[Path, Path]) -> None:
    torch.set_num_threads(2)
    _, imported = smollm2_export
    tokenizer = AutoTokenizer.from_pretrained(imported)
    ids = tokenizer("The capital of France is")["input_ids"]
    assert tokenizer.decode([int(logits(imported, ids)[-1].argmax())]) == " Paris"


@pytest.mark.slow
def test_smollm2_transformers_gguf_loader(smollm2_export: tuple[Path, Path], smollm2_hf_dir: Path) -> None:
    torch.set_num_threads(2)
    path, imported = smollm2_export
    original = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # transformers' GGUF tokenizer knows no "smollm" split (it keeps GPT-2's, which groups digits): digit-free text
    for text in [s for s in SENTENCES if not any(c.isdigit() for c in s)]:
        assert theirs(text)["input_ids"] == original(text)["input_ids"], text
    ids = original("The capital of France is")["input_ids"]
    torch.testing.assert_close(
        logits(path.parent, ids, gguf_file=path.name), logits(imported, ids), rtol=1e-4, atol=1e-4
    )
