"""Calibration windows: random stretches of ``seq_len`` tokens from a text or JSONL file.

The file is read as the training data readers read it (`entrenar.data`: plain text split into paragraphs,
JSONL/JSON/Parquet records in any training format, a folder or a glob), every record is tokenized with
the model's tokenizer as training encodes it with ``train_on: all`` (BOS/EOS, chat templates), and the
records are joined into one token stream in file order. ``samples`` windows start at positions drawn
uniformly with NumPy's generator seeded by ``seed``, as the WANDA and SparseGPT reference loaders draw
their C4 and WikiText windows (windows may overlap, and do when the text is short).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aprender.text import Tokenizer
from entrenar.data import Encoder, load_examples, resolve_data_files
from entrenar.errors import DataError

__all__ = ["CalibrationData", "load_calibration"]


@dataclass(frozen=True)
class CalibrationData:
    """The calibration windows and where they came from.

    Attributes:
        path: The calibration path as given.
        files: sha256 of each file read, by absolute path.
        tokens: Length of the token stream the windows were drawn from.
        seed: The seed of the draw.
        windows: Token ids, shape (samples, seq_len), int64.
    """

    path: str
    files: dict[str, str]
    tokens: int
    seed: int
    windows: torch.Tensor

    @property
    def samples(self) -> int:
        """Number of windows."""
        return int(self.windows.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per window."""
        return int(self.windows.shape[1])


def _check_positive(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{name} {value!r} must be an integer >= {minimum}")


def load_calibration(
    path: str | os.PathLike[str], tokenizer: Tokenizer, *, samples: int, seq_len: int, seed: int
) -> CalibrationData:
    """Draw the calibration windows (module docstring).

    Args:
        path: A file, folder or glob the training data readers take.
        tokenizer: The model's tokenizer.
        samples: Windows to draw, >= 1.
        seq_len: Tokens per window, >= 2.
        seed: Seed of the draw, >= 0.

    Returns:
        The windows.

    Raises:
        DataError: A bad count, no such file, unreadable records, or fewer than `seq_len` tokens.
    """
    _check_positive(samples, "--samples", 1)
    _check_positive(seq_len, "--seq-len", 2)
    _check_positive(seed, "--seed", 0)
    from entrenar.train.checkpoint import file_sha256

    files = resolve_data_files(path)
    examples, _ = load_examples(path)
    encoder = Encoder(tokenizer, seq_len=sys.maxsize, train_on="all")  # whole records: windows are cut below
    stream = np.concatenate([encoder.encode(example).ids for example in examples])
    if stream.size < seq_len:
        raise DataError(
            f"{os.fspath(path)}: holds {stream.size} tokens, fewer than --seq-len {seq_len}; "
            "give more calibration text or a shorter --seq-len"
        )
    starts = np.random.default_rng(seed).integers(0, stream.size - seq_len + 1, size=samples)
    windows = torch.from_numpy(np.stack([stream[start : start + seq_len] for start in starts]))
    hashes = {str(Path(file).absolute()): file_sha256(Path(file)) for file in files}
    return CalibrationData(os.fspath(path), hashes, int(stream.size), seed, windows)
