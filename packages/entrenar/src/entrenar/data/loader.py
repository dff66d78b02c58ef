"""Batches for training: deterministic per-epoch shuffling, collation and a resumable position.

Order: epoch e visits the dataset's units (samples, or packed rows) in the permutation drawn by a
generator seeded with `[seed, 0, e]` (NumPy `SeedSequence`, https://numpy.org/doc/stable/reference/random/
bit_generators/generated/numpy.random.SeedSequence.html), so the order depends only on the seed and
the epoch: it differs between epochs and is identical on every run and after a resume. Without
shuffling (validation) units go in dataset order. The last batch of an epoch may be smaller.

Batches are dicts of int64 tensors:

- unpacked: `input_ids`, `labels`, `attention_mask`, shape (B, T) with T the longest sample of the
  batch; right padding (pad id, label -100, mask 0);
- packed: `input_ids`, `labels`, `position_ids`, `seq_ids`, `attention_mask`, shape (B, seq_len) (see
  `entrenar.data.packing` for the layout);
- both: `n_tokens`, a 0-dim tensor with the number of labels that are not -100, and `unit_ids`, shape
  (B,), the dataset units of the rows (`Dataset.units`: which samples each row holds, e.g. to look up a
  teacher cache, `entrenar.distill.cache`).

`labels` are already shifted: `labels[b, t]` is the token that position t must predict, the input of
`aprender.loss.chunked_causal_lm_loss` (for a Hugging Face model, whose loss shifts itself, pass the
un-shifted labels or compute the loss from the logits with these).

Resuming: `state_dict()` is the position of the next batch (`epoch`, `batch_index`) plus the number of
batches and the seed, which `load_state_dict` checks so a changed dataset or batch size is caught.
After `load_state_dict`, `batches(epoch)` for the saved epoch yields exactly the batches that were
not yet produced, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from entrenar.data.dataset import Dataset
from entrenar.data.encode import IGNORE_INDEX, EncodedSample
from entrenar.data.packing import pack_row
from entrenar.errors import DataError

_SHUFFLE_STREAM = 0
_STATE_KEYS = ("epoch", "batch_index", "num_batches", "seed")


def _to_batch(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    batch = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
    batch["n_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
    return batch


def collate_padded(samples: Sequence[EncodedSample], pad_id: int) -> dict[str, Tensor]:
    """Stack samples into a right-padded batch.

    Args:
        samples: B samples.
        pad_id: token id of the padding.

    Returns:
        `input_ids`, `labels` (shifted, -100 at padding), `attention_mask`: (B, T) int64 with T the
        longest sample; `n_tokens`: 0-dim.
    """
    length = max(len(sample) for sample in samples)
    input_ids = np.full((len(samples), length), pad_id, dtype=np.int64)
    labels = np.full((len(samples), length), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(samples), length), dtype=np.int64)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample)] = sample.ids
        labels[row, : len(sample)] = sample.labels()
        attention_mask[row, : len(sample)] = 1
    return _to_batch({"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask})


def collate_packed(rows: Sequence[Sequence[EncodedSample]], seq_len: int, pad_id: int) -> dict[str, Tensor]:
    """Lay out each row's samples with `pack_row` and stack the rows.

    Args:
        rows: B rows, each the samples packed together.
        seq_len: the row length.
        pad_id: token id of the padding.

    Returns:
        `input_ids`, `labels`, `position_ids`, `seq_ids`, `attention_mask`: (B, seq_len) int64;
        `n_tokens`: 0-dim.
    """
    laid_out = [pack_row(row, seq_len, pad_id) for row in rows]
    return _to_batch({name: np.stack([row[name] for row in laid_out]) for name in laid_out[0]})


class DataLoader:
    """Yields the batches of a `Dataset`, epoch by epoch, and can resume mid-epoch."""

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        """Set up batching.

        Args:
            dataset: the dataset.
            batch_size: units (samples, or packed rows) per batch, >= 1.
            shuffle: draw a new order each epoch (training) or keep dataset order (validation).
            seed: seed of the per-epoch order (`training.seed`), >= 0.

        Raises:
            DataError: a bad batch size or seed.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size={batch_size!r}: must be an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(f"seed={seed!r}: must be an integer >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._epoch = 0
        self._batch_index = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.dataset) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The unit indices of an epoch, in visiting order, shape (len(dataset),)."""
        if not self.shuffle:
            return np.arange(len(self.dataset))
        return np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch]).permutation(len(self.dataset))

    def batches(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        """The batches of one epoch, from the resume position when it is in this epoch, else from the start.

        Args:
            epoch: the epoch, >= 0.

        Yields:
            Batches as described in the module docstring; after each, `state_dict()` points past it.

        Raises:
            DataError: a negative epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"epoch={epoch!r}: must be an integer >= 0")
        start = self._batch_index if epoch == self._epoch else 0
        order = self.order(epoch)
        for index in range(start, len(self)):
            units = order[index * self.batch_size : (index + 1) * self.batch_size]
            batch = self._collate(units)
            self._epoch, self._batch_index = (epoch, index + 1) if index + 1 < len(self) else (epoch + 1, 0)
            yield batch

    def _collate(self, units: np.ndarray) -> dict[str, Tensor]:
        data = self.dataset
        rows = [[data.samples[i] for i in data.units[unit]] for unit in units]
        if data.packing:
            batch = collate_packed(rows, data.seq_len, data.pad_id)
        else:
            batch = collate_padded([row[0] for row in rows], data.pad_id)
        batch["unit_ids"] = torch.from_numpy(np.asarray(units, dtype=np.int64))
        return batch

    def state_dict(self) -> dict[str, int]:
        """The position of the next batch, with what `load_state_dict` checks."""
        return {"epoch": self._epoch, "batch_index": self._batch_index, "num_batches": len(self), "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position.

        Args:
            state: a `state_dict()`.

        Raises:
            DataError: missing keys or values, or a position saved with other data, batch size or seed.
        """
        missing = [key for key in _STATE_KEYS if not isinstance(state.get(key), int) or state[key] < 0]
        if missing:
            raise DataError(f"data position: {', '.join(missing)} missing or not a non-negative integer")
        if state["num_batches"] != len(self) or state["seed"] != self.seed:
            raise DataError(
                f"data position was saved with {state['num_batches']} batches per epoch and seed {state['seed']}, "
                f"now {len(self)} and {self.seed}; resume with the same data, batch_size and seed"
            )
        if state["batch_index"] >= len(self):
            raise DataError(f"data position: batch_index {state['batch_index']} is past the {len(self)} batches")
        self._epoch, self._batch_index = state["epoch"], state["batch_index"]
