"""Hugging Face checkpoint -> GGUF file that llama.cpp-based runtimes load.

The forward direction of `aprender.format.convert`, doing what llama.cpp's `convert_hf_to_gguf.py` does
for `LlamaModel` / `Qwen2Model` (https://github.com/ggml-org/llama.cpp, GGUF spec:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

- Families: `llama` and `mistral` (GGUF architecture `llama`; Mistral only without an active sliding
  window, which the `llama` architecture has no key for) and `qwen2` (without sliding window).
- Names: the importer's GGUF -> HF table inverted (`gguf_tensor_name`); a tied `lm_head` is not written.
- RoPE rows (`llama` only): `q_proj`/`k_proj` rows are permuted into llama.cpp's interleaved order
  (`permute_rope_rows`). Llama 3 scaling becomes a `rope_freqs.weight` tensor of per-frequency divisors,
  linear and YaRN scaling become `{arch}.rope.scaling.*` keys.
- Types: a file type as llama-quantize names it (`q4_k_m`, `q8_0`, `f16`, ...: `gguf_mixtures.FILE_TYPES`).
  1-D tensors (norms, biases, `rope_freqs`) stay F32 as in llama.cpp; each 2-D weight takes the type
  llama-quantize's mixture gives it (`gguf_mixtures.tensor_types`: more bits for some value and FFN down
  projections and the output head, fallbacks for rows that blocks do not divide, logged as warnings). The
  blocks come from our own quantizers, byte-equal to llama.cpp's (`gguf_quantize.quantize_rows`), weighted by
  an importance matrix when one is given (llama-quantize's `--imatrix`).
- Tokenizer (`tokenizer.json`, `tokenizer_config.json`): a byte-level BPE becomes `tokenizer.ggml.model`
  "gpt2" with its merges and the `tokenizer.ggml.pre` name llama.cpp's converter gives it
  (`llama_cpp_pre.identify_pre_tokenizer`: by the hash of its ids for a fixed text); a BPE with byte
  fallback becomes "llama" (SentencePiece) with scores that rank each piece by the merge that makes it,
  so llama.cpp's score-greedy merging follows the merge list. Token types follow llama.cpp: added special
  (or `<|...|>`) tokens CONTROL, other added tokens USER_DEFINED,
  `<0xNN>` BYTE and the unknown token UNKNOWN (SentencePiece), ids without a token UNUSED `[PADn]`.
  GGUF has no place for a normalizer: NFC (Qwen2's) is dropped as llama.cpp drops it, others are refused.
- Sampling defaults of a `generation_config.json` with `do_sample: true` become `general.sampling.*`.

The file is written through `aprender.atomic` (a temp file renamed over `out_path`), one tensor at a time:
all metadata and shapes are checked first, then each tensor is read, permuted, quantized and written, so
memory holds about one tensor.

Example:
    >>> export_gguf("smollm2-hf", "smollm2.Q8_0.gguf", gguf_type="q8_0")  # doctest: +SKIP
    PosixPath('smollm2.Q8_0.gguf')
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gguf
import numpy as np
import torch

from aprender.atomic import atomic_write
from aprender.errors import ConversionError, InvalidArgumentError
from aprender.format.convert import (
    _GLOBAL_TENSORS,
    _LINEARS,
    _NORMS,
    _YARN_OPTIONS,
    hf_tensor_name,
    llama3_rope_divisors,
    permute_rope_rows,
)
from aprender.format.gguf_mixtures import FILE_TYPES, FileType, ModelShape, file_type, tensor_types
from aprender.format.gguf_quantize import quantize_rows, row_bytes
from aprender.format.llama_cpp_pre import identify_pre_tokenizer
from aprender.format.safetensors import CheckpointReader, open_checkpoint
from aprender.text import Tokenizer

__all__ = ["GGUF_TYPES", "SUPPORTED_MODEL_TYPES", "export_gguf", "export_tensor_types", "gguf_tensor_name"]

_LOG = logging.getLogger(__name__)
_Q = gguf.GGMLQuantizationType
GGUF_TYPES = tuple(FILE_TYPES)
"""The file types `export_gguf` writes (lower case, as users type them)."""
# HF model_type -> GGUF architecture (llama.cpp converts Mistral with its Llama code).
_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
SUPPORTED_MODEL_TYPES = tuple(_ARCHITECTURES)

# The importer's tables (GGUF -> HF), inverted.
_HF_GLOBAL = {f"{hf}.weight": f"{name}.weight" for name, hf in _GLOBAL_TENSORS.items()}
_HF_ROLES = {hf: name for name, hf in (_LINEARS | _NORMS).items()}
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"
# Buffers old checkpoints carry that llama.cpp recomputes from the config.
_SKIPPED_SUFFIX = ".rotary_emb.inv_freq"

_T = gguf.TokenType
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = (
    int(t) for t in (_T.NORMAL, _T.UNKNOWN, _T.CONTROL, _T.USER_DEFINED, _T.UNUSED, _T.BYTE)
)
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPECIAL_NAMES = (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unk_token_id"), ("pad", "pad_token_id"))
_SAMPLING = {
    "temperature": (gguf.Keys.General.SAMPLING_TEMP, float),
    "top_k": (gguf.Keys.General.SAMPLING_TOP_K, int),
    "top_p": (gguf.Keys.General.SAMPLING_TOP_P, float),
    "min_p": (gguf.Keys.General.SAMPLING_MIN_P, float),
    "repetition_penalty": (gguf.Keys.General.SAMPLING_PENALTY_REPEAT, float),
}


@dataclass(frozen=True)
class _Spec:
    """The model hyper-parameters a GGUF file states, read from config.json."""

    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    context: int
    eps: float
    theta: float
    scaling: dict[str, Any] | None
    vocab: int
    tied: bool


@dataclass(frozen=True)
class _Vocab:
    """The `tokenizer.ggml.*` content."""

    model: str
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str]
    add_space_prefix: bool | None
    ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str | dict[str, str] | None


@dataclass(frozen=True)
class _Planned:
    """One output tensor: its GGUF name, torch-order shape, type, how to get its float32 values, and the
    importance of its columns (None: the reference quantizer)."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]
    imatrix: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------ names


def gguf_tensor_name(hf_name: str) -> str:
    """Map a Hugging Face Llama/Mistral/Qwen2 tensor name to its llama.cpp name.

    Args:
        hf_name: e.g. `"model.layers.3.self_attn.q_proj.weight"`, `"lm_head.weight"`.

    Returns:
        e.g. `"blk.3.attn_q.weight"`, `"output.weight"` (the inverse of `convert.hf_tensor_name`).

    Raises:
        ConversionError: a tensor the llama.cpp layout has no place for.
    """
    candidate = _HF_GLOBAL.get(hf_name)
    match = _HF_BLOCK.fullmatch(hf_name)
    if candidate is None and match and match[2] in _HF_ROLES:
        candidate = f"blk.{match[1]}.{_HF_ROLES[match[2]]}.{match[3]}"
    try:
        if candidate is not None and hf_tensor_name(candidate) == hf_name:
            return candidate
    except ConversionError:
        pass  # e.g. a norm bias: named, but not something the layout holds
    raise ConversionError(
        f"checkpoint tensor {hf_name!r} has no llama.cpp counterpart; this model is not supported "
        f"(supported model types: {', '.join(SUPPORTED_MODEL_TYPES)})"
    )


# ----------------------------------------------------------------------------------------------- config


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConversionError(f"{path}: file not found; export needs a Hugging Face model folder")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err}); fix or re-save the file") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object at the top level")
    return data


def _key(config: Mapping[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise ConversionError(f"config.json has no {key!r}; add it or re-save the model with transformers")
    return config[key]


def _architecture(config: Mapping[str, Any]) -> str:
    model_type = config.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ConversionError(
            f"config.json model_type {model_type!r} cannot be exported to GGUF; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json hidden_act {config['hidden_act']!r} is not supported; GGUF needs silu")
    window: int | None = config.get("sliding_window")
    active = window is not None and config.get("use_sliding_window", True)
    if active and window is not None and window < int(_key(config, "max_position_embeddings")):
        raise ConversionError(
            f"config.json sliding_window {window} is active; llama.cpp's {_ARCHITECTURES[model_type]} "
            f"architecture has no sliding window, so this model cannot be exported"
        )
    return _ARCHITECTURES[model_type]


def _rope(config: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling or None) from transformers 5's `rope_parameters` or the older keys."""
    params = config.get("rope_parameters")
    if not isinstance(params, Mapping):
        params = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    rotary = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise ConversionError(f"config.json partial_rotary_factor {rotary} is not supported; GGUF export needs 1.0")
    return theta, None if kind == "default" else {**params, "rope_type": kind}


def _model_spec(config: Mapping[str, Any], keys: Sequence[str]) -> _Spec:
    arch = _architecture(config)
    hidden, heads = int(_key(config, "hidden_size")), int(_key(config, "num_attention_heads"))
    theta, scaling = _rope(config)
    head_dim = int(config.get("head_dim") or hidden // heads)
    if head_dim % 2:
        raise ConversionError(f"config.json head_dim {head_dim} is odd; RoPE needs an even head size")
    return _Spec(
        arch=arch,
        hidden=hidden,
        layers=int(_key(config, "num_hidden_layers")),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        ffn=int(_key(config, "intermediate_size")),
        context=int(_key(config, "max_position_embeddings")),
        eps=float(_key(config, "rms_norm_eps")),
        theta=theta,
        scaling=scaling,
        vocab=int(_key(config, "vocab_size")),
        tied=bool(config.get("tie_word_embeddings", "lm_head.weight" not in keys)),
    )


def _add_model_metadata(writer: gguf.GGUFWriter, spec: _Spec, file_type: int, name: str) -> None:
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(spec.vocab)
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.theta)
    writer.add_layer_norm_rms_eps(spec.eps)


def _add_rope_scaling(writer: gguf.GGUFWriter, spec: _Spec) -> np.ndarray | None:
    """Write linear/YaRN scaling keys; return Llama 3 `rope_freqs` divisors (head_dim/2,) or None."""
    scaling = spec.scaling
    if scaling is None:
        return None
    kind = scaling["rope_type"]
    if kind == "llama3" and spec.arch == "llama":  # llama.cpp's defaults for absent keys
        divisors = llama3_rope_divisors(
            spec.head_dim,
            spec.theta,
            float(scaling.get("factor", 8.0)),
            float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
            int(scaling.get("original_max_position_embeddings", 8192)),
        )
        values: np.ndarray = divisors.float().numpy()
        return values
    if kind not in ("linear", "yarn"):
        raise ConversionError(
            f"config.json RoPE scaling {kind!r} cannot be exported for {spec.arch}; supported: linear, yarn"
            + (", llama3" if spec.arch == "llama" else "")
        )
    writer.add_rope_scaling_type(gguf.RopeScalingType(kind))
    writer.add_rope_scaling_factor(float(_key(scaling, "factor")))
    if kind == "yarn":
        writer.add_rope_scaling_orig_ctx_len(int(_key(scaling, "original_max_position_embeddings")))
        for gguf_key, hf_key in _YARN_OPTIONS.items():
            if scaling.get(hf_key) is not None:
                writer.add_float32(f"{spec.arch}.rope.scaling.{gguf_key}", float(scaling[hf_key]))
    return None


def _add_sampling(writer: gguf.GGUFWriter, generation: Mapping[str, Any]) -> None:
    """Sampling defaults of a sampling generation config (greedy ones ignore them, so do we)."""
    if not generation.get("do_sample"):
        return
    for hf_key, (gguf_key, kind) in _SAMPLING.items():
        if generation.get(hf_key) is not None:
            (writer.add_int32 if kind is int else writer.add_float32)(gguf_key, kind(generation[hf_key]))


# ---------------------------------------------------------------------------------------------- tensors


def _expected_names(spec: _Spec) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"} | (set() if spec.tied else {"output.weight"})
    roles = [*_NORMS, *_LINEARS]
    for block in range(spec.layers):
        names |= {f"blk.{block}.{role}.weight" for role in roles}
        if spec.arch == "qwen2":
            names |= {f"blk.{block}.{role}.bias" for role in ("attn_q", "attn_k", "attn_v")}
    return names


def _expected_shape(name: str, spec: _Spec) -> tuple[int, ...]:
    """The torch-order shape config.json implies for a GGUF tensor name."""
    stem, suffix = name.rsplit(".", 1)
    role = stem.rsplit(".", 1)[-1]
    if role in ("token_embd", "output"):
        return (spec.vocab, spec.hidden)
    if role in _NORMS or role == "output_norm":
        return (spec.hidden,)
    q, kv = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    rows = {"attn_q": q, "attn_k": kv, "attn_v": kv, "ffn_gate": spec.ffn, "ffn_up": spec.ffn}.get(role, spec.hidden)
    columns = {"attn_output": q, "ffn_down": spec.ffn}.get(role, spec.hidden)
    return (rows,) if suffix == "bias" else (rows, columns)


def _sources(reader: CheckpointReader, spec: _Spec) -> tuple[dict[str, str], list[str]]:
    """GGUF name -> checkpoint name of every tensor written, checked against config.json, and the GGUF names in
    file order."""
    sources: dict[str, str] = {}
    for hf_name in list(reader.keys()):
        if hf_name.endswith(_SKIPPED_SUFFIX) or (hf_name == "lm_head.weight" and spec.tied):
            continue
        sources[gguf_tensor_name(hf_name)] = hf_name
    expected = _expected_names(spec)
    missing, extra = sorted(expected - set(sources)), sorted(n for n in sources if not _allowed(n, expected, spec))
    if missing or extra:
        problem = f"lacks {missing[:4]}" if missing else f"has tensors beyond config.json: {extra[:4]}"
        raise ConversionError(f"checkpoint {problem}; it does not match its config.json")
    return sources, sorted(sources, key=_tensor_order)


def _plan_tensors(
    reader: CheckpointReader, spec: _Spec, kind: FileType, imatrix: Mapping[str, torch.Tensor] | None
) -> list[_Planned]:
    """Every output tensor in order, with names, shapes and types checked before anything is written."""
    sources, order = _sources(reader, spec)
    shapes = {name: reader.shape(hf) for name, hf in sources.items()}
    heads = {"attn_q": spec.heads, "attn_k": spec.kv_heads} if spec.arch == "llama" else {}
    types = _tensor_types(order, shapes, spec, kind, has_imatrix=imatrix is not None)
    planned = []
    for name, qtype in zip(order, types, strict=True):
        if tuple(shapes[name]) != _expected_shape(name, spec):
            raise ConversionError(
                f"checkpoint tensor {sources[name]} has shape {list(shapes[name])}; "
                f"config.json implies {list(_expected_shape(name, spec))}"
            )
        role = name.split(".")[2] if name.startswith("blk.") else ""
        load = _loader(reader, sources[name], heads.get(role))
        importance = None if imatrix is None or qtype in _UNQUANTIZED else imatrix.get(name)
        planned.append(_Planned(name, shapes[name], qtype, load, importance))
    return planned


_UNQUANTIZED = (_Q.F32, _Q.F16, _Q.BF16)


def _tensor_types(
    names: Sequence[str],
    shapes: Mapping[str, Sequence[int]],
    spec: _Spec,
    kind: FileType,
    *,
    has_imatrix: bool,
    log: bool = True,
) -> list[gguf.GGMLQuantizationType]:
    """llama-quantize's type for each tensor (1-D ones F32); with `log`, fallbacks for rows blocks do not divide are
    logged, one line per kind of fallback naming the first tensor and how many."""
    listed = [(name, tuple(shapes[name])) for name in names]
    shape = ModelShape(spec.arch, spec.layers, spec.heads, spec.kv_heads)
    chosen = tensor_types(listed, kind, shape, has_imatrix=has_imatrix)
    if not log:
        return [_Q.F32 if qtype is None else qtype for qtype in chosen]
    wanted = tensor_types(listed, kind, shape, has_imatrix=has_imatrix, fallback=False)
    fallbacks: dict[tuple[int, gguf.GGMLQuantizationType, gguf.GGMLQuantizationType], list[str]] = {}
    for (name, dims), qtype, want in zip(listed, chosen, wanted, strict=True):
        if qtype != want and qtype is not None and want is not None:
            fallbacks.setdefault((dims[-1], want, qtype), []).append(name)
    for (row, want, got), fell in fallbacks.items():
        more = f" and {len(fell) - 1} more" if len(fell) > 1 else ""
        _LOG.warning(
            "%s%s: rows of %d values are not a multiple of the %s block size %d; stored as %s (as llama.cpp does)",
            fell[0],
            more,
            row,
            want.name,
            gguf.GGML_QUANT_SIZES[want][0],
            got.name,
        )
    return [_Q.F32 if qtype is None else qtype for qtype in chosen]


def _allowed(name: str, expected: set[str], spec: _Spec) -> bool:
    """Expected tensors plus llama's optional projection biases, in blocks the config has."""
    if name in expected:
        return True
    block = name.split(".")[1] if name.startswith("blk.") else ""
    return spec.arch == "llama" and name.endswith(".bias") and block.isdigit() and int(block) < spec.layers


def _tensor_order(name: str) -> tuple[int, int, str]:
    parts = name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), name)
    return ({"token_embd": 0, "output_norm": 2, "output": 3}[parts[0]], 0, name)


def _loader(reader: CheckpointReader, hf_name: str, rope_heads: int | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        tensor = reader.get_tensor(hf_name).float()
        if rope_heads is not None:
            tensor = permute_rope_rows(tensor, rope_heads)
        values: np.ndarray = tensor.numpy()
        return values

    return load


def _nbytes(shape: Sequence[int], qtype: gguf.GGMLQuantizationType) -> int:
    return int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes(qtype, shape[-1])


# -------------------------------------------------------------------------------------------- tokenizer


def _space_prefix(document: Mapping[str, Any]) -> bool:
    """SentencePiece's dummy prefix from a Metaspace pre-tokenizer or Llama 2's Prepend+Replace normalizer."""
    pre, normalizer = document.get("pre_tokenizer") or {}, document.get("normalizer")
    metaspace = pre.get("type") == "Metaspace" and pre.get("replacement") == "▁" and not pre.get("split")
    if normalizer is None and metaspace:
        return bool(pre.get("prepend_scheme") in ("first", "always"))
    steps = normalizer.get("normalizers", [normalizer]) if normalizer is not None else []
    kinds = [(s.get("type"), s.get("prepend"), s.get("content")) for s in steps]
    if not pre and kinds in ([("Prepend", "▁", None), ("Replace", None, "▁")], [("Replace", None, "▁")]):
        return kinds[0][0] == "Prepend"
    raise ConversionError(
        "tokenizer.json of a byte-fallback BPE must use a Metaspace('▁', split=false) pre-tokenizer or "
        "Llama 2's Prepend/Replace('▁') normalizer; this one cannot be expressed in GGUF"
    )


def _merges(document: Mapping[str, Any]) -> list[str]:
    merges = []
    for merge in document["model"].get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if " " in left or " " in right:
            raise ConversionError(f"tokenizer.json merge {merge!r} holds a space; GGUF merges cannot express it")
        merges.append(f"{left} {right}")
    return merges


def _token_table(document: Mapping[str, Any], size: int, sentencepiece: bool) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp types for ids 0..size-1."""
    tokens: list[str | None] = [None] * size
    types = [_UNUSED] * size
    entries = [(i, t, _BYTE if sentencepiece and _BYTE_TOKEN.fullmatch(t) else _NORMAL) for t, i in _vocab(document)]
    for added in document["added_tokens"]:
        looks_special = added["content"].startswith("<|") and added["content"].endswith("|>")
        kind = _CONTROL if added["special"] or looks_special else _USER_DEFINED
        entries.append((added["id"], added["content"], kind))
    for index, token, kind in entries:
        if not 0 <= index < size:
            raise ConversionError(
                f"tokenizer.json token {token!r} has id {index}, but the model's embedding has {size} rows"
            )
        tokens[index], types[index] = token, kind
    return [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)], types


def _vocab(document: Mapping[str, Any]) -> list[tuple[str, int]]:
    model = document["model"]
    if model.get("type") != "BPE":
        raise ConversionError(f"tokenizer.json model {model.get('type')!r} is not supported; GGUF export needs BPE")
    return list(model["vocab"].items())


def _merge_scores(tokens: Sequence[str], merges: Sequence[str]) -> list[float]:
    """SentencePiece scores: -rank of the first merge making a piece; -len(merges) for the rest."""
    rank: dict[str, int] = {}
    for index, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), index)
    return [-float(rank.get(token, len(merges))) for token in tokens]


def _special_ids(tokenizer: Tokenizer, config: Mapping[str, Any], size: int) -> dict[str, int]:
    """bos/eos/unk/pad ids: the tokenizer's named tokens, else config.json's single ids (as llama.cpp)."""
    ids = {}
    for name, attribute in _SPECIAL_NAMES:
        value = getattr(tokenizer, attribute)
        value = config.get(attribute) if value is None else value
        if isinstance(value, int) and not 0 <= value < size:
            raise ConversionError(f"config.json {attribute} {value} is outside the vocabulary of {size} tokens")
        if isinstance(value, int):
            ids[name] = value
    return ids


def _gguf_vocab(folder: Path, config: Mapping[str, Any], size: int) -> _Vocab:
    tokenizer = Tokenizer.from_dir(folder)
    document = json.loads(tokenizer.backend.to_str())
    sentencepiece = bool(document["model"].get("byte_fallback"))
    if sentencepiece:
        pre, space_prefix = "default", _space_prefix(document)
    else:
        if document.get("normalizer") not in (None, {"type": "NFC"}):
            raise ConversionError(
                f"tokenizer.json normalizer {document['normalizer'].get('type')!r} has no GGUF equivalent; "
                f"only NFC (which llama.cpp leaves out, as for Qwen2) can be dropped"
            )
        pre, space_prefix = identify_pre_tokenizer(tokenizer), None
    tokens, types = _token_table(document, size, sentencepiece)
    merges = _merges(document)
    ids = _special_ids(tokenizer, config, size)
    if sentencepiece and "unk" in ids:
        types[ids["unk"]] = _UNKNOWN
    return _Vocab(
        model="llama" if sentencepiece else "gpt2",
        pre=pre,
        tokens=tokens,
        types=types,
        scores=_merge_scores(tokens, merges) if sentencepiece else None,
        merges=merges,
        add_space_prefix=space_prefix,
        ids=ids,
        add_bos=tokenizer.add_bos_token,
        add_eos=tokenizer.add_eos_token,
        chat_template=tokenizer.chat_template,
    )


def _add_vocab(writer: gguf.GGUFWriter, vocab: _Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id}
    adders["pad"] = writer.add_pad_token_id
    for name, token_id in vocab.ids.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    template = vocab.chat_template
    if isinstance(template, dict):
        writer.add_chat_template([{"name": name, "template": text} for name, text in template.items()])
    elif template is not None:
        writer.add_chat_template(template)


# ----------------------------------------------------------------------------------------------- export


def _write(writer: gguf.GGUFWriter, planned: Sequence[_Planned], stream: IO[bytes]) -> None:
    """Header, metadata, tensor infos, then each tensor: loaded, encoded, written, dropped."""
    # GGUFWriter opens files by path: it writes the temp file `atomic_write` created (and later fsyncs).
    writer.open_output_file(Path(stream.name))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in planned:
            writer.write_tensor_data(quantize_rows(torch.from_numpy(tensor.load()), tensor.qtype, tensor.imatrix))
    finally:
        writer.close()


def export_tensor_types(
    model_dir: str | os.PathLike[str], gguf_type: str, *, has_imatrix: bool = False
) -> dict[str, gguf.GGMLQuantizationType]:
    """The type `export_gguf` gives each checkpoint tensor of `model_dir` for file type `gguf_type`: llama-quantize's
    mixture and fallbacks (quantization-aware training trains each weight for its type).

    Args:
        model_dir: The Hugging Face model folder (its config.json and the tensors' names and shapes are read).
        gguf_type: A file type, as `export_gguf` takes it.
        has_imatrix: The file will be written with an importance matrix (changes a few mixtures).

    Returns:
        Checkpoint tensor name -> GGML type (F32 for 1-D tensors; a tied ``lm_head.weight`` is absent).

    Raises:
        InvalidArgumentError: An unknown `gguf_type`.
        ConversionError: An unsupported model, or tensors that do not match config.json.
    """
    kind = file_type(gguf_type)
    folder = Path(model_dir)
    config = _read_json(folder / "config.json", required=True)
    with open_checkpoint(folder) as reader:
        spec = _model_spec(config, reader.keys())
        sources, order = _sources(reader, spec)
        shapes = {name: reader.shape(hf) for name, hf in sources.items()}
    types = _tensor_types(order, shapes, spec, kind, has_imatrix=has_imatrix, log=False)
    return {sources[name]: qtype for name, qtype in zip(order, types, strict=True)}


def export_gguf(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    gguf_type: str = "f16",
    name: str | None = None,
    imatrix: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Export a Hugging Face Llama/Mistral/Qwen2 folder to one GGUF file for llama.cpp-based runtimes.

    Reads `config.json`, the safetensors weights (sharded or not), `tokenizer.json`,
    `tokenizer_config.json` (and chat template files) and, when present, `generation_config.json`.

    Args:
        model_dir: the Hugging Face model folder.
        out_path: the `.gguf` file to create or replace (its folder is created when missing).
        gguf_type: the file type, as llama-quantize names it: one of `GGUF_TYPES` (any case), e.g. "q4_k_m",
            "q8_0", "f16" (1-D tensors stay F32).
        name: `general.name`; the folder's name when None.
        imatrix: GGUF tensor name -> (in_features,) importance of each column (llama-imatrix's mean squared
            input, e.g. `entrenar.quant.imatrix.collect_imatrix`): weighs the quantization error and changes
            the mixture as llama-quantize's `--imatrix` does; required by file types that need one
            ("q2_k_s"). Weights without an entry use the reference quantizer.

    Returns:
        `out_path` as a Path.

    Raises:
        ConversionError: an unsupported model type, RoPE scaling, tokenizer or pre-tokenizer, or weights
            that do not match config.json.
        InvalidArgumentError: an unknown `gguf_type`, or one that needs an importance matrix without one.
        FormatError: an unreadable safetensors file.
        TokenizerError: a missing or invalid tokenizer file.
    """
    kind = file_type(gguf_type)
    if kind.needs_imatrix and imatrix is None:
        raise InvalidArgumentError(
            f"GGUF type {kind.name} needs an importance matrix (as llama-quantize does); give calibration data"
        )
    folder, target = Path(model_dir), Path(out_path)
    config = _read_json(folder / "config.json", required=True)
    with open_checkpoint(folder) as reader:
        spec = _model_spec(config, reader.keys())
        writer = gguf.GGUFWriter(None, spec.arch)
        _add_model_metadata(writer, spec, int(kind.ftype), name or folder.resolve().name)
        rope_freqs = _add_rope_scaling(writer, spec)
        _add_sampling(writer, _read_json(folder / "generation_config.json", required=False))
        _add_vocab(writer, _gguf_vocab(folder, config, spec.vocab))
        planned = _plan_tensors(reader, spec, kind, imatrix)
        if rope_freqs is not None:
            planned.insert(0, _Planned(_ROPE_FREQS, rope_freqs.shape, _Q.F32, lambda: rope_freqs))
        for tensor in planned:
            writer.add_tensor_info(
                tensor.name, tensor.shape, np.dtype(np.float32), _nbytes(tensor.shape, tensor.qtype), tensor.qtype
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda stream: _write(writer, planned, stream))
    return target
