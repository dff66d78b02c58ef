"""entrenar.data.loader: collation, deterministic per-epoch order, and exact resume."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import numpy as np
import pytest
import torch
from torch import Tensor

from entrenar.data.dataset import Dataset, DataStats
from entrenar.data.encode import EncodedSample
from entrenar.data.loader import DataLoader, collate_packed, collate_padded
from entrenar.errors import DataError


def _sample(ids: list[int], targets: list[bool] | None = None) -> EncodedSample:
    mask = [False] + [True] * (len(ids) - 1) if targets is None else targets
    return EncodedSample(np.array(ids, dtype=np.int64), np.array(mask, dtype=bool))


def _dataset(n: int, *, packing: bool = False, seq_len: int = 16) -> Dataset:
    """n samples of lengths 2..7 whose first token is their index (so batches show which samples they hold)."""
    samples = [_sample([k] + [1000 + k] * (1 + k % 6)) for k in range(n)]
    return Dataset(samples, seq_len=seq_len, packing=packing, pad_id=99, stats=DataStats(files=("x.jsonl",)))


def _first_tokens(batch: dict[str, Tensor]) -> list[int]:
    if "seq_ids" in batch:
        starts = (batch["position_ids"] == 0) & (batch["seq_ids"] >= 0)
        return sorted(batch["input_ids"][starts].tolist())
    return batch["input_ids"][:, 0].tolist()


def _same(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------------------ collation


def test_collate_padded_hand_case() -> None:
    batch = collate_padded([_sample([5, 6, 7], [False, False, True]), _sample([8, 9])], pad_id=0)
    # Right padding to the longest sample; labels shifted, -100 at each sample's end and at padding.
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 7, -100], [9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["n_tokens"].item() == 2 and batch["n_tokens"].dim() == 0
    assert all(t.dtype == torch.int64 for t in batch.values())
    assert set(batch) == {"input_ids", "labels", "attention_mask", "n_tokens"}


def test_collate_packed_stacks_rows() -> None:
    batch = collate_packed([[_sample([1, 2]), _sample([3, 4, 5])], [_sample([6, 7, 8, 9])]], seq_len=6, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert batch["labels"].tolist() == [[2, -100, 4, 5, -100, -100], [7, 8, 9, -100, -100, -100]]
    assert batch["seq_ids"].tolist() == [[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]]
    assert batch["n_tokens"].item() == 6
    assert set(batch) == {"input_ids", "labels", "position_ids", "seq_ids", "attention_mask", "n_tokens"}


# ------------------------------------------------------------------------------------ order


def test_order_is_deterministic_per_seed_and_epoch() -> None:
    data = _dataset(50)
    loader = DataLoader(data, batch_size=4, seed=42)
    again = DataLoader(data, batch_size=4, seed=42)
    other = DataLoader(data, batch_size=4, seed=43)
    assert np.array_equal(loader.order(0), again.order(0)) and np.array_equal(loader.order(3), again.order(3))
    assert not np.array_equal(loader.order(0), loader.order(1))
    assert not np.array_equal(loader.order(0), other.order(0))
    assert sorted(loader.order(2).tolist()) == list(range(50))
    # Oracle: the documented generator, drawn independently.
    assert loader.order(1).tolist() == np.random.default_rng([42, 0, 1]).permutation(50).tolist()
    assert DataLoader(data, batch_size=4, shuffle=False).order(5).tolist() == list(range(50))


@pytest.mark.parametrize("packing", [False, True])
def test_each_epoch_visits_every_sample_once(packing: bool) -> None:
    data = _dataset(23, packing=packing)
    loader = DataLoader(data, batch_size=4, seed=1)
    batches = list(loader.batches(0))
    assert len(batches) == len(loader) == -(-len(data) // 4)
    assert sorted(t for b in batches for t in _first_tokens(b)) == list(range(23))
    assert batches[-1]["input_ids"].shape[0] == len(data) - 4 * (len(loader) - 1)
    if packing:
        assert len(data) < 23 and all(b["input_ids"].shape[1] == 16 for b in batches)
    else:  # padded to the longest sample of each batch
        assert all(b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max()) for b in batches)
    epoch_one = list(loader.batches(1))
    assert [_first_tokens(b) for b in epoch_one] != [_first_tokens(b) for b in batches]
    # unit_ids name each row's unit: the epoch's order, and the samples (first tokens) each row holds
    assert torch.cat([b["unit_ids"] for b in batches]).tolist() == loader.order(0).tolist()
    for batch in batches:
        held = sorted(int(data.samples[i].ids[0]) for u in batch["unit_ids"].tolist() for i in data.units[u])
        assert held == sorted(_first_tokens(batch))


def test_unshuffled_loader_keeps_dataset_order() -> None:
    loader = DataLoader(_dataset(7), batch_size=3, shuffle=False)
    assert [_first_tokens(b) for b in loader.batches(4)] == [[0, 1, 2], [3, 4, 5], [6]]


# ------------------------------------------------------------------------------------ resume


def _consume(iterator: Iterator[dict[str, Tensor]], count: int) -> list[dict[str, Tensor]]:
    return list(islice(iterator, count))


@pytest.mark.parametrize("packing", [False, True])
def test_resume_yields_exactly_the_remaining_batches(packing: bool) -> None:
    data = _dataset(40, packing=packing)
    reference = DataLoader(data, batch_size=3, seed=7)
    full_epoch_one = list(DataLoader(data, batch_size=3, seed=7).batches(1))
    list(reference.batches(0))
    assert reference.state_dict() == {"epoch": 1, "batch_index": 0, "num_batches": len(reference), "seed": 7}
    assert len(reference) >= 4
    done = _consume(reference.batches(1), 2)
    state = reference.state_dict()
    assert state == {"epoch": 1, "batch_index": 2, "num_batches": len(reference), "seed": 7}
    resumed = DataLoader(data, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    rest = list(resumed.batches(1))
    assert _same(done + rest, full_epoch_one)
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["batch_index"] == 0
    # A fresh epoch after the resumed one starts at its first batch.
    assert _same(list(resumed.batches(2)), list(DataLoader(data, batch_size=3, seed=7).batches(2)))


def test_state_after_the_last_batch_points_to_the_next_epoch() -> None:
    loader = DataLoader(_dataset(6), batch_size=3, seed=0)
    iterator = loader.batches(0)
    next(iterator)
    assert loader.state_dict()["batch_index"] == 1
    next(iterator)  # last batch handed out; the generator has not finished yet
    assert (loader.state_dict()["epoch"], loader.state_dict()["batch_index"]) == (1, 0)


def test_other_epoch_starts_from_zero() -> None:
    data = _dataset(12)
    loader = DataLoader(data, batch_size=2, seed=3)
    loader.load_state_dict({"epoch": 2, "batch_index": 5, "num_batches": 6, "seed": 3})
    assert _same(list(loader.batches(0)), list(DataLoader(data, batch_size=2, seed=3).batches(0)))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"epoch": 0, "batch_index": 1}, r"num_batches, seed missing or not a non-negative integer"),
        ({"epoch": -1, "batch_index": 0, "num_batches": 4, "seed": 0}, r"epoch missing or not a non-negative"),
        (
            {"epoch": 0, "batch_index": 0, "num_batches": 5, "seed": 0},
            r"saved with 5 batches per epoch and seed 0, now 4",
        ),
        (
            {"epoch": 0, "batch_index": 0, "num_batches": 4, "seed": 9},
            r"seed 9, now 4 and 0; resume with the same data",
        ),
        ({"epoch": 0, "batch_index": 4, "num_batches": 4, "seed": 0}, r"batch_index 4 is past the 4 batches"),
    ],
)
def test_load_state_dict_rejects_mismatches(state: dict[str, int], message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataLoader(_dataset(8), batch_size=2).load_state_dict(state)


def test_loader_checks_its_options() -> None:
    data = _dataset(4)
    for bad in (0, True, 2.5):
        with pytest.raises(DataError, match=r"batch_size=.*: must be an integer >= 1"):
            DataLoader(data, batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"seed=-1: must be an integer >= 0"):
        DataLoader(data, batch_size=1, seed=-1)
    with pytest.raises(DataError, match=r"epoch=-1: must be an integer >= 0"):
        next(DataLoader(data, batch_size=1).batches(-1))
