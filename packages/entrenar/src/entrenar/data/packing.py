"""Sequence packing: several samples share one row of `seq_len` tokens without seeing each other.

Which samples share a row: first-fit decreasing bin packing (Johnson 1973; used for LM training in
Ding et al. 2024, "Fewer Truncations Improve Language Modeling", https://arxiv.org/abs/2404.10830).
Samples are taken longest first (ties by index) and each goes into the first row with room for it.
Samples are never split, so no sample loses its start; rows are fixed once, and shuffling happens over
rows, so every epoch has the same number of batches. A segment tree over the rows' free space finds
the first row with room in O(log n), so packing n samples costs O(n log n).

How a row is laid out (`pack_row`), following Krell et al. 2021 ("Efficient Sequence Packing without
Cross-contamination", https://arxiv.org/abs/2107.02027):

- `position_ids` restart at 0 for each sample, so positions (RoPE) are those of the sample alone;
- `seq_ids` give each token its sample's index in the row (0, 1, ...); attention must stay within
  equal ids (a block-diagonal causal mask; transformers derives the same blocks from restarting
  `position_ids`, and flash-attention's `cu_seqlens` are the boundaries of these blocks);
- `labels` are pre-shifted, aligned with positions (`labels[t]` is what position t predicts, as
  `aprender.loss.chunked_causal_lm_loss` expects) and -100 at each sample's last position, so no
  sample is trained to predict the first token of the next one;
- the tail after the last sample is padding: `input_ids` = pad id, `labels` = -100,
  `attention_mask` = 0, `seq_ids` = -1, and `position_ids` restart at 0 so it forms a block of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from entrenar.data.encode import IGNORE_INDEX, EncodedSample
from entrenar.errors import DataError

PAD_SEQ_ID = -1


def pack_first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group items into bins of `capacity` by first-fit decreasing.

    Args:
        lengths: n item sizes, each in [1, capacity].
        capacity: the size of a bin (the row length), >= 1.

    Returns:
        Bins in the order they were opened; each lists item indices in the order they were placed.

    Raises:
        DataError: a capacity below 1, or an item that is empty or larger than a bin.
    """
    if capacity < 1:
        raise DataError(f"capacity={capacity}: must be >= 1")
    for index, length in enumerate(lengths):
        if not 1 <= length <= capacity:
            raise DataError(f"item {index} has length {length}; every item must fit a bin of {capacity}")
    count = len(lengths)
    size = 1
    while size < count:
        size *= 2
    # tree[node] = largest free space among the bins below node; leaves are bins (unopened ones are empty).
    tree = [0] * (2 * size)
    tree[size : size + count] = [capacity] * count
    for node in range(size - 1, 0, -1):
        tree[node] = max(tree[2 * node], tree[2 * node + 1])
    bins: list[list[int]] = []
    for item in sorted(range(count), key=lambda i: (-lengths[i], i)):
        node = 1
        while node < size:  # descend to the leftmost bin with room
            node = 2 * node if tree[2 * node] >= lengths[item] else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(item)
        tree[node] -= lengths[item]
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def pack_row(samples: Sequence[EncodedSample], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Lay samples out in one row of `seq_len` tokens (see the module docstring).

    Args:
        samples: the samples of the row, in order; their lengths sum to at most `seq_len`.
        seq_len: the row length.
        pad_id: token id of the padding.

    Returns:
        `input_ids`, `labels`, `position_ids`, `seq_ids`, `attention_mask`: each shape (seq_len,), int64.

    Raises:
        DataError: the samples do not fit in `seq_len`.
    """
    used = sum(len(sample) for sample in samples)
    if used > seq_len:
        raise DataError(f"samples of {used} tokens do not fit a packed row of {seq_len}")
    row = {
        "input_ids": np.full(seq_len, pad_id, dtype=np.int64),
        "labels": np.full(seq_len, IGNORE_INDEX, dtype=np.int64),
        "position_ids": np.zeros(seq_len, dtype=np.int64),
        "seq_ids": np.full(seq_len, PAD_SEQ_ID, dtype=np.int64),
        "attention_mask": np.zeros(seq_len, dtype=np.int64),
    }
    start = 0
    for index, sample in enumerate(samples):
        end = start + len(sample)
        row["input_ids"][start:end] = sample.ids
        row["labels"][start:end] = sample.labels()
        row["position_ids"][start:end] = np.arange(len(sample))
        row["seq_ids"][start:end] = index
        row["attention_mask"][start:end] = 1
        start = end
    row["position_ids"][start:] = np.arange(seq_len - start)
    return row
