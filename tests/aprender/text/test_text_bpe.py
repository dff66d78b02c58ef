"""aprender.text.bpe: byte-level BPE training is lossless, deterministic and loads in transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from aprender.errors import TokenizerError
from aprender.text import Tokenizer, train_bpe

LINES = [
    "The harbour woke before the town did. At half past five the first trawler came round the breakwater.",
    "Marta had run that bakery for nineteen years: she knew the weather by the way the dough behaved.",
    "Ünïcödé: café crème, naïve façade, Straße, 日本語のテキスト, русский текст, emoji 🎉🙂.",
    "def add(a, b):\n    return a + b  # 0123456789",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("corpus")
    first, second = folder / "a.txt", folder / "b.txt"
    first.write_text("\n".join(LINES[:2] * 30) + "\n", encoding="utf-8")
    second.write_text("\n".join(LINES[2:] * 30) + "\n", encoding="utf-8")
    return [first, second]


@pytest.fixture(scope="module")
def trained(corpus: list[Path]) -> Tokenizer:
    return train_bpe(corpus, 450, special_tokens=SPECIALS, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_special_tokens_take_the_first_ids_in_order(trained: Tokenizer) -> None:
    # special_tokens first, then bos, eos, pad: ids 0..5.
    order = [*SPECIALS, "<s>", "</s>", "<pad>"]
    assert [trained.token_to_id(t) for t in order] == list(range(6))
    assert trained.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    assert trained.extra_special_tokens == SPECIALS
    assert (trained.bos_token_id, trained.eos_token_id, trained.pad_token_id) == (3, 4, 5)
    assert trained.vocab_size == 450  # the corpus has enough distinct pairs to fill the budget
    assert not trained.add_bos_token and not trained.add_eos_token
    assert trained.encode("<|im_start|>user")[0] == 1


def test_byte_alphabet_covers_unseen_characters(trained: Tokenizer) -> None:
    text = "ǅ ℵ 🜁 \x00 \u200b"  # none of these appear in the corpus
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    # Each unseen character is split into its UTF-8 bytes: at least one token per byte of the rarest ones.
    assert len(ids) >= len("🜁".encode())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_round_trip_of_arbitrary_unicode(trained: Tokenizer, text: str) -> None:
    assert trained.decode(trained.encode(text)) == text
    enc = trained.encode_with_offsets(text)
    # Offsets of a byte-level tokenizer without trimming stay inside the text and never go backwards.
    assert all(0 <= s <= e <= len(text) for s, e in enc.offsets)
    assert [s for s, _ in enc.offsets] == sorted(s for s, _ in enc.offsets)


def test_training_is_deterministic_in_and_across_processes(corpus: list[Path], trained: Tokenizer) -> None:
    again = train_bpe(corpus, 450, special_tokens=SPECIALS, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert again.backend.to_str() == trained.backend.to_str()
    # A fresh interpreter with another hash seed (Python and Rust hash maps) must learn the same merges.
    code = (
        "import sys; from aprender.text import train_bpe; "
        f"t = train_bpe(sys.argv[1:], 450, special_tokens={SPECIALS!r}, bos_token='<s>', eos_token='</s>', "
        "pad_token='<pad>'); sys.stdout.write(t.backend.to_str())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, *map(str, corpus)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == trained.backend.to_str()


def test_min_frequency_controls_which_pairs_merge(tmp_path: Path) -> None:
    # Hand-computed corpus: the pair ("x", "y") occurs 3 times, ("q", "z") once.
    path = tmp_path / "c.txt"
    path.write_text("xy xy xy qz\n", encoding="utf-8")
    strict = train_bpe(path, 400, min_frequency=2)
    loose = train_bpe(str(path), 400, min_frequency=1)
    assert strict.token_to_id("xy") is not None and strict.token_to_id("qz") is None
    assert loose.token_to_id("qz") is not None
    assert strict.vocab_size < loose.vocab_size


def test_saved_tokenizer_loads_in_transformers_with_same_ids(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_dir(tmp_path)
    texts = [*LINES, "<|im_start|>user\nhi<|im_end|>\n", "café 🎉", ""]
    for text in texts:
        assert ours.encode(text) == hf.encode(text) == trained.encode(text)
        assert hf.decode(hf.encode(text)) == text
    assert hf.bos_token == "<s>" and hf.eos_token_id == 4 and len(hf) == trained.vocab_size
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["extra_special_tokens"] == SPECIALS


def test_named_token_already_in_special_tokens_is_not_duplicated(corpus: list[Path]) -> None:
    tok = train_bpe(corpus, 400, special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.extra_special_tokens == []
    assert tok.eos_token_id == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 258, "special_tokens": ["<a>", "<b>", "<c>"]}, "vocab_size=258 is too small"),
        ({"vocab_size": 400, "min_frequency": -1}, "min_frequency=-1"),
    ],
)
def test_invalid_arguments(corpus: list[Path], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TokenizerError, match=match):
        train_bpe(corpus, **kwargs)  # type: ignore[arg-type]


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="files is empty"):
        train_bpe([], 400)
    with pytest.raises(TokenizerError, match="training file not found"):
        train_bpe([tmp_path / "missing.txt"], 400)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(TokenizerError, match=r"latin1.txt: not UTF-8 text \(byte 3\)"):
        train_bpe([latin1], 400)
