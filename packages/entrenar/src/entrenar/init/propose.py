"""Read the training data once, measure every sample in tokens and propose ``data.seq_len``.

Samples are read with `entrenar.data.load_examples` (format detection, validation) and encoded with
`entrenar.data.Encoder`, the rendering training uses (chat template, BOS/EOS), without truncation, so
each length is what the sample needs.

``seq_len`` rule: the 95th percentile of the lengths by the nearest-rank method (the smallest length
that at least 95% of the samples do not exceed: ``sorted[ceil(0.95 * n) - 1]``,
https://en.wikipedia.org/wiki/Percentile#The_nearest-rank_method), rounded up to a multiple of 64,
then capped at the model's ``max_position_embeddings``. The percentile keeps a few very long samples
from setting the length of every row (they are truncated instead, about 5% at most); multiples of 64
keep matrix shapes friendly to GPU kernels (tensor cores work in tiles of 8-64 elements,
https://docs.nvidia.com/deeplearning/performance/dl-performance-matrix-multiplication/); positions
beyond the model's trained context would be extrapolated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aprender.text import Tokenizer
from entrenar.data import Encoder, Example, load_examples, pack_first_fit_decreasing
from entrenar.errors import InitError

__all__ = [
    "SEQ_LEN_MULTIPLE",
    "SEQ_LEN_PERCENTILE",
    "DataSummary",
    "analyse_data",
    "estimate_steps",
    "measure_token_lengths",
    "nearest_rank_percentile",
    "propose_seq_len",
]

SEQ_LEN_PERCENTILE = 95
SEQ_LEN_MULTIPLE = 64
_NO_TRUNCATION = 2**62  # an Encoder seq_len no sample reaches


@dataclass(frozen=True)
class DataSummary:
    """What `analyse_data` found.

    Attributes:
        files: the data files read, in order.
        format: the detected record format (``text``, ``messages``, ...).
        samples: number of samples.
        lengths: tokens per sample, untruncated, shape (samples,), int64.
        seq_len: the proposed ``data.seq_len``.
        truncated: samples longer than `seq_len` (training cuts them).
    """

    files: tuple[str, ...]
    format: str
    samples: int
    lengths: np.ndarray
    seq_len: int
    truncated: int


def measure_token_lengths(examples: Sequence[Example], tokenizer: Tokenizer) -> np.ndarray:
    """Tokens each example takes when encoded as for training, untruncated.

    Args:
        examples: normalised examples (from `entrenar.data.load_examples`).
        tokenizer: the base model's tokenizer.

    Returns:
        The lengths, shape (len(examples),), int64.

    Raises:
        InvalidRecordError: the chat template rejects a conversation (names the record).
        DataError: a multi-turn conversation and a tokenizer without a chat template.
    """
    encoder = Encoder(tokenizer, seq_len=_NO_TRUNCATION)
    return np.array([len(encoder.encode(example)) for example in examples], dtype=np.int64)


def nearest_rank_percentile(lengths: np.ndarray, percent: int) -> int:
    """The nearest-rank percentile: the smallest value that at least `percent`% of the values do not exceed.

    Args:
        lengths: n >= 1 values, shape (n,).
        percent: in [1, 100].

    Returns:
        ``sorted(lengths)[ceil(percent * n / 100) - 1]``.

    Raises:
        InitError: no values, or `percent` outside [1, 100].
    """
    if lengths.size == 0:
        raise InitError("no sample lengths to take a percentile of; the dataset is empty")
    if not 1 <= percent <= 100:
        raise InitError(f"percent={percent}: must lie in [1, 100]")
    rank = -(-percent * lengths.size // 100)  # ceil(percent * n / 100) in integers
    return int(np.sort(lengths)[rank - 1])


def propose_seq_len(lengths: np.ndarray, max_positions: int) -> int:
    """The proposed ``data.seq_len`` (see the module docstring).

    Args:
        lengths: tokens per sample, shape (n,), n >= 1.
        max_positions: the model's ``max_position_embeddings``, >= 2.

    Returns:
        ``min(ceil(p95 / 64) * 64, max_positions)``.

    Raises:
        InitError: no lengths, or `max_positions` below 2.
    """
    if max_positions < 2:
        raise InitError(f"max_positions={max_positions}: a training sequence needs at least 2 positions")
    p95 = nearest_rank_percentile(lengths, SEQ_LEN_PERCENTILE)
    return min(-(-p95 // SEQ_LEN_MULTIPLE) * SEQ_LEN_MULTIPLE, max_positions)


def estimate_steps(
    lengths: np.ndarray, *, seq_len: int, batch_size: int, grad_accum: int, packing: bool, epochs: int
) -> int:
    """Optimizer steps of a run over these samples, as the data loader batches them.

    Samples are cut to `seq_len`; with `packing` they are grouped into rows by first-fit decreasing
    (`entrenar.data.pack_first_fit_decreasing`), else each sample is a row. Per epoch there are
    ``ceil(rows / batch_size)`` micro-batches; the trainer accumulates across epoch boundaries, so the
    run takes ``ceil(epochs * batches / grad_accum)`` optimizer steps.

    Args:
        lengths: tokens per sample, shape (n,), each >= 1.
        seq_len: row length.
        batch_size: rows per micro-batch.
        grad_accum: micro-batches per optimizer step.
        packing: pack several samples per row.
        epochs: passes over the data.

    Returns:
        ``ceil(epochs * ceil(rows / batch_size) / grad_accum)``.
    """
    clipped = np.minimum(lengths, seq_len)
    rows = len(pack_first_fit_decreasing(clipped.tolist(), seq_len)) if packing else int(clipped.size)
    batches = -(-rows // batch_size)
    return -(-epochs * batches // grad_accum)


def analyse_data(path: str | os.PathLike[str], tokenizer: Tokenizer, max_positions: int) -> DataSummary:
    """Read, validate and measure a dataset, and propose ``seq_len``.

    Args:
        path: a data file, folder or glob.
        tokenizer: the base model's tokenizer.
        max_positions: the model's ``max_position_embeddings``.

    Returns:
        The summary.

    Raises:
        DataError: no data at the path, an unknown or mixed format, no usable record.
        InvalidRecordError: a malformed record (names file and line).
    """
    examples, stats = load_examples(path)
    lengths = measure_token_lengths(examples, tokenizer)
    seq_len = propose_seq_len(lengths, max_positions)
    return DataSummary(
        files=stats.files,
        format=stats.format,
        samples=len(examples),
        lengths=lengths,
        seq_len=seq_len,
        truncated=int((lengths > seq_len).sum()),
    )
