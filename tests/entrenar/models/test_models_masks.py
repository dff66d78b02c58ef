"""Attention masks: segment ids from positions, and every mask against a loop that applies the rules one by one."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.models.masks import build_attention_masks, segment_ids_from_positions


def test_segment_ids_by_hand() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 5, 6, 7, 8], [1, 1, 0, 1, 2, 3]])
    # A new sample starts wherever a position is not the previous one plus one.
    expected = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0], [0, 1, 2, 2, 2, 2]])
    assert torch.equal(segment_ids_from_positions(positions), expected)


def _allowed(
    q: int, k: int, b: int, window: int | None, padding: list[list[int]] | None, seg: list[list[int]] | None
) -> bool:
    if q == k:
        return True  # every query sees itself, so no row is empty
    rules = [k <= q, window is None or k > q - window]
    rules.append(padding is None or bool(padding[b][k]))
    rules.append(seg is None or seg[b][q] == seg[b][k])
    return all(rules)


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, int, int, list[list[int]] | None, list[list[int]] | None, int | None]:
    batch, q_len = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    past = draw(st.integers(0, 4))
    kv_len = past + q_len
    padding = draw(
        st.none()
        | st.lists(st.lists(st.integers(0, 1), min_size=kv_len, max_size=kv_len), min_size=batch, max_size=batch)
    )
    segments = None
    if past == 0:
        row = st.lists(st.integers(0, 2), min_size=q_len, max_size=q_len).map(sorted)
        segments = draw(st.none() | st.lists(row, min_size=batch, max_size=batch))
    window = draw(st.none() | st.integers(1, 8))
    return batch, q_len, past, padding, segments, window


@settings(max_examples=150, deadline=None)
@given(cases())
def test_masks_apply_causal_window_padding_and_segment_rules(
    case: tuple[int, int, int, list[list[int]] | None, list[list[int]] | None, int | None],
) -> None:
    batch, q_len, past, padding, segments, window = case
    masks = build_attention_masks(
        batch=batch,
        q_len=q_len,
        past=past,
        device=torch.device("cpu"),
        padding=None if padding is None else torch.tensor(padding),
        segments=None if segments is None else torch.tensor(segments),
        windows=[window, None],
    )
    assert set(masks) == {window, None}
    for w, spec in masks.items():
        expected = torch.tensor(
            [
                [[[_allowed(past + i, k, b, w, padding, segments) for k in range(past + q_len)] for i in range(q_len)]]
                for b in range(batch)
            ]
        )
        if spec.mask is None:
            # Fast path: SDPA's own causal mask (upper-left aligned, so only without a cache) or no mask at all.
            full = torch.ones_like(expected)
            causal = torch.ones(q_len, q_len, dtype=torch.bool).tril().expand_as(expected)
            assert torch.equal(expected, causal if spec.is_causal else full)
            assert spec.is_causal == (past == 0 and q_len > 1)
        else:
            assert not spec.is_causal
            assert torch.equal(spec.mask, expected)


def test_plain_prefill_uses_the_causal_fast_path() -> None:
    masks = build_attention_masks(
        batch=2, q_len=5, past=0, device=torch.device("cpu"), padding=None, segments=None, windows=[None, 5, 4]
    )
    assert masks[None].mask is None and masks[None].is_causal
    assert masks[5].mask is None  # a window as long as the sequence changes nothing
    assert masks[4].mask is not None  # a shorter one does
