"""Attention masks for `torch.nn.functional.scaled_dot_product_attention`: causal, sliding window,
padding and packed samples, combined into one boolean mask only when something beyond plain
causality is needed (otherwise SDPA gets ``is_causal=True`` and can pick its fused kernels).

A query at absolute index ``q`` (cached tokens first) may attend key ``k`` when ``k <= q`` (causal),
``k > q - window`` (sliding window, Mistral/Qwen2), the key is not padding, and both tokens belong to
the same packed sample. Every query also attends to itself, so padding rows never become all-masked
(which would give NaN); the outputs at padding positions are meaningless but finite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AttentionMask", "build_attention_masks", "segment_ids_from_positions"]


@dataclass(frozen=True)
class AttentionMask:
    """How one attention call masks: an explicit boolean `mask` (True = attend) or none and `is_causal`.

    Attributes:
        mask: Shape broadcastable to (B, 1, T_q, T_kv), or None.
        is_causal: Ask SDPA for its built-in causal mask (only when `mask` is None).
    """

    mask: Tensor | None
    is_causal: bool


def segment_ids_from_positions(position_ids: Tensor) -> Tensor:
    """Number the packed samples of each row: a sample starts wherever a position does not continue the previous one.

    Args:
        position_ids: Shape (B, T), positions restarting (usually at 0) for every packed sample.

    Returns:
        Int64 tensor (B, T): 0 for the first sample of each row, 1 for the next, ...

    Example:
        ``[[0, 1, 2, 0, 1, 0]] -> [[0, 0, 0, 1, 1, 2]]``.
    """
    breaks = (position_ids.diff(dim=-1) != 1).to(torch.int64).cumsum(dim=-1)
    return torch.cat((torch.zeros_like(breaks[:, :1]), breaks), dim=-1)


def build_attention_masks(
    *,
    batch: int,
    q_len: int,
    past: int,
    device: torch.device,
    padding: Tensor | None,
    segments: Tensor | None,
    windows: Iterable[int | None],
) -> dict[int | None, AttentionMask]:
    """One mask per distinct sliding window used by the model's layers.

    Args:
        batch: Batch size B.
        q_len: New tokens T_q.
        past: Tokens already in the KV cache; keys cover ``past + q_len`` tokens.
        device: Where to build the masks.
        padding: 1/True for real tokens, 0/False for padding, shape (B, past + T_q), or None.
        segments: Packed-sample ids, shape (B, T_q) (only without a cache), or None.
        windows: The layers' windows (None = full causal attention).

    Returns:
        Window -> `AttentionMask`.
    """
    return {window: _mask_for(batch, q_len, past, device, padding, segments, window) for window in set(windows)}


def _mask_for(
    batch: int,
    q_len: int,
    past: int,
    device: torch.device,
    padding: Tensor | None,
    segments: Tensor | None,
    window: int | None,
) -> AttentionMask:
    kv_len = past + q_len
    plain = padding is None and segments is None and (window is None or window >= kv_len)
    if plain and (past == 0 or q_len == 1):
        # Plain causal prefill, or one new token that may see the whole cache: no mask needed.
        return AttentionMask(None, is_causal=past == 0 and q_len > 1)
    q_idx = torch.arange(past, kv_len, device=device)[:, None]
    k_idx = torch.arange(kv_len, device=device)[None, :]
    allowed = k_idx <= q_idx
    if window is not None:
        allowed = allowed & (k_idx > q_idx - window)
    allowed = allowed[None, None]  # (1, 1, T_q, T_kv)
    if padding is not None:
        allowed = allowed & padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    if segments is not None:
        allowed = allowed & (segments[:, None, :, None] == segments[:, None, None, :])
    allowed = allowed | (k_idx == q_idx)
    return AttentionMask(allowed.expand(batch, 1, q_len, kv_len), is_causal=False)
