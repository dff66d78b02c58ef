"""`entrenar.init.propose`: token lengths as training encodes them, the seq_len rule, the step estimate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aprender.text import Tokenizer
from entrenar.data import DataLoader, Encoder, build_datasets, load_examples
from entrenar.errors import DataError, InitError, InvalidRecordError
from entrenar.init import (
    analyse_data,
    estimate_steps,
    measure_token_lengths,
    nearest_rank_percentile,
    propose_seq_len,
)


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=300), st.integers(1, 100))
def test_nearest_rank_equals_numpy_inverted_cdf(values: list[int], percent: int) -> None:
    # numpy's "inverted_cdf" is the smallest x with F(x) >= p: the nearest-rank percentile.
    lengths = np.array(values, dtype=np.int64)
    expected = int(np.percentile(lengths, percent, method="inverted_cdf"))
    assert nearest_rank_percentile(lengths, percent) == expected


def test_nearest_rank_by_hand() -> None:
    # 20 values 1..20: rank ceil(0.95 * 20) = 19 -> 19; 21 values: ceil(19.95) = 20 -> 20.
    assert nearest_rank_percentile(np.arange(1, 21), 95) == 19
    assert nearest_rank_percentile(np.arange(1, 22), 95) == 20
    assert nearest_rank_percentile(np.array([7]), 95) == 7
    with pytest.raises(InitError, match=r"dataset is empty"):
        nearest_rank_percentile(np.array([], dtype=np.int64), 95)
    with pytest.raises(InitError, match=r"percent=0"):
        nearest_rank_percentile(np.array([1]), 0)


@pytest.mark.parametrize(
    ("lengths", "max_positions", "expected"),
    [
        (np.arange(2, 102), 512, 128),  # p95 of 2..101 is the 95th value, 96 -> 128
        (np.arange(2, 102), 100, 100),  # capped at the context
        (np.array([64] * 20), 4096, 64),  # already a multiple of 64
        (np.array([65] * 20), 4096, 128),
        (np.array([3]), 4096, 64),
        (np.array([3]), 2, 2),
    ],
)
def test_propose_seq_len(lengths: np.ndarray, max_positions: int, expected: int) -> None:
    assert propose_seq_len(lengths, max_positions) == expected


def test_propose_seq_len_needs_two_positions() -> None:
    with pytest.raises(InitError, match=r"max_positions=1"):
        propose_seq_len(np.array([5]), 1)


def test_lengths_and_seq_len_of_a_synthetic_dataset(
    word_model: Callable[..., Path], text_samples: Callable[..., Path], tmp_path: Path
) -> None:
    # k words encode to k tokens, plus the EOS the Encoder appends: lengths 2..201 for k = 1..200 (shuffled).
    word_counts = list(np.random.default_rng(0).permutation(np.arange(1, 201)))
    data = text_samples(tmp_path / "data.jsonl", word_counts)
    tokenizer = Tokenizer.from_dir(word_model())
    summary = analyse_data(data, tokenizer, 512)
    assert summary.lengths.tolist() == [k + 1 for k in word_counts]
    assert (summary.format, summary.samples, summary.files) == ("text", 200, (str(data),))
    # Nearest rank ceil(0.95 * 200) = 190 -> length 191 -> rounded up to 192; 193..201 (9 samples) are longer.
    assert (summary.seq_len, summary.truncated) == (192, 9)
    capped = analyse_data(data, tokenizer, 150)
    assert (capped.seq_len, capped.truncated) == (150, 51)  # 151..201


def test_lengths_follow_the_training_encoder(tiny_checkpoints: dict[str, Path], chat_data: Callable[..., Path]) -> None:
    # A chat-template tokenizer: the length is that of the rendered conversation, as training encodes it.
    data = chat_data(12)
    tokenizer = Tokenizer.from_dir(tiny_checkpoints["qwen3"])
    examples, stats = load_examples(data)
    encoder = Encoder(tokenizer, seq_len=10_000)
    assert stats.format == "messages"
    assert measure_token_lengths(examples, tokenizer).tolist() == [len(encoder.encode(e)) for e in examples]


def test_formats_and_file_kinds(word_model: Callable[..., Path], jsonl: Callable[..., Path], tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_dir(word_model())
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha beta\n\ngamma\n")  # two paragraphs -> two samples
    pq.write_table(pa.table({"text": ["alpha", "beta gamma delta"]}), folder / "b.parquet")
    summary = analyse_data(folder, tokenizer, 512)
    assert (summary.format, summary.samples, summary.lengths.tolist()) == ("text", 4, [3, 2, 2, 4])
    alpaca = jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "alpha", "output": "beta"}] * 3)
    assert analyse_data(alpaca, tokenizer, 512).format == "alpaca"


def test_unreadable_data_is_reported(
    word_model: Callable[..., Path], jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    tokenizer = Tokenizer.from_dir(word_model())
    with pytest.raises(DataError, match=r"no such file or directory"):
        analyse_data(tmp_path / "missing.jsonl", tokenizer, 512)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": "alpha"}) + "\n{oops\n")
    with pytest.raises(InvalidRecordError, match=r"broken.jsonl:2: invalid JSON"):
        analyse_data(broken, tokenizer, 512)
    two_user_turns = [{"role": "user", "content": "alpha"}] * 2 + [{"role": "assistant", "content": "beta"}]
    chat = jsonl(tmp_path / "chat.jsonl", [{"messages": two_user_turns}])
    with pytest.raises(DataError, match=r"needs a tokenizer with a chat_template"):
        analyse_data(chat, tokenizer, 512)


@pytest.mark.parametrize(
    ("packing", "batch_size", "grad_accum", "epochs", "expected"),
    [
        # lengths [3, 5, 8, 2, 9] cut to seq_len 8 -> [3, 5, 8, 2, 8]; first-fit decreasing rows of 8:
        # [8], [8], [5, 3], [2] -> 4 rows.
        (True, 1, 1, 1, 4),
        (True, 3, 1, 2, 4),  # ceil(4 / 3) = 2 batches, x2 epochs
        (False, 2, 1, 1, 3),  # 5 rows -> ceil(5 / 2) = 3
        (False, 2, 2, 3, 5),  # 3 batches x 3 epochs = 9 micro-batches -> ceil(9 / 2) = 5 steps
    ],
)
def test_estimate_steps_by_hand(packing: bool, batch_size: int, grad_accum: int, epochs: int, expected: int) -> None:
    lengths = np.array([3, 5, 8, 2, 9])
    steps = estimate_steps(
        lengths, seq_len=8, batch_size=batch_size, grad_accum=grad_accum, packing=packing, epochs=epochs
    )
    assert steps == expected


@pytest.mark.parametrize("packing", [True, False])
def test_estimate_steps_matches_the_data_loader(
    packing: bool, tiny_checkpoints: dict[str, Path], chat_data: Callable[..., Path]
) -> None:
    data = chat_data(40)
    tokenizer = Tokenizer.from_dir(tiny_checkpoints["qwen2"])
    summary = analyse_data(data, tokenizer, 512)
    train, _ = build_datasets(data, tokenizer=tokenizer, seq_len=summary.seq_len, packing=packing)
    batches = len(DataLoader(train, batch_size=8))
    steps = estimate_steps(
        summary.lengths, seq_len=summary.seq_len, batch_size=8, grad_accum=1, packing=packing, epochs=3
    )
    assert steps == 3 * batches
