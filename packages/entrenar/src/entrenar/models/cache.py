"""A key/value cache for incremental decoding: each layer's keys and values grow along the time axis.

Pass one `KVCache` to successive forward calls: the first call (the prompt) fills it, each later call
feeds only the new tokens and attends to everything cached. The attention mask given with a cached
call covers all tokens so far (cached + new), as in transformers.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """Per-layer keys and values, shape (B, H_kv, T_seen, D), appended to on every forward call."""

    def __init__(self, num_layers: int) -> None:
        """Create an empty cache.

        Args:
            num_layers: Decoder layers of the model it serves.
        """
        self._keys: list[Tensor | None] = [None] * num_layers
        self._values: list[Tensor | None] = [None] * num_layers

    @property
    def num_layers(self) -> int:
        """Layers the cache holds entries for."""
        return len(self._keys)

    @property
    def length(self) -> int:
        """Tokens already cached (0 for a fresh cache)."""
        keys = self._keys[0]
        return 0 if keys is None else keys.shape[2]

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new tokens' keys and values of `layer` and return everything cached for it.

        Args:
            layer: Layer index.
            keys: New keys, shape (B, H_kv, T_new, D).
            values: New values, same shape.

        Returns:
            ``(keys, values)`` for all tokens seen so far, shape (B, H_kv, T_seen + T_new, D).
        """
        old_keys, old_values = self._keys[layer], self._values[layer]
        if old_keys is not None and old_values is not None:
            keys, values = torch.cat((old_keys, keys), dim=2), torch.cat((old_values, values), dim=2)
        self._keys[layer], self._values[layer] = keys, values
        return keys, values
