"""llama.cpp pre-tokenizer names: identified as llama.cpp's converter does, and only names llama.cpp accepts.

Oracles: llama.cpp's own files (extracted by `make test` from the pinned llama-cpp-python source): its
converter's hash table and test text (`conversion/base.py`), the names its loader accepts
(`src/llama-vocab.cpp`), its real vocabularies and the ids transformers gives for its tokenizer tests; and
transformers' AutoTokenizer, which llama.cpp's converter hashes with.
"""

from __future__ import annotations

import ast
import json
import re
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from aprender.errors import ConversionError
from aprender.format.gguf_tokenizer import gguf_tokenizer_json
from aprender.format.llama_cpp_pre import (
    CHECK_TEXT,
    IGNORE_MERGES,
    KNOWN_HASHES,
    LLAMA_CPP_PRE_NAMES,
    PRE_TOKENIZERS,
    identify_pre_tokenizer,
    pre_tokenizer_hash,
    split_patterns,
)
from aprender.text import Tokenizer
from fixtures.llama_cpp import HUB_FAMILIES, LLAMA_CPP_DATA, SMOLLM2_HUB_PRE_TOKENIZER, hub_tokenizer_dir, vocab_tests

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
# Llama 3's tokenizer.json pre-tokenizer: its regex, then the byte-level alphabet without a second split.
LLAMA3_SPLIT = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRE_TOKENIZERS["llama-bpe"][0]}, "behavior": "Isolated"}
        | {"invert": False},
        {**BYTE_LEVEL, "use_regex": False},
    ],
}


def llama_cpp_source(relative: str) -> str:
    path = LLAMA_CPP_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing: `make test` extracts llama.cpp's sources")
    return path.read_text(encoding="utf-8")


def tokenizer_with(folder: Path, tmp_path: Path, **changes: Any) -> Tokenizer:
    """The tokenizer in `folder` with top-level tokenizer.json keys (or `model.*` keys) replaced."""
    document = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if key.startswith("model_"):
            document["model"][key.removeprefix("model_")] = value
        else:
            document[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_bytes((folder / "tokenizer_config.json").read_bytes())
    return Tokenizer.from_dir(tmp_path)


# ------------------------------------------------------------------------------------ llama.cpp's tables


def test_check_text_and_hash_table_are_llama_cpps() -> None:
    source = llama_cpp_source("conversion/base.py")
    body = source[source.index("def get_vocab_base_pre") : source.index("if res is None")]
    chktxt = re.search(r"chktxt = ('.*')\n", body)
    assert chktxt is not None and ast.literal_eval(chktxt.group(1)) == CHECK_TEXT
    theirs: dict[str, str] = {}
    for digest, name in re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n\s*#[^\n]*\n\s*res = "([^"]+)"', body):
        theirs[digest] = name  # consecutive `if`s: the last match wins, as in the converter
    assert len(theirs) > 80
    # every entry whose name llama.cpp loads is ours; the rest name WordPiece embedding models
    assert {digest: name for digest, name in theirs.items() if name in LLAMA_CPP_PRE_NAMES} == KNOWN_HASHES
    assert {name for name in theirs.values() if name not in LLAMA_CPP_PRE_NAMES} == {"bert-bge-large", "jina-v2-en"}


def test_accepted_names_are_llama_cpps() -> None:
    source = llama_cpp_source("src/llama-vocab.cpp")
    assert set(re.findall(r'tokenizer_pre == "([^"]+)"', source)) == LLAMA_CPP_PRE_NAMES
    assert "unknown pre-tokenizer type" in source  # what it does with any other name
    # "gpt2" (what our exporter used to write) is not among them: llama.cpp refused those files
    assert "gpt2" not in LLAMA_CPP_PRE_NAMES and "gpt-2" in LLAMA_CPP_PRE_NAMES


def test_every_name_we_can_write_is_accepted() -> None:
    assert set(KNOWN_HASHES.values()) <= LLAMA_CPP_PRE_NAMES
    assert {"gpt-2", "smollm", "llama-bpe", "qwen2", "default"} <= LLAMA_CPP_PRE_NAMES
    assert IGNORE_MERGES <= LLAMA_CPP_PRE_NAMES


# ------------------------------------------------------------------------------ the families, Hub layout


@pytest.mark.parametrize("family", sorted(HUB_FAMILIES))
def test_hub_tokenizers_give_llama_cpps_expected_ids(family: str) -> None:
    # the fixture is the real tokenizer: transformers' ids for llama.cpp's 47 tokenizer test texts
    tokenizer = AutoTokenizer.from_pretrained(hub_tokenizer_dir(family))
    cases = vocab_tests(HUB_FAMILIES[family][0])
    assert len(cases) == 47
    for text, expected in cases:
        assert tokenizer.encode(text, add_special_tokens=False) == expected, text


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_byte_level_families_are_named_by_their_hash(family: str) -> None:
    folder = hub_tokenizer_dir(family)
    ours = Tokenizer.from_dir(folder)
    theirs = AutoTokenizer.from_pretrained(folder)
    # the converter's hash: of transformers' ids for CHECK_TEXT, special tokens included
    assert pre_tokenizer_hash(ours) == sha256(str(theirs.encode(CHECK_TEXT)).encode()).hexdigest()
    assert pre_tokenizer_hash(ours) in KNOWN_HASHES
    assert identify_pre_tokenizer(ours) == HUB_FAMILIES[family][1]


def test_llama3_without_its_bos_is_another_tokenizer(tmp_path: Path) -> None:
    # the hash covers what encode() adds: Llama 3's vocabulary without BOS is Smaug's entry of the table
    tokenizer = tokenizer_with(hub_tokenizer_dir("llama"), tmp_path, post_processor=None)
    assert identify_pre_tokenizer(tokenizer) == "smaug-bpe"


@pytest.mark.slow
def test_smollm2_hub_layout_is_smollm(smollm2_hub_dir: Path, tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_dir(smollm2_hub_dir)
    assert KNOWN_HASHES[pre_tokenizer_hash(tokenizer)] == "smollm"
    assert identify_pre_tokenizer(tokenizer) == "smollm"
    # a tokenizer.json that splits with ByteLevel alone (before: "gpt2", which llama.cpp refuses) is still
    # SmolLM's vocabulary, and llama.cpp's converter names it by its ids
    byte_level_only = tokenizer_with(smollm2_hub_dir, tmp_path, pre_tokenizer=BYTE_LEVEL)
    assert identify_pre_tokenizer(byte_level_only) == "smollm"


# ------------------------------------------------------------------- tokenizers llama.cpp has never seen


def test_a_new_tokenizer_gets_the_name_that_splits_like_it(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    # the suite's own BPE (trained on tests/data/corpus.txt) splits with Qwen2's regex
    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    assert pre_tokenizer_hash(tokenizer) not in KNOWN_HASHES
    assert identify_pre_tokenizer(tokenizer) == "qwen2"
    as_llama3 = tokenizer_with(tiny_tokenizer_dir, tmp_path / "a", pre_tokenizer=LLAMA3_SPLIT, model_ignore_merges=True)
    assert identify_pre_tokenizer(as_llama3) == "llama-bpe"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}
    assert identify_pre_tokenizer(tokenizer_with(tiny_tokenizer_dir, tmp_path / "b", pre_tokenizer=digits)) == "smollm"
    assert identify_pre_tokenizer(tokenizer_with(tiny_tokenizer_dir, tmp_path / "c", pre_tokenizer=BYTE_LEVEL)) == (
        "gpt-2"
    )


def test_a_tokenizer_no_name_fits_is_refused(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    # Llama 3's split but merges applied as usual: llama.cpp's "llama-bpe" would tokenize differently
    folder = tmp_path / "a"
    tokenizer = tokenizer_with(tiny_tokenizer_dir, folder, pre_tokenizer=LLAMA3_SPLIT, model_ignore_merges=False)
    with pytest.raises(ConversionError, match=r"ignore_merges=False.*not one llama.cpp knows") as error:
        identify_pre_tokenizer(tokenizer)
    assert "\n" not in str(error.value) and pre_tokenizer_hash(tokenizer) in str(error.value)
    whitespace = tokenizer_with(tiny_tokenizer_dir, tmp_path / "b", pre_tokenizer={"type": "Whitespace"})
    with pytest.raises(ConversionError, match=r"has no llama\.cpp equivalent"):
        identify_pre_tokenizer(whitespace)


@pytest.mark.parametrize(
    ("pre_tokenizer", "expected"),
    [
        (BYTE_LEVEL, [PRE_TOKENIZERS["gpt-2"][0]]),
        ({**BYTE_LEVEL, "use_regex": False}, []),
        ({"type": "Digits", "individual_digits": False}, [r"\p{N}+"]),
        (SMOLLM2_HUB_PRE_TOKENIZER, list(PRE_TOKENIZERS["smollm"])),
    ],
)
def test_split_patterns(pre_tokenizer: dict[str, Any], expected: list[str]) -> None:
    assert split_patterns(pre_tokenizer) == expected


@pytest.mark.parametrize(
    ("pre_tokenizer", "message"),
    [
        (None, "has no pre_tokenizer"),
        ({"type": "ByteLevel", "add_prefix_space": True}, "has no llama.cpp equivalent"),
        ({"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": False}, "no llama.cpp"),
    ],
)
def test_split_patterns_refuse_what_llama_cpp_cannot_split(pre_tokenizer: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        split_patterns(pre_tokenizer)


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_the_reader_splits_each_name_with_its_regexes(name: str) -> None:
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.pre": name}
    metadata["tokenizer.ggml.merges"] = ["a b"]
    document = gguf_tokenizer_json(metadata)
    assert tuple(split_patterns(document["pre_tokenizer"])) == PRE_TOKENIZERS[name]
    # llama.cpp's Llama 3 names take a word found in the vocabulary whole
    assert document["model"]["ignore_merges"] is (name in IGNORE_MERGES)


@pytest.mark.parametrize(("name", "adds"), [("llama-bpe", True), ("qwen2", False), ("smollm", False)])
def test_the_reader_adds_bos_where_llama_cpp_does(name: str, adds: bool) -> None:
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.pre": name}
    metadata |= {"tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.bos_token_id": 2}
    document = gguf_tokenizer_json(metadata)
    assert ({"SpecialToken": {"id": "ab", "type_id": 0}} in document["post_processor"]["single"]) is adds
    metadata["tokenizer.ggml.add_bos_token"] = False  # the file's own key wins
    assert gguf_tokenizer_json(metadata)["post_processor"]["single"] == [{"Sequence": {"id": "A", "type_id": 0}}]
