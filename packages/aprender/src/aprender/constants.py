"""Names aprender shares with the Hugging Face ecosystem: model and tokenizer file names, dtypes, suffixes.

One home for them, like ``huggingface_hub.constants``, and import-light on purpose (no torch, no
huggingface_hub): config validation and ``entrenar --help`` read these without the heavy imports.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "CHAT_TEMPLATE_DIR",
    "CHAT_TEMPLATE_FILE",
    "CONFIG_FILES",
    "CONFIG_NAME",
    "DIVERGENCES",
    "DTYPE_NAMES",
    "FILE_SUFFIXES",
    "GENERATION_CONFIG_NAME",
    "GGUF_SUFFIX",
    "MODEL_FILE_PATTERNS",
    "REPOCARD_NAME",
    "SAFETENSORS_INDEX_FILE",
    "SAFETENSORS_SINGLE_FILE",
    "SPECIAL_TOKENS_MAP_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "TOKENIZER_FILES",
    "TOKENIZER_FILE_PATTERNS",
    "Divergence",
]

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)
"""Distillation divergences between teacher and student distributions (`aprender.loss.distill`)."""

# A Hugging Face model folder (transformers' names).
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFETENSORS_SINGLE_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
REPOCARD_NAME = "README.md"
CONFIG_FILES = (CONFIG_NAME, GENERATION_CONFIG_NAME)
MODEL_FILE_PATTERNS = (*CONFIG_FILES, "*.safetensors", "*.safetensors.index.json")
"""What loading a model needs from a Hub repo, as download patterns (the tokenizer files are apart)."""

# The tokenizer files `aprender.text.Tokenizer` reads and writes.
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
TOKENIZER_FILE_PATTERNS = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    CHAT_TEMPLATE_FILE,
    f"{CHAT_TEMPLATE_DIR}/*.jinja",
)
"""Every file `Tokenizer.from_dir` reads, as Hub download patterns (small text files, never weights)."""
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    CHAT_TEMPLATE_FILE,
    "chat_template.json",
)
"""The tokenizer files a model folder may hold, the slow tokenizers' included (copied as they are)."""

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""The floating-point weight dtypes, as ``config.json``'s ``torch_dtype`` spells them."""

GGUF_SUFFIX = ".gguf"
FILE_SUFFIXES = frozenset(
    {
        *(GGUF_SUFFIX, ".safetensors", ".bin", ".pt", ".pth", ".ckpt"),  # weights
        *(".json", ".jsonl", ".yaml", ".yml", ".txt", ".parquet"),  # configs and data
    }
)
"""Suffixes that make a string a file name rather than a Hub repo id (``Qwen/Qwen2.5-0.5B`` ends in ``.5B``)."""
