"""aprender.text.tokenizer: loading, encoding, special tokens and saving, against transformers.

Oracle: transformers' `AutoTokenizer.from_pretrained` (a `TokenizersBackend`, i.e. the v5
`PreTrainedTokenizerFast`) on the very same files. Tokenizers are trained here with the
`tokenizers` library directly, so these tests do not depend on `aprender.text.bpe`.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend
from transformers import AutoTokenizer

from aprender.errors import AprenderError, TokenizerError
from aprender.text import Encoding, Tokenizer
from aprender.text.tokenizer import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE

CORPUS = [
    "The harbour woke before the town did. Gulls wheeled over the stern in a noisy white cloud.",
    "Marta had run that bakery for nineteen years; she knew the weather by the way the dough behaved.",
    "Ünïcödé wörds, café crème, naïve façade — 日本語のテキスト, emoji 🎉🙂 and tabs\tand\nnewlines.",
    "def add(a, b):\n    return a + b  # numbers 0123456789 and symbols <>[]{}()!?",
] * 20
SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
    "Hello world",
    "The harbour woke before the town did.",
    "  leading and trailing spaces  ",
    "café 日本語 🎉 naïve",
    "<|im_start|>user\nhi<|im_end|>\n",
    "a<s>b</s>c<pad>",
    "",
    "\n\n\t",
]


def _backend(post: str | None = None) -> Backend:
    """A byte-level BPE trained on CORPUS, with the post-processor named by `post`."""
    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if post == "bos":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
        )
    elif post == "bos_eos":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
        )
    elif post == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


def _write(folder: Path, backend: Backend, config: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


BASE_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def _assert_same_as_hf(ours: Tokenizer, folder: Path, texts: list[str] = TEXTS) -> None:
    """ids, offsets, decode and special ids equal AutoTokenizer's on the same folder."""
    hf = AutoTokenizer.from_pretrained(folder)
    for text in texts:
        for add in (True, False):
            want = hf(text, add_special_tokens=add, return_offsets_mapping=True)
            got = ours.encode_with_offsets(text, add_special_tokens=add)
            assert got.ids == want["input_ids"] == ours.encode(text, add_special_tokens=add), (text, add)
            assert got.offsets == [tuple(o) for o in want["offset_mapping"]], (text, add)
        ids = hf.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.vocab_size == len(hf)
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
    assert ours.special_tokens == hf.special_tokens_map


# ----------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("post", [None, "bos", "bos_eos", "bytelevel"])
@pytest.mark.parametrize("flags", [{}, {"add_bos_token": True}, {"add_bos_token": False, "add_eos_token": True}])
def test_encoding_equals_transformers(tmp_path: Path, post: str | None, flags: dict[str, bool]) -> None:
    # transformers 5 drops add_bos_token/add_eos_token when tokenizer.json exists: the post-processor rules.
    folder = _write(tmp_path / "tok", _backend(post), {**BASE_CONFIG, **flags})
    ours = Tokenizer.from_dir(folder)
    _assert_same_as_hf(ours, folder)
    assert ours.add_bos_token == (post in ("bos", "bos_eos"))
    assert ours.add_eos_token == (post == "bos_eos")


def test_from_file_equals_from_dir_and_works_without_config(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend("bos"), BASE_CONFIG)
    a = Tokenizer.from_file(folder / "tokenizer.json", folder / "tokenizer_config.json")
    b = Tokenizer.from_dir(folder)
    assert a.encode("café 🎉") == b.encode("café 🎉") and a.special_tokens == b.special_tokens
    bare = Tokenizer.from_file(folder / "tokenizer.json")
    assert bare.special_tokens == {} and bare.bos_token_id is None and bare.chat_template is None
    # Without a config there is no bos_token, so add_bos_token reports False even though <s> (id 0) is added.
    assert bare.encode("a")[0] == 0 and bare.add_bos_token is False
    no_config = _write(tmp_path / "bare", _backend(), None)
    _assert_same_as_hf(Tokenizer.from_dir(no_config), no_config)


def test_encode_batch_and_decode_batch_match_single_calls(tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_write(tmp_path / "tok", _backend("bos_eos"), BASE_CONFIG))
    for add in (True, False):
        assert tok.encode_batch(TEXTS, add_special_tokens=add) == [tok.encode(t, add_special_tokens=add) for t in TEXTS]
    batch = tok.encode_batch(TEXTS)
    for skip in (True, False):
        assert tok.decode_batch(batch, skip_special_tokens=skip) == [
            tok.decode(i, skip_special_tokens=skip) for i in batch
        ]
    # Round trip without special tokens is exact for byte-level BPE.
    assert tok.decode_batch(tok.encode_batch(TEXTS, add_special_tokens=False)) == TEXTS


def test_offsets_cover_the_text_and_inserted_tokens_are_empty(tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_write(tmp_path / "tok", _backend("bos_eos"), BASE_CONFIG))
    text = "Hello café"
    enc = tok.encode_with_offsets(text)
    assert isinstance(enc, Encoding)
    assert enc.ids[0] == tok.bos_token_id and enc.ids[-1] == tok.eos_token_id
    assert enc.offsets[0] == (0, 0) and enc.offsets[-1] == (0, 0)
    # Hand check: the body offsets tile the text from 0 to len(text) with no gap.
    body = enc.offsets[1:-1]
    assert body[0][0] == 0 and body[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(body))


def test_token_to_id_and_back(tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_write(tmp_path / "tok", _backend(), BASE_CONFIG))
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for token in ("<s>", "<|im_end|>", "Ġthe", "a"):
        token_id = tok.token_to_id(token)
        assert token_id == hf.convert_tokens_to_ids(token) and token_id is not None
        assert tok.id_to_token(token_id) == token
    assert tok.token_to_id("no-such-token-xyz") is None
    assert tok.id_to_token(10**6) is None
    assert isinstance(tok.backend, Backend)
    assert "vocab_size=" in repr(tok)


# ---------------------------------------------------------------------------- special tokens


def test_special_tokens_missing_from_tokenizer_json_are_added_like_transformers(tmp_path: Path) -> None:
    """bos/unk/model-specific named tokens and extras absent from tokenizer.json get new ids in HF's order."""
    config = {
        **BASE_CONFIG,
        "image_token": "<image>",  # model-specific named token
        "sep_token": None,  # an unset name is no token
        "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": False},
        "additional_special_tokens": ["<x1>", {"__type": "AddedToken", "content": "<x2>", "lstrip": False}],
        "add_bos_token": True,
    }
    folder = _write(tmp_path / "tok", _backend(), config)
    ours = Tokenizer.from_dir(folder)
    texts = [*TEXTS, "a<image>b<x2><x1><unk>"]
    _assert_same_as_hf(ours, folder, texts)
    hf = AutoTokenizer.from_pretrained(folder)
    assert ours.extra_special_tokens == hf.extra_special_tokens == ["<x1>", "<x2>"]
    assert ours.special_tokens["image_token"] == "<image>"
    # Hand check of the order: 400 trained ids, then unk (standard name), image (model-specific), <x1>, <x2>.
    assert [ours.token_to_id(t) for t in ("<unk>", "<image>", "<x1>", "<x2>")] == [400, 401, 402, 403]


def test_extra_special_tokens_dict_names_model_specific_tokens(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), {**BASE_CONFIG, "extra_special_tokens": {"image_token": "<img>"}})
    ours = Tokenizer.from_dir(folder)
    _assert_same_as_hf(ours, folder, ["a<img>b"])
    assert ours.special_tokens["image_token"] == "<img>" and ours.token_to_id("<img>") == 400
    assert ours.extra_special_tokens == []


def test_named_token_listed_as_plain_added_token_becomes_special(tmp_path: Path) -> None:
    backend = _backend()
    backend.add_tokens([AddedToken("<q>", special=False)])
    folder = _write(tmp_path / "tok", backend, {**BASE_CONFIG, "bos_token": "<q>"})
    ours = Tokenizer.from_dir(folder)
    _assert_same_as_hf(ours, folder, ["a<q>b"])
    assert ours.decode(ours.encode("a<q>b"), skip_special_tokens=True) == "ab"


def test_added_tokens_decoder_adds_declared_tokens(tmp_path: Path) -> None:
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    added = {
        "400": {"content": "<tool>", **flags, "special": False},
        "401": {"content": "<sp>", **flags, "special": True},
    }
    folder = _write(tmp_path / "tok", _backend(), {**BASE_CONFIG, "added_tokens_decoder": added})
    ours = Tokenizer.from_dir(folder)
    _assert_same_as_hf(ours, folder, ["x<tool>y<sp>z"])
    assert ours.token_to_id("<tool>") == 400 and ours.token_to_id("<sp>") == 401
    assert ours.decode(ours.encode("x<tool>y<sp>z"), skip_special_tokens=True) == "x<tool>yz"


def test_legacy_special_tokens_map_is_read_when_config_has_no_added_tokens(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), {"tokenizer_class": "PreTrainedTokenizerFast"})
    legacy = {"bos_token": {"content": "<s>", "lstrip": False, "normalized": False}, "eos_token": "</s>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(legacy), encoding="utf-8")
    ours = Tokenizer.from_dir(folder)
    assert ours.bos_token == "<s>" and ours.eos_token == "</s>"
    _assert_same_as_hf(ours, folder)


def test_split_special_tokens_encodes_them_as_text(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), {**BASE_CONFIG, "split_special_tokens": True})
    ours = Tokenizer.from_dir(folder)
    _assert_same_as_hf(ours, folder, ["<|im_start|>user"])
    assert ours.token_to_id("<|im_start|>") not in ours.encode("<|im_start|>user")


def test_clean_up_tokenization_spaces_applies_to_wordpiece_not_bpe(tmp_path: Path) -> None:
    wp = Backend(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer()
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[PAD]"], show_progress=False)
    wp.train_from_iterator(CORPUS, trainer=trainer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "clean_up_tokenization_spaces": True}
    folder = _write(tmp_path / "wp", wp, config)
    ours = Tokenizer.from_dir(folder)
    text = "the town did . she knew , right ?"
    _assert_same_as_hf(ours, folder, [text])
    # Hand check: " ." -> ".", " ," -> ",", " ?" -> "?".
    assert ours.decode(ours.encode(text)) == "the town did. she knew, right?"
    bpe = _write(tmp_path / "bpe", _backend(), {**BASE_CONFIG, "clean_up_tokenization_spaces": True})
    assert Tokenizer.from_dir(bpe).decode(Tokenizer.from_dir(bpe).encode("did .")) == "did ."


def test_setting_add_bos_and_add_eos_matches_transformers_setters(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), BASE_CONFIG)
    ours, hf = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
    hf_setters: Any = hf
    assert (ours.add_bos_token, ours.add_eos_token) == (False, False)
    for bos, eos in ((True, False), (True, True), (False, True), (False, False)):
        ours.add_bos_token = bos
        ours.add_eos_token = eos
        hf_setters.add_bos_token = bos
        hf_setters.add_eos_token = eos
        assert (ours.add_bos_token, ours.add_eos_token) == (bos, eos)
        for text in TEXTS:
            assert ours.encode(text) == hf.encode(text), (bos, eos, text)
    ours.add_eos_token = True
    assert ours.encode("a")[-1] == ours.eos_token_id and ours.encode("a", add_special_tokens=False)[-1] != 1


def test_add_bos_without_a_bos_token_is_an_error(tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_write(tmp_path / "tok", _backend(), {"eos_token": "</s>"}))
    with pytest.raises(TokenizerError, match="bos_token"):
        tok.add_bos_token = True


# ----------------------------------------------------------------------------- chat templates

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
TOOLS = "{% for m in messages %}{{ m.content }}{% endfor %}{{ tools | length }}"


def test_chat_template_string_and_named_list(tmp_path: Path) -> None:
    folder = _write(tmp_path / "one", _backend(), {**BASE_CONFIG, "chat_template": CHATML})
    assert Tokenizer.from_dir(folder).chat_template == CHATML
    named = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": TOOLS}]
    folder = _write(tmp_path / "many", _backend(), {**BASE_CONFIG, "chat_template": named})
    ours, hf = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == hf.chat_template == {"default": CHATML, "tool_use": TOOLS}
    for name in (None, "default", "tool_use", "{{ 'inline' }}"):
        assert ours.get_chat_template(name) == hf.get_chat_template(name)
    assert ours.get_chat_template(use_tools=True) == hf.get_chat_template(tools=[{}]) == TOOLS


def test_chat_template_files_take_priority(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), {**BASE_CONFIG, "chat_template": "ignored"})
    (folder / CHAT_TEMPLATE_FILE).write_text(CHATML, encoding="utf-8")
    assert Tokenizer.from_dir(folder).chat_template == AutoTokenizer.from_pretrained(folder).chat_template == CHATML
    (folder / CHAT_TEMPLATE_DIR).mkdir()
    (folder / CHAT_TEMPLATE_DIR / "tool_use.jinja").write_text(TOOLS, encoding="utf-8")
    ours, hf = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == hf.chat_template == {"default": CHATML, "tool_use": TOOLS}


def test_template_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), BASE_CONFIG)
    # Hand count: "{{ 'caf" is 7 bytes, so the Latin-1 é sits at byte 7.
    (folder / CHAT_TEMPLATE_FILE).write_bytes(b"{{ 'caf\xe9' }}")
    with pytest.raises(TokenizerError, match=r"chat_template.jinja: not UTF-8 text \(byte 7\)"):
        Tokenizer.from_dir(folder)


def test_get_chat_template_errors(tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_write(tmp_path / "tok", _backend(), BASE_CONFIG))
    with pytest.raises(TokenizerError, match="no chat_template"):
        tok.get_chat_template()
    assert tok.get_chat_template("{{ x }}") == "{{ x }}"
    tok.chat_template = {"a": "A", "b": "B"}
    with pytest.raises(TokenizerError, match="none named 'default'"):
        tok.get_chat_template()
    assert tok.get_chat_template("b") == "B"
    for bad in (42, {}, {"a": 1}):
        with pytest.raises(TokenizerError, match="chat_template"):
            tok.chat_template = bad  # type: ignore[assignment]


def test_model_max_length(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), {**BASE_CONFIG, "model_max_length": 2048})
    assert Tokenizer.from_dir(folder).model_max_length == 2048 == AutoTokenizer.from_pretrained(folder).model_max_length
    huge = _write(tmp_path / "huge", _backend(), {**BASE_CONFIG, "model_max_length": 1e30})
    assert Tokenizer.from_dir(huge).model_max_length == int(1e30)
    assert Tokenizer.from_dir(_write(tmp_path / "none", _backend(), BASE_CONFIG)).model_max_length is None


# ------------------------------------------------------------------------------------ saving


def test_save_round_trips_and_transformers_loads_it(tmp_path: Path) -> None:
    config = {
        **BASE_CONFIG,
        "chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": TOOLS}],
        "model_max_length": 4096,
        "padding_side": "left",  # a key we do not interpret: kept as is
        "additional_special_tokens": ["<x1>"],
    }
    ours = Tokenizer.from_dir(_write(tmp_path / "src", _backend(), config))
    ours.add_bos_token = True
    tok_path, cfg_path = ours.save(tmp_path / "out" / "nested")
    assert tok_path.name == "tokenizer.json" and cfg_path.name == "tokenizer_config.json"
    assert sorted(p.name for p in tok_path.parent.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    saved = json.loads(cfg_path.read_text(encoding="utf-8"))
    assert saved["padding_side"] == "left" and saved["add_bos_token"] is True and saved["model_max_length"] == 4096
    again = Tokenizer.from_dir(tok_path.parent)
    assert again.chat_template == ours.chat_template and again.model_max_length == 4096
    assert again.special_tokens == ours.special_tokens and again.extra_special_tokens == ["<x1>"]
    assert again.add_bos_token and not again.add_eos_token
    for text in [*TEXTS, "a<x1>b"]:
        assert again.encode(text) == ours.encode(text)
    hf = AutoTokenizer.from_pretrained(tok_path.parent)
    assert hf.padding_side == "left" and hf.chat_template == ours.chat_template
    _assert_same_as_hf(again, tok_path.parent, [*TEXTS, "a<x1>b"])


def test_with_backend_keeps_the_config_over_an_edited_pipeline(tmp_path: Path) -> None:
    config = {**BASE_CONFIG, "chat_template": CHATML, "model_max_length": 64, "padding_side": "left"}
    ours = Tokenizer.from_dir(_write(tmp_path / "src", _backend(), {**config, "split_special_tokens": True}))
    backend = Backend.from_str(ours.backend.to_str())
    backend.add_tokens(["<new>"])
    edited = ours.with_backend(backend)
    assert edited.token_to_id("<new>") == ours.vocab_size and ours.token_to_id("<new>") is None
    assert edited.special_tokens == ours.special_tokens and edited.chat_template == CHATML
    assert edited.backend.encode_special_tokens is True
    edited.save(tmp_path / "a")
    ours.save(tmp_path / "b")
    saved_a, saved_b = (json.loads((tmp_path / d / "tokenizer_config.json").read_text()) for d in "ab")
    # The configs differ only in the added token (id 400 = the 400 trained ids, specials included).
    assert saved_a.pop("added_tokens_decoder").keys() - saved_b.pop("added_tokens_decoder").keys() == {"400"}
    assert saved_a == saved_b


def test_save_single_template_and_trained_from_scratch(tmp_path: Path) -> None:
    tok = Tokenizer(_backend(), special_tokens={"eos_token": "<end>"}, chat_template=CHATML, model_max_length=64)
    assert tok.token_to_id("<end>") == 400  # added after the 400 trained ids
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved["chat_template"] == CHATML and saved["eos_token"] == "<end>"
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == CHATML


def test_save_refuses_folders_with_shadowing_template_files(tmp_path: Path) -> None:
    tok = Tokenizer(_backend(), chat_template=CHATML)
    for shadow in (tmp_path / "a" / CHAT_TEMPLATE_FILE, tmp_path / "b" / CHAT_TEMPLATE_DIR / "x.jinja"):
        shadow.parent.mkdir(parents=True)
        shadow.write_text("x", encoding="utf-8")
        folder = tmp_path / shadow.relative_to(tmp_path).parts[0]
        with pytest.raises(TokenizerError, match="would override"):
            tok.save(folder)
        assert not (folder / "tokenizer.json").exists()


def test_save_is_atomic_when_replace_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = Tokenizer(_backend(), chat_template=CHATML)
    tok.save(tmp_path)
    before = (tmp_path / "tokenizer.json").read_bytes()
    tok.chat_template = "changed"

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


# ------------------------------------------------------------------------------------ errors


def _error(path_fn: Any) -> str:
    with pytest.raises(TokenizerError) as info:
        path_fn()
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, AprenderError)
    return message


def test_missing_and_invalid_files_name_the_path(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in _error(lambda: Tokenizer.from_dir(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "tokenizer.json" in _error(lambda: Tokenizer.from_dir(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}', encoding="utf-8")
    assert "not a valid tokenizer.json" in _error(lambda: Tokenizer.from_dir(bad))
    good = _write(tmp_path / "good", _backend(), None)
    config = good / "tokenizer_config.json"
    config.write_text("{not json", encoding="utf-8")
    assert str(config) in _error(lambda: Tokenizer.from_dir(good))
    config.write_text("[1, 2]", encoding="utf-8")
    assert "JSON object" in _error(lambda: Tokenizer.from_dir(good))
    assert "file not found" in _error(lambda: Tokenizer.from_file(good / "tokenizer.json", tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"chat_template": 5}, "chat_template must be"),
        ({"chat_template": [{"template": "x"}]}, "'name' and 'template'"),
        ({"added_tokens_decoder": ["x"]}, "added_tokens_decoder"),
        ({"added_tokens_decoder": {"400": {"special": True}}}, r"added_tokens_decoder\[400\]"),
        ({"added_tokens_decoder": {"999": {"content": "<new>"}}}, "is id 999 in the config but 400"),
        ({"model_max_length": -1}, "model_max_length"),
        ({"model_max_length": "big"}, "model_max_length"),
    ],
)
def test_invalid_config_values(tmp_path: Path, config: dict[str, Any], match: str) -> None:
    folder = _write(tmp_path / "tok", _backend(), config)
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_dir(folder)


def test_chat_template_dict_in_config_is_accepted(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tok", _backend(), {"chat_template": {"default": "D"}})
    assert Tokenizer.from_dir(folder).chat_template == {"default": "D"}
