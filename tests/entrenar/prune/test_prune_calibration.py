"""Calibration windows: the tokenized stream of the file, cut at seeded random starts; short or missing files fail."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from aprender.text import Tokenizer
from entrenar.data import Encoder, load_examples
from entrenar.errors import DataError
from entrenar.prune.calibration import load_calibration

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.txt"


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoints: dict[str, Path]) -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoints["llama"])


def _stream(path: Path, tokenizer: Tokenizer) -> np.ndarray:
    """The training encoding of every record (BOS/EOS as training adds them), joined in file order."""
    examples, _ = load_examples(path)
    encoder = Encoder(tokenizer, seq_len=10**9, train_on="all")
    return np.concatenate([encoder.encode(example).ids for example in examples])


def test_windows_are_stretches_of_the_token_stream(tokenizer: Tokenizer) -> None:
    data = load_calibration(CORPUS, tokenizer, samples=12, seq_len=40, seed=3)
    stream = _stream(CORPUS, tokenizer)
    assert (data.samples, data.seq_len, data.tokens, data.seed) == (12, 40, stream.size, 3)
    starts = np.random.default_rng(3).integers(0, stream.size - 40 + 1, size=12)
    expected = np.stack([stream[s : s + 40] for s in starts])
    assert np.array_equal(data.windows.numpy(), expected)
    assert data.files == {str(CORPUS): hashlib.sha256(CORPUS.read_bytes()).hexdigest()}


def test_seed_decides_the_windows(tokenizer: Tokenizer) -> None:
    a = load_calibration(CORPUS, tokenizer, samples=8, seq_len=16, seed=0)
    b = load_calibration(CORPUS, tokenizer, samples=8, seq_len=16, seed=0)
    c = load_calibration(CORPUS, tokenizer, samples=8, seq_len=16, seed=1)
    assert a.windows.equal(b.windows)
    assert not a.windows.equal(c.windows)


def test_jsonl_records_are_read_as_training_reads_them(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "calib.jsonl"
    lines = [{"text": f"Record number {i} talks about gardens and rivers."} for i in range(20)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    stream = _stream(path, tokenizer)
    data = load_calibration(path, tokenizer, samples=4, seq_len=stream.size, seed=0)
    assert all(row.tolist() == stream.tolist() for row in data.windows)  # one window fits: the whole stream


def test_too_short_is_one_line(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("Just a few words.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short.txt: holds \d+ tokens, fewer than --seq-len 64; give more") as info:
        load_calibration(path, tokenizer, samples=4, seq_len=64, seed=0)
    assert "\n" not in str(info.value)


def test_missing_file(tokenizer: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load_calibration(tmp_path / "nope.txt", tokenizer, samples=4, seq_len=8, seed=0)


@pytest.mark.parametrize(
    ("samples", "seq_len", "seed", "message"),
    [
        (0, 8, 0, "--samples 0 must be an integer >= 1"),
        (4, 1, 0, "--seq-len 1 must be an integer >= 2"),
        (4, 8, -1, "--seed -1 must be an integer >= 0"),
    ],
)
def test_bad_counts(tokenizer: Tokenizer, samples: int, seq_len: int, seed: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_calibration(CORPUS, tokenizer, samples=samples, seq_len=seq_len, seed=seed)
