"""Helpers for the `entrenar init` tests: a word-level model folder whose token counts are known, data writers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

WORDS = ("alpha", "beta", "gamma", "delta")


def _write_word_model(folder: Path, *, max_positions: int = 512) -> Path:
    """A llama config.json and a word-level tokenizer: ``k`` words encode to exactly ``k`` tokens.

    No BOS is added and ``<eos>`` is the EOS token, so a text sample of k words is k + 1 tokens for
    `entrenar.data.Encoder` (which appends EOS). No chat template.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<eos>": 0, "<unk>": 1, **{word: i + 2 for i, word in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<eos>", "<unk>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "unk_token": "<unk>"}))
    config = {
        "model_type": "llama",
        "vocab_size": len(vocab),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": max_positions,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _write_text_samples(path: Path, word_counts: Sequence[int]) -> Path:
    """A JSONL file of ``{"text": ...}`` records, record i holding ``word_counts[i]`` words."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": " ".join(WORDS[j % len(WORDS)] for j in range(k))}) for k in word_counts]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _chat_records(n: int) -> list[dict[str, Any]]:
    """n messages-format records of growing length."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"question {i} about the weather"},
                {"role": "assistant", "content": "it is sunny " * (1 + i % 7)},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture
def word_model(tmp_path: Path) -> Callable[..., Path]:
    """`make(max_positions=512)`: a fresh word-level model folder under tmp_path."""

    def make(max_positions: int = 512) -> Path:
        return _write_word_model(tmp_path / f"word-model-{max_positions}", max_positions=max_positions)

    return make


@pytest.fixture
def text_samples() -> Callable[[Path, Sequence[int]], Path]:
    """`write(path, word_counts)`: a JSONL file of text records, record i holding ``word_counts[i]`` words."""
    return _write_text_samples


@pytest.fixture
def jsonl() -> Callable[[Path, Sequence[dict[str, Any]]], Path]:
    """`write(path, records)`: a JSONL file of these records."""
    return _write_jsonl


@pytest.fixture
def chat_data(tmp_path: Path) -> Callable[[int], Path]:
    """`make(n)`: ``tmp_path/chat-<n>.jsonl`` with n messages-format records of varied length."""

    def make(n: int) -> Path:
        return _write_jsonl(tmp_path / f"chat-{n}.jsonl", _chat_records(n))

    return make
