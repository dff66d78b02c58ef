"""GGUF vocabulary -> tokenizer.json / tokenizer_config.json.

Oracles: transformers' own GGUF tokenizer loader (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`),
sentencepiece itself (for the SentencePiece path) and hand-built vocabularies with hand-computed splits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from aprender.errors import ConversionError
from aprender.format.gguf import read_gguf
from aprender.format.gguf_tokenizer import (
    PRE_TOKENIZERS,
    gguf_tokenizer_config,
    gguf_tokenizer_json,
    save_gguf_tokenizer,
)
from fixtures.gguf_vocab import CHAT_TEMPLATE, USER_TOKEN, GGUFVocab, byte_level_vocab, sentencepiece_vocab

SENTENCES = [
    "The capital of France is Paris.",
    "Hello, world! How are you today?",
    "café naïve Ångström crème brûlée",
    "👍🏽 🚀 🎉",
    "日本語のテキスト 中文文本 한국어",
    "def f(x):\n\tif x:\n        return [1, 2]\n\n",
    "12345 3.14 1,000,000 -7",
    "  leading, trailing and   multiple   spaces  ",
    "tabs\tand\nnewlines\r\nmixed",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "don't I'LL we've they'D",
    "",
]


def _gguf_dir(tmp: Path, vocab: GGUFVocab, arch: str, **options: Any) -> Path:
    """A GGUF with `vocab` and just the model keys transformers' tokenizer loader reads; no tensors."""
    path = tmp / "vocab.gguf"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(512)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    space_prefix = options.pop("add_space_prefix", None)
    if space_prefix is not None:
        writer.add_add_space_prefix(space_prefix)
    vocab.write(writer, **options)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _converted(tmp_path_factory: pytest.TempPathFactory, vocab: GGUFVocab, arch: str, **options: Any) -> Any:
    """(our tokenizers.Tokenizer, transformers' GGUF tokenizer, our folder) for one GGUF vocabulary."""
    folder = tmp_path_factory.mktemp("tok")
    path = _gguf_dir(folder, vocab, arch, **options)
    with read_gguf(path) as g:
        save_gguf_tokenizer(g.metadata, folder)
    reference = AutoTokenizer.from_pretrained(folder, gguf_file=path.name)
    return Tokenizer.from_file(str(folder / "tokenizer.json")), reference, folder


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _converted(tmp_path_factory, sentencepiece_vocab(), "llama")


@pytest.fixture(scope="module")
def qwen2_bpe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _converted(tmp_path_factory, byte_level_vocab(), "qwen2", pre="qwen2")


# ------------------------------------------------------------------------------------------ SmolLM2 (real)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_gguf_path.parent, gguf_file=smollm2_gguf_path.name)


@pytest.mark.slow
@pytest.mark.parametrize("text", SENTENCES)
def test_smollm2_encodes_like_transformers(smollm2_hf_dir: Path, smollm2_reference: Any, text: str) -> None:
    ours = Tokenizer.from_file(str(smollm2_hf_dir / "tokenizer.json"))
    fast = PreTrainedTokenizerFast.from_pretrained(smollm2_hf_dir)
    auto = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    expected = smollm2_reference(text)["input_ids"]
    assert ours.encode(text).ids == expected
    assert fast(text)["input_ids"] == expected
    assert auto(text)["input_ids"] == expected
    # byte-level BPE is lossless: decoding gives the text back, special tokens included
    assert ours.decode(expected, skip_special_tokens=False) == text
    assert auto.decode(expected) == text


@pytest.mark.slow
def test_smollm2_digits_are_split_one_by_one(smollm2_hf_dir: Path) -> None:
    # pre "smollm" isolates every digit (llama.cpp); "12345" is five tokens whatever the merges say
    ours = Tokenizer.from_file(str(smollm2_hf_dir / "tokenizer.json"))
    assert ours.encode("12345").tokens == ["1", "2", "3", "4", "5"]


@pytest.mark.slow
def test_smollm2_tokenizer_config(smollm2_hf_dir: Path, smollm2_gguf_path: Path, smollm2_reference: Any) -> None:
    config = json.loads((smollm2_hf_dir / "tokenizer_config.json").read_text())
    with read_gguf(smollm2_gguf_path) as g:
        template = g.metadata["tokenizer.chat_template"]
    # ids 1, 2, 0, 2 in the file's tokenizer.ggml.*_token_id keys; context_length 8192
    assert config["bos_token"] == smollm2_reference.bos_token == "<|im_start|>"
    assert config["eos_token"] == smollm2_reference.eos_token == "<|im_end|>"
    assert config["unk_token"] == smollm2_reference.unk_token == "<|endoftext|>"
    assert config["pad_token"] == smollm2_reference.pad_token == "<|im_end|>"
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert config["chat_template"] == template
    assert config["model_max_length"] == 8192
    auto = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    ours = auto.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    theirs = smollm2_reference.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert ours == theirs
    specials = {t["content"] for t in json.loads((smollm2_hf_dir / "tokenizer.json").read_text())["added_tokens"]}
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"} <= specials  # the 17 type-3 tokens
    assert len(specials) == 17


# ------------------------------------------------------------------------------------------ SentencePiece


@pytest.mark.parametrize("text", SENTENCES)
def test_sentencepiece_encodes_like_transformers(spm: Any, text: str) -> None:
    ours, reference, folder = spm
    expected = reference(text)["input_ids"]
    assert ours.encode(text).ids == expected
    assert PreTrainedTokenizerFast.from_pretrained(folder)(text)["input_ids"] == expected
    assert expected[0] == sentencepiece_vocab().bos  # llama.cpp's default for SentencePiece: add BOS


@pytest.mark.parametrize("text", [s for s in SENTENCES if "<|" not in s and not s.startswith(" ")])
def test_sentencepiece_matches_sentencepiece_itself(spm: Any, text: str) -> None:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_vocab().sentencepiece_model)
    ours, _, _ = spm
    assert ours.encode(text, add_special_tokens=False).ids == processor.encode(text)
    # byte fallback and the stripped dummy prefix give the text back
    assert ours.decode(ours.encode(text).ids) == text


def test_sentencepiece_leading_space_follows_transformers(spm: Any) -> None:
    # Metaspace prepend_scheme="first" adds no "▁" to a text that already starts with a space (the
    # Hugging Face Llama scheme); sentencepiece would add one. Decoding then drops one leading space.
    ours, reference, _ = spm
    encoding = ours.encode("  two spaces", add_special_tokens=False)
    assert "".join(encoding.tokens).startswith("▁▁t")
    assert not "".join(encoding.tokens).startswith("▁▁▁")
    assert ours.decode(encoding.ids) == reference.decode(encoding.ids) == " two spaces"


def test_sentencepiece_special_tokens(spm: Any) -> None:
    ours, _, folder = spm
    added = {t["content"]: t for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    assert {name for name, t in added.items() if t["special"]} == {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"}
    assert added[USER_TOKEN]["special"] is False
    assert USER_TOKEN in ours.encode("a<tool>b", add_special_tokens=False).tokens  # matched whole
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["unk_token"], config["pad_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
        None,
    )
    assert config["add_bos_token"] is True and config["chat_template"] == CHAT_TEMPLATE
    assert config["model_max_length"] == 512


def test_sentencepiece_without_space_prefix(tmp_path_factory: pytest.TempPathFactory) -> None:
    import sentencepiece

    vocab = sentencepiece_vocab(add_dummy_prefix=False)
    ours, _, _ = _converted(tmp_path_factory, vocab, "llama", add_space_prefix=False, add_bos=False)
    processor = sentencepiece.SentencePieceProcessor(model_proto=vocab.sentencepiece_model)
    for text in ("Hello world", "The capital of France is Paris."):
        assert ours.encode(text).ids == processor.encode(text)  # no BOS: add_bos_token is false
        assert ours.decode(ours.encode(text).ids) == text
    assert not ours.encode("Hello").tokens[0].startswith("▁")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_sentencepiece_any_text_like_transformers(spm: Any, text: str) -> None:
    ours, reference, _ = spm
    assert ours.encode(text).ids == reference(text)["input_ids"]


def test_sentencepiece_merges_from_the_file_win() -> None:
    # Hand-built vocabulary: scores prefer "▁b"+"c" ... but the file's only merge is "a b".
    tokens = ["<unk>", "▁", "a", "b", "c", "ab", "bc"]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 1, 1, 1, 1, 1, 1],
        "tokenizer.ggml.scores": [0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -5.0],
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    from_scores = Tokenizer.from_str(json.dumps(gguf_tokenizer_json(meta)))
    # scores: "bc" (-5) outranks "ab" (-6), so "abc" -> a + bc
    assert from_scores.encode("abc").tokens == ["▁", "a", "bc"]
    explicit = Tokenizer.from_str(json.dumps(gguf_tokenizer_json({**meta, "tokenizer.ggml.merges": ["a b"]})))
    assert explicit.encode("abc").tokens == ["▁", "ab", "c"]
    # a character outside the vocabulary with no byte tokens falls back to <unk>
    assert from_scores.encode("z").tokens == ["▁", "<unk>"]


# ------------------------------------------------------------------------------------------ byte-level BPE


@pytest.mark.parametrize("text", SENTENCES)
def test_qwen2_byte_level_encodes_like_transformers(qwen2_bpe: Any, text: str) -> None:
    ours, reference, folder = qwen2_bpe
    expected = reference(text)["input_ids"]
    assert ours.encode(text).ids == expected
    assert PreTrainedTokenizerFast.from_pretrained(folder)(text)["input_ids"] == expected
    assert ours.decode(expected, skip_special_tokens=False) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_byte_level_any_text_like_transformers_and_lossless(qwen2_bpe: Any, text: str) -> None:
    ours, reference, _ = qwen2_bpe
    ids = ours.encode(text).ids
    assert ids == reference(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("pre", ["llama-bpe", "gpt2", "default"])
def test_byte_level_pre_tokenizers_like_transformers(tmp_path_factory: pytest.TempPathFactory, pre: str) -> None:
    ours, reference, _ = _converted(tmp_path_factory, byte_level_vocab(), "llama", pre=pre, add_bos=False)
    for text in SENTENCES:
        assert ours.encode(text).ids == reference(text)["input_ids"], text


def test_pre_tokenizer_splits_differ_as_documented() -> None:
    # Hand-computed pieces of "abc 12345\n\nx" under each split (the regexes in PRE_TOKENIZERS):
    # GPT-2 keeps digit runs and takes "\n\n" one newline at a time (`\s+(?!\S)` backtracks before "x"),
    # Llama 3 groups three digits and keeps newline runs (`\s*[\r\n]+`), Qwen2 splits single digits,
    # SmolLM isolates each digit first and then applies GPT-2's split.
    meta = byte_level_vocab().metadata()
    expected = {
        "gpt2": ["abc", "Ġ12345", "Ċ", "Ċ", "x"],
        "llama-bpe": ["abc", "Ġ", "123", "45", "ĊĊ", "x"],
        "qwen2": ["abc", "Ġ", "1", "2", "3", "4", "5", "ĊĊ", "x"],
        "smollm": ["abc", "Ġ", "1", "2", "3", "4", "5", "Ċ", "Ċ", "x"],
    }
    for pre, pieces in expected.items():
        tokenizer = Tokenizer.from_str(json.dumps(gguf_tokenizer_json({**meta, "tokenizer.ggml.pre": pre})))
        split = tokenizer.pre_tokenizer.pre_tokenize_str("abc 12345\n\nx")
        assert [piece for piece, _ in split] == pieces, pre
    assert {"smollm", "gpt2", "llama-bpe", "llama3", "qwen2", "default"} <= set(PRE_TOKENIZERS)


def test_byte_level_respells_raw_normal_tokens() -> None:
    # A normal token stored with raw characters ("€", UTF-8 E2 82 AC) is respelled in GPT-2's byte
    # alphabet: E2 -> "â" (printable), 82 -> "Ĥ" (non-printable bytes count up from U+0100: 0..32 take
    # U+0100..U+0120, 127.. start at U+0121, so 130 -> U+0124), AC -> "¬". Control tokens keep their text.
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["<eos>", "€", "â", "Ĥ", "¬", "âĤ", "c"],
        "tokenizer.ggml.token_type": [3, 1, 1, 1, 1, 1, 1],
        "tokenizer.ggml.merges": ["â Ĥ", "âĤ ¬"],
    }
    document = gguf_tokenizer_json(meta)
    assert document["model"]["vocab"]["âĤ¬"] == 1 and "€" not in document["model"]["vocab"]
    tokenizer = Tokenizer.from_str(json.dumps(document))
    assert tokenizer.encode("c€<eos>").ids == [6, 1, 0]
    assert tokenizer.decode([6, 1, 0], skip_special_tokens=False) == "c€<eos>"


def test_byte_level_add_bos_and_eos() -> None:
    meta = {**byte_level_vocab().metadata(), "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True}
    tokenizer = Tokenizer.from_str(json.dumps(gguf_tokenizer_json(meta)))
    vocab = byte_level_vocab()
    ids = tokenizer.encode("hi").ids
    assert ids[0] == vocab.bos and ids[-1] == vocab.eos and len(ids) >= 3
    pair = tokenizer.encode("a", "b").ids
    assert pair.count(vocab.bos) == 2 and pair.count(vocab.eos) == 2
    config = gguf_tokenizer_config(meta)
    assert config["add_bos_token"] is True and config["add_eos_token"] is True
    assert "chat_template" not in config and "model_max_length" not in config
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_no_token_types_means_all_normal() -> None:
    meta = byte_level_vocab().metadata()
    del meta["tokenizer.ggml.token_type"]
    assert gguf_tokenizer_json(meta)["added_tokens"] == []


# ------------------------------------------------------------------------------------------ files and errors


def test_save_writes_both_files_atomically(tmp_path: Path) -> None:
    meta = {**sentencepiece_vocab().metadata(), "general.architecture": "llama", "llama.context_length": 64}
    paths = save_gguf_tokenizer(meta, tmp_path / "new")
    assert paths == [tmp_path / "new" / "tokenizer.json", tmp_path / "new" / "tokenizer_config.json"]
    assert json.loads(paths[0].read_text()) == gguf_tokenizer_json(meta)
    assert json.loads(paths[1].read_text()) == gguf_tokenizer_config(meta) | {"model_max_length": 64}
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "t5"}, "tokenizer.ggml.model 't5' is not supported; supported: gpt2, llama"),
        ({"tokenizer.ggml.pre": "nope"}, "tokenizer.ggml.pre 'nope' is not supported"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
        ({"tokenizer.ggml.merges": ["Ġt"]}, "merges entry 'Ġt' is not two tokens"),
        ({"tokenizer.ggml.eos_token_id": 10**6}, "eos_token_id 1000000 is outside the vocabulary"),
        ({"tokenizer.ggml.add_eos_token": True, "tokenizer.ggml.eos_token_id": None}, "eos_token_id is missing"),
    ],
)
def test_bad_metadata_raises(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    meta = {**byte_level_vocab().metadata(), **change}
    meta = {k: v for k, v in meta.items() if v is not None}
    with pytest.raises(ConversionError, match=message):
        save_gguf_tokenizer(meta, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing is written when the metadata is bad


@pytest.mark.parametrize("key", ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"])
def test_missing_key_is_named(key: str) -> None:
    meta = byte_level_vocab().metadata()
    del meta[key]
    with pytest.raises(ConversionError, match=f"no '{key}'"):
        gguf_tokenizer_json(meta)


def test_sentencepiece_without_scores_or_merges_is_named() -> None:
    meta = sentencepiece_vocab().metadata()
    del meta["tokenizer.ggml.scores"]
    with pytest.raises(ConversionError, match=re.escape("no 'tokenizer.ggml.scores'")):
        gguf_tokenizer_json(meta)
    with pytest.raises(ConversionError, match=re.escape("no 'tokenizer.ggml.tokens'")):
        gguf_tokenizer_config({"tokenizer.ggml.model": "llama"})
