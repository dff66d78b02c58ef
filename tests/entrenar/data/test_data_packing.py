"""entrenar.data.packing: first-fit decreasing, the packed-row layout, and packed == unpacked losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from aprender.text import Tokenizer
from entrenar.data.encode import EncodedSample, Encoder
from entrenar.data.formats import normalize_record
from entrenar.data.loader import collate_packed, collate_padded
from entrenar.data.packing import PAD_SEQ_ID, pack_first_fit_decreasing, pack_row
from entrenar.data.sources import Location
from entrenar.errors import DataError


def _naive_first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Reference: scan the open bins left to right for each item, longest item first."""
    bins: list[list[int]] = []
    free: list[int] = []
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for slot, room in enumerate(free):
            if room >= lengths[item]:
                bins[slot].append(item)
                free[slot] -= lengths[item]
                break
        else:
            bins.append([item])
            free.append(capacity - lengths[item])
    return bins


def test_first_fit_decreasing_hand_case() -> None:
    # Longest first: 5→bin0 (3 left), 4→bin1 (4 left), 3→bin0 (0), 3→bin1 (1), 2→bin2 (6), 2→bin2 (4), 1→bin1 (0).
    assert pack_first_fit_decreasing([5, 4, 3, 3, 2, 2, 1], 8) == [[0, 2], [1, 3, 6], [4, 5]]
    assert pack_first_fit_decreasing([], 8) == []
    assert pack_first_fit_decreasing([8, 8], 8) == [[0], [1]]


@given(st.integers(1, 64).flatmap(lambda cap: st.tuples(st.just(cap), st.lists(st.integers(1, cap), max_size=60))))
def test_first_fit_decreasing_matches_the_naive_scan(case: tuple[int, list[int]]) -> None:
    capacity, lengths = case
    bins = pack_first_fit_decreasing(lengths, capacity)
    assert bins == _naive_first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)


@pytest.mark.parametrize(
    ("lengths", "capacity", "message"),
    [([1], 0, r"capacity=0: must be >= 1"), ([3, 0], 4, r"item 1 has length 0"), ([5], 4, r"item 0 has length 5")],
)
def test_first_fit_decreasing_rejects_bad_sizes(lengths: list[int], capacity: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        pack_first_fit_decreasing(lengths, capacity)


def _sample(ids: list[int], targets: list[bool]) -> EncodedSample:
    return EncodedSample(np.array(ids, dtype=np.int64), np.array(targets, dtype=bool))


def test_pack_row_layout_hand_case() -> None:
    first = _sample([10, 11, 12], [False, True, True])
    second = _sample([20, 21, 22, 23], [False, False, True, True])
    row = pack_row([first, second], 9, pad_id=0)
    # Written out by hand from the layout rules in the module docstring.
    assert row["input_ids"].tolist() == [10, 11, 12, 20, 21, 22, 23, 0, 0]
    assert row["labels"].tolist() == [11, 12, -100, -100, 22, 23, -100, -100, -100]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    assert row["seq_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, PAD_SEQ_ID, PAD_SEQ_ID]
    assert row["attention_mask"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    full = pack_row([first, second], 7, pad_id=0)
    assert full["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3] and full["attention_mask"].all()
    with pytest.raises(DataError, match=r"samples of 7 tokens do not fit a packed row of 6"):
        pack_row([first, second], 6, pad_id=0)


@given(st.lists(st.integers(2, 12), min_size=1, max_size=6), st.integers(0, 5), st.randoms(use_true_random=False))
def test_pack_row_invariants(lengths: list[int], padding: int, rng: object) -> None:
    samples = [
        _sample(list(range(100 * k, 100 * k + n)), [False] + [bool(rng.random() < 0.7) for _ in range(n - 1)])  # type: ignore[attr-defined]
        for k, n in enumerate(lengths)
    ]
    seq_len = sum(lengths) + padding
    row = pack_row(samples, seq_len, pad_id=7)
    starts = np.cumsum([0, *lengths])
    for k, sample in enumerate(samples):
        block = slice(starts[k], starts[k + 1])
        assert (row["seq_ids"][block] == k).all()
        assert row["position_ids"][block].tolist() == list(range(lengths[k]))
        assert row["labels"][block].tolist() == sample.labels().tolist()
        # No cross-sample target: a sample's last position predicts nothing.
        assert row["labels"][starts[k + 1] - 1] == -100
    assert (row["labels"][sum(lengths) :] == -100).all() and (row["input_ids"][sum(lengths) :] == 7).all()
    assert int((row["labels"] != -100).sum()) == sum(s.n_targets for s in samples)


# ------------------------------------------------------------------------------------ model-level check

CHATS = [
    [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi, how are you?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
    ],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue, like the sea."}],
]


def _per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, seq_ids: torch.Tensor) -> list[float]:
    """Summed cross-entropy of each sample of each row, in row-major order of (row, seq id)."""
    token_loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view(labels.shape)
    losses = []
    for row in range(labels.shape[0]):
        for sample in range(int(seq_ids[row].max()) + 1):
            losses.append(float(token_loss[row][seq_ids[row] == sample].sum()))
    return losses


@pytest.fixture(scope="module")
def llama_setup(tiny_checkpoints: dict[str, Path]) -> tuple[object, list[EncodedSample]]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_checkpoints["llama"], dtype=torch.float32).eval()
    encoder = Encoder(Tokenizer.from_dir(tiny_checkpoints["llama"]), seq_len=128)
    location = Location("chats.jsonl", 1)
    samples = [encoder.encode(normalize_record({"messages": chat}, "messages", location)) for chat in CHATS]
    return model, samples


def test_packed_losses_equal_unpacked_losses(llama_setup: tuple[object, list[EncodedSample]]) -> None:
    model, samples = llama_setup
    with torch.no_grad():
        # Reference: each sample alone, no padding.
        alone = []
        for sample in samples:
            batch = collate_padded([sample], pad_id=0)
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits  # type: ignore[operator]
            alone += _per_sample_losses(logits, batch["labels"], torch.zeros_like(batch["labels"]))
        packed = collate_packed([samples], seq_len=sum(len(s) for s in samples) + 5, pad_id=0)
        # transformers 5 finds packed samples from restarting position_ids (with no 2D mask and no cache) ...
        by_positions = model(  # type: ignore[operator]
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        # ... and accepts a custom 4D mask: causal within equal seq_ids (padding sees only its own block).
        seq_ids = packed["seq_ids"]
        length = seq_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        block = (seq_ids[:, :, None] == seq_ids[:, None, :]) & causal
        by_seq_ids = model(  # type: ignore[operator]
            input_ids=packed["input_ids"],
            position_ids=packed["position_ids"],
            attention_mask=block[:, None],
            use_cache=False,
        ).logits
        # Control: the same row without restarting positions or a mask leaks across samples.
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits  # type: ignore[operator]
    assert packed["n_tokens"].item() == sum(s.n_targets for s in samples)
    np.testing.assert_allclose(_per_sample_losses(by_positions, packed["labels"], seq_ids), alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_per_sample_losses(by_seq_ids, packed["labels"], seq_ids), alone, rtol=1e-5, atol=1e-5)
    leaked = _per_sample_losses(leaky, packed["labels"], seq_ids)
    assert abs(leaked[0] - alone[0]) < 1e-5  # the first sample sees nothing before it either way
    assert abs(leaked[1] - alone[1]) > 1e-3 and abs(leaked[2] - alone[2]) > 1e-3
