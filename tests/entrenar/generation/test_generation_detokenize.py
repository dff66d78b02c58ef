"""`IncrementalDetokenizer`: streamed pieces concatenate to the one-shot decoding and never split a character.

Oracle: the tokenizer's own `decode` of all ids at once. The tiny byte-level BPE tokenizer (1024 entries,
trained on English) splits most non-ASCII characters over several tokens, so the multi-byte path runs;
a test asserts that decoding token by token would print U+FFFD there. A SentencePiece-style (Metaspace)
tokenizer checks the leading-space case.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers

from aprender.text import Tokenizer
from entrenar.generation import IncrementalDetokenizer

REPLACEMENT = "\ufffd"
# Letters from several scripts and emoji: 1 to 4 UTF-8 bytes each.
texts = st.text(alphabet=st.sampled_from(list("ab cd.\néüßñ中文日本語한국어😀🎉👍🏽∑√")), max_size=40)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_tokenizer_dir)


def _stream(decoder: object, ids: list[int], *, skip_special_tokens: bool = True) -> list[str]:
    stream = IncrementalDetokenizer(decoder, skip_special_tokens=skip_special_tokens)  # type: ignore[arg-type]
    pieces = [stream.push([token]) for token in ids]
    pieces.append(stream.flush())
    assert stream.text == "".join(pieces)
    return pieces


@settings(max_examples=60, deadline=None)
@given(text=texts)
def test_pieces_join_to_the_full_decoding_and_hold_whole_characters(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any(REPLACEMENT in piece for piece in pieces)


def test_a_character_split_over_tokens_is_printed_once_complete(tokenizer: Tokenizer) -> None:
    text = "x 😀 中"
    ids = tokenizer.encode(text)
    assert any(REPLACEMENT in tokenizer.decode([token]) for token in ids)  # token-by-token decoding would break it
    pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == text
    assert "" in pieces[:-1]  # a push that completed no character printed nothing
    assert not any(REPLACEMENT in piece for piece in pieces)
    assert pieces[-1] == ""  # nothing was held back at the end


def test_special_tokens_are_skipped_or_kept(tokenizer: Tokenizer) -> None:
    end = tokenizer.token_to_id("<|im_end|>")
    assert end is not None
    ids = [*tokenizer.encode("Hi there"), end]
    assert "".join(_stream(tokenizer, ids)) == "Hi there"
    assert "".join(_stream(tokenizer, ids, skip_special_tokens=False)) == "Hi there<|im_end|>"


def test_incomplete_bytes_at_the_end_come_out_on_flush(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀")
    cut = next(i for i in range(len(ids), 0, -1) if tokenizer.decode(ids[:i]).endswith(REPLACEMENT))
    stream = IncrementalDetokenizer(tokenizer)
    pushed = stream.push(ids[:cut])
    assert REPLACEMENT not in pushed
    assert pushed + stream.flush() == tokenizer.decode(ids[:cut])  # the dangling bytes decode to U+FFFD
    assert stream.flush() == ""


def test_sentencepiece_leading_spaces_survive_streaming() -> None:
    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    ids = [1, 2, 3, 2]
    full = backend.decode(ids)
    assert full == "Hello world! world"
    assert "".join(backend.decode([token]) for token in ids) == "Helloworld!world"  # naive streaming loses spaces
    assert "".join(_stream(Tokenizer(backend), ids)) == full
