"""Inspect a base model without its weights: ``config.json`` (architecture, parameter count) and the tokenizer.

A base is a local folder, a ``.gguf`` file or a Hub repo id, classified as every entry point does
(`aprender.reference.classify_model_reference`). For a repo id only ``config.json``
(`aprender.hub.fetch_config`) and the tokenizer files (`aprender.constants.TOKENIZER_FILE_PATTERNS`, through
`aprender.hub.download`) are fetched, into the standard HF cache, so ``HF_HUB_OFFLINE=1`` reads them
from the cache and no weight file is ever downloaded. A ``.gguf`` file is converted into its cached
Hugging Face folder (`aprender.reference.resolve_model_folder`), which training then reuses.

The parameter count is computed from the config, as ``transformers``' ``model.num_parameters()``
counts the Llama/Mistral/Qwen2/Qwen3 modules (a tied LM head counted once):

    embed      V * H
    per layer  q: H * (n_h * d) [+ n_h * d bias]   k, v: H * (n_kv * d) [+ n_kv * d bias each]
               o: (n_h * d) * H [+ H bias]         MLP (gate, up, down): 3 * H * I [+ 2 * I + H bias]
               RMSNorms: 2 * H [+ 2 * d for Qwen3's q/k norms]
    final      H (norm) [+ V * H LM head unless tied]

with V vocab, H hidden size, I MLP width, n_h / n_kv query / key-value heads, d head dim. q/k/v
biases: Qwen2 always, Llama/Qwen3 with ``attention_bias`` (which also adds the o bias); MLP biases:
Llama with ``mlp_bias``. Reference: the modeling files of the four families in transformers
(https://github.com/huggingface/transformers/tree/main/src/transformers/models).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aprender.constants import TOKENIZER_FILE_PATTERNS
from aprender.errors import ModelReferenceError, TokenizerError
from aprender.reference import classify_model_reference, resolve_model_folder
from aprender.text import Tokenizer
from entrenar.errors import InitError, ModelConfigError
from entrenar.models.config import ModelConfig

__all__ = ["BaseModel", "count_parameters", "inspect_base", "load_base_tokenizer"]

Source = Literal["local", "hub"]


@dataclass(frozen=True)
class BaseModel:
    """What `inspect_base` learnt about a base model.

    Attributes:
        reference: the base as the user gave it (a folder, a .gguf file or a repo id).
        source: ``"local"`` or ``"hub"``.
        folder: the local folder, a .gguf file's converted one (None for a Hub id: its files live in the HF cache).
        config: the parsed architecture.
        num_parameters: parameters of the model, computed from `config` (`count_parameters`).
    """

    reference: str
    source: Source
    folder: Path | None
    config: ModelConfig
    num_parameters: int


def count_parameters(config: ModelConfig) -> int:
    """Number of parameters of a Llama/Mistral/Qwen2/Qwen3 model, as transformers counts them.

    Args:
        config: the architecture (see the module docstring for the formula).

    Returns:
        The count, with a tied LM head counted once.
    """
    hidden, heads, kv_heads, head_dim = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    attention = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    if config.qkv_bias:
        attention += q_width + 2 * kv_width
    if config.o_bias:
        attention += hidden
    mlp = 3 * hidden * config.intermediate_size + (2 * config.intermediate_size + hidden if config.mlp_bias else 0)
    norms = 2 * hidden + (2 * head_dim if config.qk_norm else 0)
    embedding = config.vocab_size * hidden
    head = 0 if config.tie_word_embeddings else config.vocab_size * hidden
    return embedding + config.num_layers * (attention + mlp + norms) + hidden + head


def _resolve(base: str) -> tuple[Source, Path | None]:
    """``("local", folder)`` (a .gguf file: its converted folder) or ``("hub", None)``; an error for anything else."""
    try:
        reference = classify_model_reference(base)
    except ModelReferenceError as exc:
        raise InitError(f"--base {exc}") from exc
    if reference.kind == "hub":
        return "hub", None
    return "local", resolve_model_folder(reference)


def _read_local_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as exc:
        raise InitError(f"{path}: not found; the base model folder needs the Hugging Face config.json") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InitError(f"{path}: not valid JSON ({exc}); restore the model's config.json") from exc
    if not isinstance(raw, dict):
        raise InitError(f"{path}: must hold a JSON object, got {type(raw).__name__}; restore the model's config.json")
    return raw


def inspect_base(base: str) -> BaseModel:
    """Read the base model's ``config.json`` (only that file) and count its parameters.

    Args:
        base: a local model folder, a .gguf file (converted once) or a Hub repo id (fetched through the HF cache).

    Returns:
        The architecture and where it came from.

    Raises:
        InitError: the base is a file other than .gguf, neither a path nor a repo id, or its config.json is
            missing or not JSON.
        ModelConfigError: an unsupported ``model_type`` or an invalid config (names the base).
        HubError: the Hub cannot serve the config (see `aprender.hub.fetch_config`).
    """
    source, folder = _resolve(base)
    if folder is not None:
        raw = _read_local_config(folder)
    else:
        from aprender.hub import fetch_config

        raw = fetch_config(base)
    try:
        config = ModelConfig.from_hf_dict(raw)
    except ModelConfigError as exc:
        raise ModelConfigError(f"--base {base}: config.json: {exc}") from exc
    return BaseModel(base, source, folder, config, count_parameters(config))


def load_base_tokenizer(base: BaseModel) -> Tokenizer:
    """Load the base model's tokenizer (for a repo id, download only the files in `TOKENIZER_FILE_PATTERNS`).

    Args:
        base: from `inspect_base`.

    Returns:
        The tokenizer training will use.

    Raises:
        InitError: the model has no usable ``tokenizer.json`` (the message says where it looked).
        HubError: the Hub cannot serve the files.
    """
    if base.folder is not None:
        folder = base.folder
    else:
        from aprender.hub import download

        folder = Path(download(base.reference, allow_patterns=list(TOKENIZER_FILE_PATTERNS)))
    try:
        return Tokenizer.from_dir(folder)
    except TokenizerError as exc:
        where = os.fspath(folder) if base.source == "local" else f"the Hub repo {base.reference}"
        raise InitError(
            f"--base {base.reference}: cannot load the tokenizer from {where} ({exc}); "
            "init needs tokenizer.json (+ tokenizer_config.json) to measure your samples in tokens"
        ) from exc
