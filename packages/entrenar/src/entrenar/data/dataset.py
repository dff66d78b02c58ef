"""Read, check, encode and split a dataset: the `data:` section of the config, as functions.

`build_datasets` runs the whole chain: `resolve_data_files` → `read_records` → format detection and
normalisation → `Encoder` → validation split → packing. Records are checked as they stream by:

- with `format="auto"`, the first readable record with known keys decides the format, and every later
  record with known keys must agree (a file mixing schemas is an error even with `skip_invalid`, since
  no single record is at fault); a first record with unknown keys is an error that lists its keys;
- a malformed record (unreadable line, missing field, wrong type, empty reply, a conversation the
  chat template rejects) is an `InvalidRecordError` naming file and line, or, with `skip_invalid`,
  is skipped and counted in `DataStats.invalid`;
- a sample left with no target token (its reply lies wholly beyond `seq_len`) is dropped and counted
  in `DataStats.dropped`; samples cut to `seq_len` are counted in `DataStats.truncated`.

The validation split (`val_split`) draws `max(1, round(n * val_split))` samples with a generator seeded
by `seed` (NumPy `SeedSequence`, https://numpy.org/doc/stable/reference/random/bit_generators/generated/
numpy.random.SeedSequence.html); the rest, in file order, is the training set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aprender.text import Tokenizer
from entrenar.data.encode import EncodedSample, Encoder, TrainOn
from entrenar.data.formats import FORMATS, Example, detect_format, normalize_record, signature_help
from entrenar.data.packing import pack_first_fit_decreasing
from entrenar.data.sources import Location, RawRecord, read_records, resolve_data_files
from entrenar.errors import DataError, InvalidRecordError

_SPLIT_STREAM = 1  # SeedSequence entropy [seed, 1] draws the split; [seed, 0, epoch] shuffles (loader)
_KEPT_INVALID_MESSAGES = 5


@dataclass
class DataStats:
    """What reading and encoding one source (`train_path` or `val_path`) found.

    Attributes:
        files: the files read, in order.
        format: the format used (detected when "auto" was asked).
        records: records read, normalised and encoded (`dropped` ones included).
        invalid: malformed records skipped (only with `skip_invalid`).
        invalid_examples: the messages of the first few skipped records.
        truncated: kept samples cut to `seq_len`.
        dropped: samples removed because no target token was left within `seq_len`.
    """

    files: tuple[str, ...]
    format: str = ""
    records: int = 0
    invalid: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0


class Dataset:
    """Encoded samples grouped into units: one sample each, or packed rows of several.

    Attributes:
        samples: the encoded samples, in file order.
        units: sample indices of each unit (a `(i,)` per sample, or the samples of each packed row).
        seq_len: the row length of packed batches (and the longest sample).
        packing: whether units are packed rows.
        pad_id: token id used for padding.
        stats: what reading the source found.
    """

    def __init__(
        self, samples: Sequence[EncodedSample], *, seq_len: int, packing: bool, pad_id: int, stats: DataStats
    ) -> None:
        """Group the samples (first-fit decreasing rows of `seq_len` when `packing`).

        Args:
            samples: the samples, each at most `seq_len` tokens.
            seq_len: the row length of packed batches.
            packing: pack several samples per row.
            pad_id: token id used for padding.
            stats: what reading the source found.

        Raises:
            DataError: no samples, or a sample longer than `seq_len`.
        """
        if not samples:
            raise DataError(f"{', '.join(stats.files) or 'dataset'}: no samples; check the data path and format")
        self.samples = list(samples)
        self.seq_len = seq_len
        self.packing = packing
        self.pad_id = pad_id
        self.stats = stats
        lengths = [len(sample) for sample in self.samples]
        if packing:
            self.units = [tuple(row) for row in pack_first_fit_decreasing(lengths, seq_len)]
        else:
            self.units = [(index,) for index in range(len(self.samples))]

    def __len__(self) -> int:
        """Number of units (rows when packed, samples otherwise)."""
        return len(self.units)

    def lengths(self) -> np.ndarray:
        """Token count of each sample, shape (n_samples,)."""
        return np.array([len(sample) for sample in self.samples], dtype=np.int64)

    @property
    def n_target_tokens(self) -> int:
        """Tokens that count in the loss over the whole dataset."""
        return sum(sample.n_targets for sample in self.samples)


class _Reader:
    """Format detection, normalisation and the skip-or-raise policy for one source."""

    def __init__(self, format: str, skip_invalid: bool, stats: DataStats) -> None:
        self.auto = format == "auto"
        self.format: str | None = None if self.auto else format
        self.detected_at: Location | None = None
        self.skip_invalid = skip_invalid
        self.stats = stats
        stats.format = "" if self.auto else format

    def reject(self, error: InvalidRecordError) -> None:
        if not self.skip_invalid:
            raise error
        self.stats.invalid += 1
        if len(self.stats.invalid_examples) < _KEPT_INVALID_MESSAGES:
            self.stats.invalid_examples.append(str(error))

    def example(self, raw: RawRecord) -> Example | None:
        if raw.data is None:
            self.reject(InvalidRecordError(f"{raw.location}: {raw.error}; fix or remove the line"))
            return None
        found = detect_format(raw.data)
        if self.format is None:
            if found is None:
                keys = ", ".join(sorted(map(str, raw.data))) or "none"
                self.reject(
                    InvalidRecordError(
                        f"{raw.location}: cannot tell the format from keys [{keys}]; "
                        f"expected {signature_help()}, or set data.format"
                    )
                )
                return None
            self.format, self.detected_at = found, raw.location
            self.stats.format = found
        elif self.auto and found is not None and found != self.format:
            raise DataError(
                f"{raw.location}: record has {found} keys but {self.detected_at} was detected as {self.format}; "
                "use one schema per dataset or set data.format"
            )
        try:
            example = normalize_record(raw.data, self.format, raw.location)
        except InvalidRecordError as err:
            self.reject(err)
            return None
        return example


def _check_format(format: str) -> None:
    if format != "auto" and format not in FORMATS:
        raise DataError(f"format={format!r}: expected auto or one of {', '.join(FORMATS)}")


def _examples(reader: _Reader, files: Sequence[Path]) -> Iterator[Example]:
    for raw in read_records(files):
        example = reader.example(raw)
        if example is not None:
            yield example


def _empty_error(path: str | os.PathLike[str], stats: DataStats) -> DataError:
    detail = f" ({stats.invalid} invalid skipped, first: {stats.invalid_examples[0]})" if stats.invalid else ""
    return DataError(f"{os.fspath(path)}: no usable records{detail}; check the data path and format")


def load_examples(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    skip_invalid: bool = False,
) -> tuple[list[Example], DataStats]:
    """Read and normalise every record under a path (file, directory or glob), without tokenizing.

    Args:
        path: where the data is.
        format: "auto" or a name from `FORMATS`.
        skip_invalid: skip and count malformed records instead of raising.

    Returns:
        The examples in file order, and the reading stats.

    Raises:
        DataError: no files, an unknown or mixed format, or no usable record.
        InvalidRecordError: a malformed record (without `skip_invalid`).
    """
    _check_format(format)
    files = resolve_data_files(path)
    stats = DataStats(files=tuple(str(f) for f in files))
    examples = list(_examples(_Reader(format, skip_invalid, stats), files))
    if not examples:
        raise _empty_error(path, stats)
    stats.records = len(examples)
    return examples, stats


def _encode_source(
    path: str | os.PathLike[str], encoder: Encoder, format: str, skip_invalid: bool
) -> tuple[list[EncodedSample], DataStats]:
    files = resolve_data_files(path)
    stats = DataStats(files=tuple(str(f) for f in files))
    reader = _Reader(format, skip_invalid, stats)
    samples = []
    for example in _examples(reader, files):
        try:
            sample = encoder.encode(example)
        except InvalidRecordError as err:
            reader.reject(err)
            continue
        stats.records += 1
        if sample.n_targets == 0:
            stats.dropped += 1
            continue
        stats.truncated += sample.truncated
        samples.append(sample)
    if not samples:
        if stats.dropped:
            raise DataError(
                f"{os.fspath(path)}: all {stats.dropped} samples have no reply token within seq_len={encoder.seq_len}; "
                "raise seq_len or shorten the prompts"
            )
        raise _empty_error(path, stats)
    return samples, stats


def split_samples(
    samples: Sequence[EncodedSample], val_split: float, seed: int
) -> tuple[list[EncodedSample], list[EncodedSample]]:
    """Draw a validation set: `max(1, round(n * val_split))` samples chosen with `seed`.

    Args:
        samples: n samples.
        val_split: fraction in (0, 1).
        seed: seed of the draw (>= 0).

    Returns:
        (train, val), each in the original order.

    Raises:
        DataError: `val_split` outside (0, 1), or too few samples to leave one for training.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not 0 < val_split < 1:
        raise DataError(f"val_split={val_split!r}: must be a fraction between 0 and 1 (exclusive)")
    count = len(samples)
    n_val = max(1, round(count * val_split))
    if n_val >= count:
        raise DataError(f"val_split={val_split} of {count} samples leaves no training sample; add data or use val_path")
    chosen = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(count)[:n_val]
    in_val = np.zeros(count, dtype=bool)
    in_val[chosen] = True
    return [s for s, v in zip(samples, in_val, strict=True) if not v], [
        s for s, v in zip(samples, in_val, strict=True) if v
    ]


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed={seed!r}: must be an integer >= 0")


def pad_token_id(tokenizer: Tokenizer) -> int:
    """Padding id: the tokenizer's pad token, else its EOS, else 0 (padding is masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def build_datasets(
    train_path: str | os.PathLike[str],
    *,
    tokenizer: Tokenizer,
    seq_len: int,
    val_path: str | os.PathLike[str] | None = None,
    val_split: float | None = None,
    format: str = "auto",
    train_on: TrainOn = "completion",
    packing: bool = False,
    skip_invalid: bool = False,
    seed: int = 0,
) -> tuple[Dataset, Dataset | None]:
    """Build the training and (optional) validation datasets of the config's `data:` section.

    Args:
        train_path: file, directory or glob of the training data.
        tokenizer: the model's tokenizer.
        seq_len: longest sample (and packed row) in tokens, >= 2.
        val_path: file, directory or glob of validation data; not with `val_split`.
        val_split: fraction of the training samples held out for validation; not with `val_path`.
        format: "auto" or a name from `FORMATS`; validation data must have the same format.
        train_on: "completion" (replies only) or "all" tokens.
        packing: pack several samples per row of `seq_len`.
        skip_invalid: skip and count malformed records instead of raising.
        seed: seed of the validation split (`training.seed`), >= 0.

    Returns:
        (train, val); val is None without `val_path` and `val_split`.

    Raises:
        DataError: a bad option, no files, an unknown or mixed format, too little data.
        InvalidRecordError: a malformed record (without `skip_invalid`).
    """
    _check_format(format)
    _check_seed(seed)
    if val_path is not None and val_split is not None:
        raise DataError("val_path and val_split are both set; keep one")
    encoder = Encoder(tokenizer, seq_len=seq_len, train_on=train_on)
    pad_id = pad_token_id(tokenizer)
    samples, stats = _encode_source(train_path, encoder, format, skip_invalid)
    val: tuple[list[EncodedSample], DataStats] | None = None
    if val_path is not None:
        val = _encode_source(val_path, encoder, format, skip_invalid)
        if val[1].format != stats.format:
            raise DataError(
                f"{os.fspath(val_path)}: validation data is {val[1].format} but training data is {stats.format}; "
                "use the same format for both"
            )
    elif val_split is not None:
        samples, val_samples = split_samples(samples, val_split, seed)
        val = (val_samples, stats)
    train = Dataset(samples, seq_len=seq_len, packing=packing, pad_id=pad_id, stats=stats)
    if val is None:
        return train, None
    return train, Dataset(val[0], seq_len=seq_len, packing=packing, pad_id=pad_id, stats=val[1])
