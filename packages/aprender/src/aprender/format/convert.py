"""GGUF -> Hugging Face checkpoint: safetensors weights, config.json, generation_config.json, tokenizer.

Supported GGUF architectures: `llama` (-> LlamaForCausalLM) and `qwen2` (-> Qwen2ForCausalLM).

What the conversion undoes (llama.cpp `convert_hf_to_gguf.py` is the forward direction):

- Names: `token_embd` -> `model.embed_tokens`, `blk.N.attn_q` -> `model.layers.N.self_attn.q_proj`, ...,
  `output_norm` -> `model.norm`, `output` -> `lm_head` (see `hf_tensor_name`).
- RoPE row order (`llama` only): llama.cpp stores each head of `attn_q`/`attn_k` with its rotary pairs
  interleaved, (x0, x_d/2, x1, x_d/2+1, ...), for its rotate-pairs RoPE (RoFormer, arXiv 2104.09864);
  Hugging Face's rotate-half RoPE wants the halves contiguous. `unpermute_rope_rows` puts them back.
- Tied embeddings: no `output.weight` means the LM head reuses `token_embd`; `tie_word_embeddings` is set
  and no `lm_head.weight` is written.
- Llama 3 RoPE scaling: llama.cpp stores it as a `rope_freqs.weight` tensor of per-frequency divisors,
  which is turned back into the `rope_scaling` entry it came from (see `llama3_rope_scaling`).

Example:
    >>> convert_gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-hf", dtype=torch.bfloat16)  # doctest: +SKIP
    PosixPath('smollm2-hf')
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from aprender.atomic import atomic_write_json
from aprender.errors import ConversionError, InvalidArgumentError
from aprender.format import safetensors
from aprender.format.gguf import read_gguf
from aprender.format.gguf_tokenizer import save_gguf_tokenizer

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "convert_gguf_to_hf",
    "hf_config_from_gguf",
    "hf_generation_config",
    "hf_tensor_name",
    "llama3_rope_divisors",
    "llama3_rope_scaling",
    "permute_rope_rows",
    "unpermute_rope_rows",
]

# GGUF architecture -> (HF class, HF model_type).
_HF_MODELS = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}
SUPPORTED_ARCHITECTURES = tuple(_HF_MODELS)

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_LINEARS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_ATTENTION_BIASES = frozenset({"attn_q", "attn_k", "attn_v", "attn_output"})
_MLP_BIASES = frozenset({"ffn_gate", "ffn_up", "ffn_down"})
_QKV_BIASES = frozenset({"attn_q", "attn_k", "attn_v"})
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"
# Optional `{arch}.rope.scaling.*` YaRN keys -> HF rope_scaling keys.
_YARN_OPTIONS = {"attn_factor": "attention_factor", "yarn_beta_fast": "beta_fast", "yarn_beta_slow": "beta_slow"}
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# The constants llama.cpp's converter uses when it writes Llama 3 `rope_freqs` (and Llama 3.x's own values).
_LLAMA3_LOW_FREQ_FACTOR, _LLAMA3_HIGH_FREQ_FACTOR, _LLAMA3_ORIGINAL_CONTEXT = 1.0, 4.0, 8192


def hf_tensor_name(gguf_name: str) -> str:
    """Map a llama.cpp tensor name to its Hugging Face Llama/Qwen2 name.

    Args:
        gguf_name: e.g. `"blk.3.attn_q.weight"`, `"token_embd.weight"`.

    Returns:
        e.g. `"model.layers.3.self_attn.q_proj.weight"`, `"model.embed_tokens.weight"`.

    Raises:
        ConversionError: a tensor the Llama/Qwen2 layout has no place for.
    """
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_TENSORS and suffix == "weight":
        return f"{_GLOBAL_TENSORS[stem]}.weight"
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match:
        block, role, suffix = match.groups()
        if role in _LINEARS:
            return f"model.layers.{block}.{_LINEARS[role]}.{suffix}"
        if role in _NORMS and suffix == "weight":
            return f"model.layers.{block}.{_NORMS[role]}.weight"
    raise ConversionError(
        f"GGUF tensor {gguf_name!r} has no counterpart in a Llama/Qwen2 checkpoint; this file's model is not supported"
    )


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's RoPE row permutation of a `llama` `attn_q`/`attn_k` weight or bias.

    llama.cpp (`LlamaModel.permute`) views the rows of each head as (2, head_dim/2) and transposes them,
    interleaving the two rotary halves; this views them as (head_dim/2, 2) and transposes back.

    Args:
        weight: (n_heads * head_dim, in_features) weight or (n_heads * head_dim,) bias, llama.cpp order.
        n_heads: heads the rows belong to (query heads for `attn_q`, key/value heads for `attn_k`).

    Returns:
        A new tensor of the same shape and dtype, rows in Hugging Face (rotate-half) order.

    Raises:
        ConversionError: the row count is not a multiple of 2 * n_heads.
    """
    rows = weight.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ConversionError(f"cannot split {rows} rows of a q/k projection into {n_heads} RoPE heads")
    rest = weight.shape[1:]
    pairs = weight.reshape(n_heads, rows // n_heads // 2, 2, *rest)
    return pairs.transpose(1, 2).reshape(weight.shape).contiguous()


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Apply llama.cpp's RoPE row permutation to a Hugging Face `q_proj`/`k_proj` weight or bias (llama only).

    The inverse of `unpermute_rope_rows`: llama.cpp's `LlamaModel.permute` views the rows of each head as
    (2, head_dim/2) and transposes them, so row pairs (x_i, x_{i + head_dim/2}) sit next to each other for
    its rotate-pairs RoPE (RoFormer, arXiv 2104.09864).

    Args:
        weight: (n_heads * head_dim, in_features) weight or (n_heads * head_dim,) bias, Hugging Face order.
        n_heads: heads the rows belong to (query heads for `q_proj`, key/value heads for `k_proj`).

    Returns:
        A new tensor of the same shape and dtype, rows in llama.cpp order.

    Raises:
        ConversionError: the row count is not a multiple of 2 * n_heads.
    """
    rows = weight.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ConversionError(f"cannot split {rows} rows of a q/k projection into {n_heads} RoPE heads")
    halves = weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
    return halves.transpose(1, 2).reshape(weight.shape).contiguous()


def llama3_rope_scaling(rope_freqs: torch.Tensor, head_dim: int, rope_theta: float) -> dict[str, Any] | None:
    """Recover the Llama 3 `rope_scaling` entry from llama.cpp's `rope_freqs.weight` divisors.

    llama.cpp divides each RoPE frequency by its entry in `rope_freqs` (Llama 3.1 frequency scaling,
    arXiv 2407.21783 section 3.3.2; `_compute_llama3_parameters` in transformers). The largest divisor
    is the scaling factor; the low/high frequency factors are llama.cpp's defaults (1 and 4, as in every
    Llama 3.x); the original context is solved from a divisor strictly between 1 and the factor (8192,
    llama.cpp's default, when there is none), and the divisors these give must match the file's.

    Args:
        rope_freqs: (head_dim/2,) divisors as stored in the GGUF.
        head_dim: rotary dimension of a head.
        rope_theta: RoPE base.

    Returns:
        `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
        "original_max_position_embeddings"}`, or None when every divisor is 1 (no scaling).

    Raises:
        ConversionError: the divisors have the wrong length or do not follow Llama 3 scaling.
    """
    freqs = rope_freqs.double().flatten()
    if freqs.numel() != head_dim // 2:
        raise ConversionError(f"GGUF {_ROPE_FREQS} has {freqs.numel()} entries; expected head_dim/2 = {head_dim // 2}")
    if torch.allclose(freqs, torch.ones_like(freqs)):
        return None
    factor = float(freqs.max())
    low, high = _LLAMA3_LOW_FREQ_FACTOR, _LLAMA3_HIGH_FREQ_FACTOR
    context = _llama3_original_context(freqs, head_dim, rope_theta, factor)
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": context,
    }
    expected = llama3_rope_divisors(head_dim, rope_theta, factor, low, high, context)
    if not torch.allclose(expected, freqs, rtol=1e-5, atol=0.0):
        raise ConversionError(
            f"GGUF {_ROPE_FREQS} does not follow Llama 3 RoPE scaling (factor {factor:g}, low/high frequency "
            f"factors 1/4, original context {context}); this model's RoPE scaling is not supported"
        )
    return scaling


def _llama3_original_context(freqs: torch.Tensor, head_dim: int, theta: float, factor: float) -> int:
    """Solve `smooth = (context / wavelen - low) / (high - low)` at the first divisor between 1 and `factor`."""
    low, high = _LLAMA3_LOW_FREQ_FACTOR, _LLAMA3_HIGH_FREQ_FACTOR
    between = ((freqs > 1.0 + 1e-6) & (freqs < factor * (1.0 - 1e-6))).nonzero()
    if not len(between):
        return _LLAMA3_ORIGINAL_CONTEXT
    index = int(between[0])
    wavelen = 2 * math.pi * theta ** (2 * index / head_dim)
    smooth = (1.0 / float(freqs[index]) - 1.0 / factor) / (1.0 - 1.0 / factor)
    return round(wavelen * (low + (high - low) * smooth))


def llama3_rope_divisors(
    head_dim: int, theta: float, factor: float, low_freq_factor: float, high_freq_factor: float, context: int
) -> torch.Tensor:
    """The per-frequency divisors llama.cpp's converter writes as `rope_freqs.weight` for Llama 3 scaling.

    Frequencies with a wavelength below `context / high_freq_factor` keep their value (divisor 1), those
    above `context / low_freq_factor` are divided by `factor`, and the ones between blend the two
    (arXiv 2407.21783 section 3.3.2; llama.cpp `LlamaModel.generate_extra_tensors`).

    Args:
        head_dim: rotary dimension of a head.
        theta: RoPE base.
        factor: scaling factor.
        low_freq_factor: Llama 3 `low_freq_factor`.
        high_freq_factor: Llama 3 `high_freq_factor`.
        context: `original_max_position_embeddings`.

    Returns:
        (head_dim/2,) float64 divisors.
    """
    low, high = low_freq_factor, high_freq_factor
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (context / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    divisors = torch.where(wavelen > context / low, torch.full_like(mid, factor), mid)
    return torch.where(wavelen < context / high, torch.ones_like(mid), divisors)


def _required(metadata: Mapping[str, Any], key: str) -> Any:
    if key not in metadata:
        raise ConversionError(f"GGUF metadata has no {key!r}; the file is incomplete: convert it again with llama.cpp")
    return metadata[key]


def _architecture(metadata: Mapping[str, Any]) -> str:
    arch = str(_required(metadata, "general.architecture"))
    if arch not in _HF_MODELS:
        raise ConversionError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _rope_scaling(metadata: Mapping[str, Any], arch: str) -> dict[str, Any] | None:
    """`{arch}.rope.scaling.*` metadata -> HF `rope_scaling` (linear or YaRN, arXiv 2309.00071)."""
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if kind is None or kind == "none":
        return None
    factor = float(_required(metadata, f"{arch}.rope.scaling.factor"))
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind != "yarn":
        raise ConversionError(f"GGUF {arch}.rope.scaling.type {kind!r} is not supported; supported: none, linear, yarn")
    original = int(_required(metadata, f"{arch}.rope.scaling.original_context_length"))
    scaling: dict[str, Any] = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    for key, hf_key in _YARN_OPTIONS.items():
        if f"{arch}.rope.scaling.{key}" in metadata:
            scaling[hf_key] = float(metadata[f"{arch}.rope.scaling.{key}"])
    return scaling


def _bias_flags(arch: str, tensor_shapes: Mapping[str, Sequence[int]]) -> dict[str, bool]:
    """Which linears carry biases (read from block 0), checked against what the HF class can hold."""
    present = frozenset(role for role in _LINEARS if f"blk.0.{role}.bias" in tensor_shapes)
    if arch == "qwen2":
        if present != _QKV_BIASES:
            raise ConversionError(
                f"GGUF qwen2 model has biases on {sorted(present)}; Qwen2 needs exactly attn_q, attn_k and attn_v"
            )
        return {}
    flags = {"attention_bias": present >= _ATTENTION_BIASES, "mlp_bias": present >= _MLP_BIASES}
    expected = (_ATTENTION_BIASES if flags["attention_bias"] else set()) | (_MLP_BIASES if flags["mlp_bias"] else set())
    if present != expected:
        raise ConversionError(
            f"GGUF llama model has biases on {sorted(present)}; Llama needs all or none of the attention "
            f"projections and all or none of the MLP projections"
        )
    return flags


def _head_dim(metadata: Mapping[str, Any], arch: str, tensor_shapes: Mapping[str, Sequence[int]]) -> int:
    hidden = int(_required(metadata, f"{arch}.embedding_length"))
    heads = int(_required(metadata, f"{arch}.attention.head_count"))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", hidden // heads))
    q_shape = tensor_shapes.get("blk.0.attn_q.weight")
    if q_shape is not None and q_shape[0] != heads * head_dim:
        raise ConversionError(
            f"GGUF blk.0.attn_q.weight has {q_shape[0]} rows; {heads} heads of {head_dim} need {heads * head_dim}"
        )
    rotary = int(metadata.get(f"{arch}.rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise ConversionError(
            f"GGUF {arch}.rope.dimension_count {rotary} differs from head_dim {head_dim}; partial RoPE is not supported"
        )
    return head_dim


def hf_config_from_gguf(
    metadata: Mapping[str, Any],
    tensor_shapes: Mapping[str, Sequence[int]],
    *,
    dtype: torch.dtype = torch.float32,
    rope_freqs: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Build the `config.json` of the Hugging Face model a GGUF file holds.

    Args:
        metadata: GGUF metadata (`GGUFFile.metadata`).
        tensor_shapes: GGUF tensor name -> torch-order shape (`{n: t.shape for n, t in gguf.tensors.items()}`);
            gives the vocabulary size, tied embeddings, biases and the q projection's size.
        dtype: the dtype the weights are written in (`torch_dtype`).
        rope_freqs: the `rope_freqs.weight` tensor; required when `tensor_shapes` lists it.

    Returns:
        The config dict: `architectures`, `model_type`, sizes, heads, `rms_norm_eps`, `rope_theta`,
        `rope_scaling`, `max_position_embeddings`, `vocab_size`, `tie_word_embeddings`, bos/eos/pad ids,
        `head_dim` (only when it is not hidden_size / heads), `attention_bias`/`mlp_bias` (llama),
        `torch_dtype`.

    Raises:
        ConversionError: unsupported architecture or RoPE, a missing required key (named), or shapes
            that contradict the metadata.
    """
    arch = _architecture(metadata)
    hf_class, model_type = _HF_MODELS[arch]
    hidden = int(_required(metadata, f"{arch}.embedding_length"))
    heads = int(_required(metadata, f"{arch}.attention.head_count"))
    head_dim = _head_dim(metadata, arch, tensor_shapes)
    theta = float(metadata.get(f"{arch}.rope.freq_base", 10000.0))
    embed = tensor_shapes.get("token_embd.weight")
    if embed is None:
        raise ConversionError("GGUF file has no 'token_embd.weight' tensor; it is not a complete language model")
    config: dict[str, Any] = {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(_required(metadata, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_required(metadata, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get(f"{arch}.attention.head_count_kv", heads)),
        "hidden_act": "silu",
        "rms_norm_eps": float(_required(metadata, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(metadata, arch),
        "max_position_embeddings": int(_required(metadata, f"{arch}.context_length")),
        "vocab_size": int(embed[0]),
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
        "bos_token_id": _optional_id(metadata, "bos"),
        "eos_token_id": _optional_id(metadata, "eos"),
        "pad_token_id": _optional_id(metadata, "padding"),
        **_bias_flags(arch, tensor_shapes),
        "torch_dtype": _dtype_name(dtype),
    }
    if head_dim != hidden // heads:
        config["head_dim"] = head_dim
    if _ROPE_FREQS in tensor_shapes:
        if rope_freqs is None:
            raise ConversionError(f"GGUF file has {_ROPE_FREQS!r}; pass its values as rope_freqs")
        config["rope_scaling"] = llama3_rope_scaling(rope_freqs, head_dim, theta)
    return config


def _optional_id(metadata: Mapping[str, Any], name: str) -> int | None:
    value = metadata.get(f"tokenizer.ggml.{name}_token_id")
    return None if value is None else int(value)


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPES:
        raise InvalidArgumentError(f"dtype {dtype} is not supported for conversion; use one of {list(_DTYPES)}")
    return _DTYPES[dtype]


def hf_generation_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Build `generation_config.json`: the bos/pad ids and every id llama.cpp stops generation at.

    Args:
        metadata: GGUF metadata; `tokenizer.ggml.eos_token_id`, `.eot_token_id` (end of turn) and
            `.eom_token_id` (end of message) are stop tokens.

    Returns:
        `{"bos_token_id", "eos_token_id", "pad_token_id"}` (present keys only); `eos_token_id` is an int
        for one stop token and a list for several.
    """
    config: dict[str, Any] = {}
    bos, pad = _optional_id(metadata, "bos"), _optional_id(metadata, "padding")
    if bos is not None:
        config["bos_token_id"] = bos
    stops: list[int] = []
    for name in ("eos", "eot", "eom"):
        token_id = _optional_id(metadata, name)
        if token_id is not None and token_id not in stops:
            stops.append(token_id)
    if stops:
        config["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    if pad is not None:
        config["pad_token_id"] = pad
    return config


def _hf_tensors(
    gguf: Any, names: Mapping[str, str], config: Mapping[str, Any], arch: str, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of `names` (GGUF -> HF name) dequantized, un-permuted (llama q/k) and cast, one at a time."""
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    for name, hf_name in names.items():
        tensor = gguf.load_tensor(name, dtype=dtype)
        role = name.split(".")[2] if name.startswith("blk.") else ""
        if arch == "llama" and role in heads:
            tensor = unpermute_rope_rows(tensor, heads[role])
        yield hf_name, tensor


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Convert a llama/qwen2 GGUF file into a folder `transformers.AutoModelForCausalLM.from_pretrained` loads.

    Writes `model.safetensors` (or shards + index), `config.json`, `generation_config.json`,
    `tokenizer.json` and `tokenizer_config.json`. The tokenizer and configs are built in a temporary folder
    inside `out_dir` and moved in last; the weights are dequantized one tensor at a time straight into
    `dtype` and streamed through a `CheckpointWriter` (temp files until all are written), so peak memory is
    about one output shard, and a failure leaves `out_dir` as it was. Weight files of an earlier conversion
    that this one did not write are removed; other files in `out_dir` are left alone.

    Args:
        gguf_path: the `.gguf` file.
        out_dir: output folder, created when missing.
        dtype: weight dtype: torch.float32, torch.float16 or torch.bfloat16.
        max_shard_size: largest safetensors shard, bytes or a string like "2GB".

    Returns:
        `out_dir` as a Path.

    Raises:
        ConversionError: unsupported architecture, tokenizer or tensor; missing metadata (named).
        InvalidArgumentError: unsupported `dtype` or bad `max_shard_size`.
        FormatError: the GGUF file is unreadable or corrupt.
    """
    _dtype_name(dtype)
    safetensors.parse_size(max_shard_size)
    target = Path(out_dir)
    with read_gguf(gguf_path) as gguf:
        arch = _architecture(gguf.metadata)
        shapes = {name: info.shape for name, info in gguf.tensors.items()}
        rope_freqs = gguf.load_tensor(_ROPE_FREQS) if _ROPE_FREQS in shapes else None
        config = hf_config_from_gguf(gguf.metadata, shapes, dtype=dtype, rope_freqs=rope_freqs)
        target.mkdir(parents=True, exist_ok=True)
        # Every name is mapped before anything is dequantized; rope_freqs went into the config.
        names = {name: hf_tensor_name(name) for name in shapes if name != _ROPE_FREQS}
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target))
        try:
            save_gguf_tokenizer(gguf.metadata, staging)
            atomic_write_json(staging / "config.json", config)
            atomic_write_json(staging / "generation_config.json", hf_generation_config(gguf.metadata))
            with safetensors.CheckpointWriter(target, max_shard_size=max_shard_size) as writer:
                for hf_name, tensor in _hf_tensors(gguf, names, config, arch, dtype):
                    writer.save_tensor(hf_name, tensor)
            for entry in sorted(staging.iterdir()):
                os.replace(entry, target / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
