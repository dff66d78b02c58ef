"""entrenar.data.dataset: loading every source kind, detection, invalid records, stats and the val split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aprender.text import Tokenizer
from entrenar.data import (
    Dataset,
    DataStats,
    EncodedSample,
    build_datasets,
    load_examples,
    pad_token_id,
    split_samples,
)
from entrenar.errors import DataError, InvalidRecordError

CHAT = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi, how are you?"}]
RECORDS: dict[str, dict[str, Any]] = {
    "text": {"text": "The cat sat on the mat."},
    "prompt_completion": {"prompt": "Hello there", "completion": "Hi, how are you?"},
    "alpaca": {"instruction": "Hello there", "input": "", "output": "Hi, how are you?"},
    "messages": {"messages": CHAT},
    "sharegpt": {
        "conversations": [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "Hi, how are you?"}]
    },
}


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def _texts(n: int) -> list[dict[str, str]]:
    return [{"text": f"sample number {k} of the set"} for k in range(n)]


@pytest.fixture
def qwen(tiny_checkpoints: dict[str, Path]) -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoints["qwen2"])


# ------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("format", list(RECORDS))
def test_each_jsonl_schema_is_detected_and_normalised(tmp_path: Path, format: str) -> None:
    file = _jsonl(tmp_path / "d.jsonl", [RECORDS[format], RECORDS[format]])
    examples, stats = load_examples(file)
    assert stats.format == format and stats.records == 2 and stats.files == (str(file),)
    assert [str(e.location) for e in examples] == [f"{file}:1", f"{file}:2"]
    if format == "text":
        assert examples[0].text == "The cat sat on the mat."
    else:  # every conversational schema says the same thing
        assert list(examples[0].messages) == CHAT


def test_parquet_loads_like_jsonl(tmp_path: Path) -> None:
    rows = [RECORDS["alpaca"], {"instruction": "Add", "input": "2 and 3", "output": "5"}]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    from_parquet, stats = load_examples(parquet)
    from_jsonl, _ = load_examples(_jsonl(tmp_path / "d.jsonl", rows))
    assert stats.format == "alpaca"
    assert [(e.messages, e.plain) for e in from_parquet] == [(e.messages, e.plain) for e in from_jsonl]
    assert str(from_parquet[1].location) == f"{parquet} row 2"


def test_text_files_directories_and_globs(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "b.txt").write_text("Para one.\n\nPara two.\n")
    _jsonl(root / "a.jsonl", [{"text": "From JSON."}])
    pq.write_table(pa.Table.from_pylist([{"text": "From Parquet."}]), root / "c.parquet")
    examples, stats = load_examples(root)
    assert [e.text for e in examples] == ["From JSON.", "Para one.", "Para two.", "From Parquet."]
    assert stats.files == (str(root / "a.jsonl"), str(root / "b.txt"), str(root / "c.parquet"))
    globbed, _ = load_examples(root / "*.txt")
    assert [e.text for e in globbed] == ["Para one.", "Para two."]


# ------------------------------------------------------------------------------------ detection


def test_mixed_schemas_are_an_error_even_when_skipping(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [RECORDS["messages"]])
    _jsonl(tmp_path / "b.jsonl", [RECORDS["text"]])
    for skip in (False, True):
        with pytest.raises(
            DataError, match=r"b\.jsonl:1: record has text keys but .*a\.jsonl:1 was detected as messages"
        ):
            load_examples(tmp_path, skip_invalid=skip)


def test_unknown_keys_error_lists_them(tmp_path: Path) -> None:
    file = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, RECORDS["text"]])
    with pytest.raises(
        InvalidRecordError,
        match=r"d\.jsonl:1: cannot tell the format from keys \[answer, question\]; "
        r"expected messages \(messages\), conversations \(sharegpt\), instruction\+output \(alpaca\)",
    ):
        load_examples(file)
    examples, stats = load_examples(file, skip_invalid=True)  # skipped, then the next record decides
    assert stats.format == "text" and stats.invalid == 1 and len(examples) == 1


def test_explicit_format_checks_every_record(tmp_path: Path) -> None:
    file = _jsonl(tmp_path / "d.jsonl", [RECORDS["prompt_completion"], RECORDS["text"]])
    with pytest.raises(InvalidRecordError, match=r"d\.jsonl:2: field 'prompt' is missing \(keys found: text\)"):
        load_examples(file, format="prompt_completion")
    _, stats = load_examples(file, format="prompt_completion", skip_invalid=True)
    assert stats.format == "prompt_completion" and stats.records == 1 and stats.invalid == 1
    with pytest.raises(DataError, match=r"format='chatml': expected auto or one of text, prompt_completion"):
        load_examples(file, format="chatml")


def test_malformed_lines_name_file_and_line_and_are_counted_when_skipped(tmp_path: Path) -> None:
    good = RECORDS["prompt_completion"]
    file = _jsonl(tmp_path / "d.jsonl", [good, "{not json", good, {"prompt": "p", "completion": ""}, "[1]", good])
    with pytest.raises(InvalidRecordError, match=r"^.*d\.jsonl:2: invalid JSON \(.*\); fix or remove the line$"):
        load_examples(file)
    examples, stats = load_examples(file, skip_invalid=True)
    assert len(examples) == 3 and stats.records == 3 and stats.invalid == 3
    assert [m.split(": ")[0] for m in stats.invalid_examples] == [f"{file}:2", f"{file}:4", f"{file}:5"]


def test_empty_dataset_names_the_path(tmp_path: Path) -> None:
    empty = _jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match=r"empty\.jsonl: no usable records; check the data path and format"):
        load_examples(empty)
    bad = _jsonl(tmp_path / "bad.jsonl", ["{", "{"])
    with pytest.raises(DataError, match=r"bad\.jsonl: no usable records \(2 invalid skipped, first: .*bad\.jsonl:1: "):
        load_examples(bad, skip_invalid=True)


# ------------------------------------------------------------------------------------ building


def test_build_encodes_every_sample(tmp_path: Path, qwen: Tokenizer) -> None:
    file = _jsonl(tmp_path / "d.jsonl", [RECORDS["messages"]] * 3)
    train, val = build_datasets(file, tokenizer=qwen, seq_len=256)
    assert val is None and len(train) == 3 and train.stats.records == 3
    assert train.lengths().tolist() == [len(s) for s in train.samples]
    # Each sample trains on "Hi, how are you?<|im_end|>".
    reply = qwen.encode("Hi, how are you?<|im_end|>", add_special_tokens=False)
    assert train.n_target_tokens == 3 * len(reply)
    assert train.pad_id == qwen.pad_token_id and not train.packing and train.units == [(0,), (1,), (2,)]


def test_options_are_wired(tmp_path: Path, qwen: Tokenizer) -> None:
    chats = _jsonl(tmp_path / "c.jsonl", [RECORDS["messages"]] * 4)
    completion, _ = build_datasets(chats, tokenizer=qwen, seq_len=256)
    everything, _ = build_datasets(chats, tokenizer=qwen, seq_len=256, train_on="all")
    assert everything.n_target_tokens == sum(len(s) - 1 for s in everything.samples) > completion.n_target_tokens
    packed, _ = build_datasets(chats, tokenizer=qwen, seq_len=256, packing=True)
    length = len(completion.samples[0])
    assert (
        packed.packing
        and len(packed) == -(-4 // (256 // length))
        and sorted(i for u in packed.units for i in u) == [0, 1, 2, 3]
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("One.\n\nTwo.\n\nThree.\n")
    assert len(build_datasets(notes, tokenizer=qwen, seq_len=64)[0]) == 3
    with pytest.raises(InvalidRecordError, match=r"field 'instruction' is missing"):
        build_datasets(chats, tokenizer=qwen, seq_len=64, format="alpaca")


def test_truncated_and_dropped_samples_are_counted(tmp_path: Path, qwen: Tokenizer) -> None:
    long_prompt = {"prompt": "word " * 200, "completion": "Done."}
    file = _jsonl(
        tmp_path / "d.jsonl", [RECORDS["prompt_completion"], long_prompt, RECORDS["text"] | {"text": "x " * 300}]
    )
    train, _ = build_datasets(file, tokenizer=qwen, seq_len=64, format="prompt_completion", skip_invalid=True)
    # Record 2's reply lies beyond 64 tokens: dropped. Record 3 lacks prompt: invalid. Record 1 fits.
    assert (train.stats.dropped, train.stats.invalid, train.stats.truncated, len(train)) == (1, 1, 0, 1)
    text_file = _jsonl(tmp_path / "t.jsonl", [{"text": "x " * 300}, {"text": "short"}])
    train, _ = build_datasets(text_file, tokenizer=qwen, seq_len=64)
    assert train.stats.truncated == 1 and train.lengths().tolist()[0] == 64
    with pytest.raises(DataError, match=r"e\.jsonl: no usable records"):
        build_datasets(_jsonl(tmp_path / "e.jsonl", []), tokenizer=qwen, seq_len=64)
    only_long = _jsonl(tmp_path / "l.jsonl", [long_prompt])
    with pytest.raises(DataError, match=r"all 1 samples have no reply token within seq_len=64"):
        build_datasets(only_long, tokenizer=qwen, seq_len=64)


def test_template_rejection_is_skippable(tmp_path: Path, qwen: Tokenizer) -> None:
    three = {"messages": [*CHAT, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    qwen.chat_template = "{% if messages|length > 2 %}{{ raise_exception('one turn only') }}{% endif %}" + (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    file = _jsonl(tmp_path / "d.jsonl", [RECORDS["messages"], three])
    with pytest.raises(InvalidRecordError, match=r"d\.jsonl:2: the chat template rejected the conversation: one turn"):
        build_datasets(file, tokenizer=qwen, seq_len=64)
    train, _ = build_datasets(file, tokenizer=qwen, seq_len=64, skip_invalid=True)
    assert len(train) == 1 and train.stats.invalid == 1 and train.stats.records == 1


def test_val_split_sizes_and_determinism(tmp_path: Path, qwen: Tokenizer) -> None:
    file = _jsonl(tmp_path / "d.jsonl", _texts(10))
    for fraction, expected in ((0.2, 2), (0.01, 1), (0.5, 5), (0.86, 9)):
        train, val = build_datasets(file, tokenizer=qwen, seq_len=64, val_split=fraction)
        assert val is not None and (len(train), len(val)) == (10 - expected, expected)
        assert val.stats is train.stats

    def held_out(seed: int) -> list[str]:
        _, val = build_datasets(file, tokenizer=qwen, seq_len=64, val_split=0.3, seed=seed)
        assert val is not None
        return [qwen.decode(s.ids.tolist()) for s in val.samples]

    assert held_out(3) == held_out(3)
    assert len({tuple(held_out(seed)) for seed in range(5)}) > 1
    train, val = build_datasets(file, tokenizer=qwen, seq_len=64, val_split=0.3, seed=3)
    texts = sorted(qwen.decode(s.ids.tolist()) for s in [*train.samples, *(val.samples if val else [])])
    assert texts == sorted(f"sample number {k} of the set<|im_end|>" for k in range(10))


def test_val_split_errors(tmp_path: Path, qwen: Tokenizer) -> None:
    one = _jsonl(tmp_path / "one.jsonl", _texts(1))
    with pytest.raises(DataError, match=r"val_split=0\.1 of 1 samples leaves no training sample"):
        build_datasets(one, tokenizer=qwen, seq_len=64, val_split=0.1)
    file = _jsonl(tmp_path / "d.jsonl", _texts(4))
    for bad in (0.0, 1.0, -0.5, True, "0.1"):
        with pytest.raises(DataError, match=r"val_split=.*: must be a fraction between 0 and 1"):
            build_datasets(file, tokenizer=qwen, seq_len=64, val_split=bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"val_path and val_split are both set; keep one"):
        build_datasets(file, tokenizer=qwen, seq_len=64, val_split=0.5, val_path=file)
    for bad_seed in (-1, 1.5, False):
        with pytest.raises(DataError, match=r"seed=.*: must be an integer >= 0"):
            build_datasets(file, tokenizer=qwen, seq_len=64, seed=bad_seed)  # type: ignore[arg-type]


def test_val_path(tmp_path: Path, qwen: Tokenizer) -> None:
    train_file = _jsonl(tmp_path / "train.jsonl", _texts(4))
    val_file = _jsonl(tmp_path / "val.jsonl", [{"text": "held out one"}, "{oops"])
    train, val = build_datasets(
        train_file, tokenizer=qwen, seq_len=64, val_path=val_file, skip_invalid=True, packing=True
    )
    assert val is not None and len(val.samples) == 1 and val.packing
    assert val.stats.files == (str(val_file),) and val.stats.invalid == 1 and train.stats.invalid == 0
    chat_file = _jsonl(tmp_path / "chat.jsonl", [RECORDS["messages"]])
    with pytest.raises(DataError, match=r"chat\.jsonl: validation data is messages but training data is text"):
        build_datasets(train_file, tokenizer=qwen, seq_len=64, val_path=chat_file)


def test_split_samples_keeps_order() -> None:
    samples = [EncodedSample(np.array([k, k]), np.array([False, True])) for k in range(6)]
    train, val = split_samples(samples, 0.5, seed=7)
    assert len(val) == 3 and sorted(int(s.ids[0]) for s in train + val) == list(range(6))
    assert [int(s.ids[0]) for s in train] == sorted(int(s.ids[0]) for s in train)
    assert [int(s.ids[0]) for s in val] == sorted(int(s.ids[0]) for s in val)


def test_pad_token_fallbacks(tokenizer_variant: Callable[..., Tokenizer]) -> None:
    assert pad_token_id(tokenizer_variant("qwen2", pad_token="<|im_start|>")) == 1  # ids from SPECIAL_TOKENS
    assert pad_token_id(tokenizer_variant("qwen2", pad_token=None)) == 2  # <|im_end|>, the EOS
    assert pad_token_id(tokenizer_variant("qwen2", pad_token=None, eos_token=None)) == 0


def test_dataset_needs_samples() -> None:
    with pytest.raises(DataError, match=r"a\.jsonl: no samples"):
        Dataset([], seq_len=8, packing=False, pad_id=0, stats=DataStats(files=("a.jsonl",)))
    with pytest.raises(DataError, match=r"item 0 has length 9; every item must fit a bin of 8"):
        Dataset(
            [EncodedSample(np.arange(9), np.ones(9, dtype=bool))],
            seq_len=8,
            packing=True,
            pad_id=0,
            stats=DataStats(()),
        )
