"""`CausalLM`: a decoder-only language model for the Llama, Mistral, Qwen2 and Qwen3 checkpoints.

Architecture (one file, top to bottom): token embedding -> N x [RMSNorm -> grouped-query attention
with RoPE -> residual -> RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (or the embedding
matrix when tied). Family differences live in `ModelConfig` (biases, Qwen3 q/k norm, sliding window,
RoPE scaling); the numerics follow the transformers implementations so logits match them.

With ``labels``, the forward pass returns the loss instead of the logits (`entrenar.models.head_loss`: a
chunked cross-entropy through the LM head that never materialises all the logits), so that everything
wrapping the model's forward (DDP, FSDP2, compile) sees the whole computation.

Inputs the forward pass understands:

- ``attention_mask`` (B, T_cache + T): 1 for tokens, 0 for padding (left or right).
- ``position_ids`` (B, T): default ``arange`` after the cached tokens (as transformers; padding does not
  shift them). Without a cache, positions that restart mark packed samples, and attention stays inside
  each one (as transformers does for packed batches).
- ``seq_ids`` (B, T): explicit packed-sample ids, for packing without restarting positions.
- ``kv_cache``: a `KVCache` for incremental decoding.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from entrenar.constants import IGNORE_INDEX
from entrenar.errors import ModelInputError
from entrenar.models.cache import KVCache
from entrenar.models.config import ModelConfig
from entrenar.models.head_loss import DEFAULT_LOSS_CHUNK_SIZE, KDFn, LossOutput, Reduction, head_loss
from entrenar.models.layers import DecoderLayer, RMSNorm
from entrenar.models.linear import LinearFactory, make_linear
from entrenar.models.masks import AttentionMask, build_attention_masks, segment_ids_from_positions
from entrenar.models.rope import RotaryEmbedding

__all__ = ["CausalLM", "DecoderModel"]


class DecoderModel(nn.Module):
    """The transformer body (``model.*`` in Hugging Face checkpoints): embedding, layers, final norm."""

    def __init__(self, config: ModelConfig, make_linear: LinearFactory) -> None:
        """Build the body.

        Args:
            config: The model config.
            make_linear: Builds every projection.
        """
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, make_linear, f"model.layers.{i}") for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)
        self.windows = [config.layer_window(i) for i in range(config.num_layers)]

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        masks: dict[int | None, AttentionMask],
        kv_cache: KVCache | None,
        checkpointing: bool,
        collect: dict[int, Tensor] | None = None,
    ) -> Tensor:
        """Run embedding, layers and final norm on validated inputs (`CausalLM.forward_hidden` prepares them).

        Args:
            input_ids: Token ids, shape (B, T).
            positions: Position ids, shape (B, T).
            masks: Sliding window (None = full attention) -> the layers' `AttentionMask`.
            kv_cache: Cache to read and extend, or None.
            checkpointing: Recompute each layer in backward (`torch.utils.checkpoint`, non-reentrant).
            collect: Layer index -> filled with that layer's output (B, T, hidden_size), for the keys present.

        Returns:
            Final hidden states, shape (B, T, hidden_size).
        """
        hidden = self.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, hidden.dtype)
        for index, (layer, window) in enumerate(zip(self.layers, self.windows, strict=True)):
            if checkpointing:
                hidden = checkpoint(layer, hidden, cos, sin, masks[window], use_reentrant=False)
            else:
                hidden = layer(hidden, cos, sin, masks[window], kv_cache)
            if collect is not None and index in collect:
                collect[index] = hidden
        output: Tensor = self.norm(hidden)
        return output


class CausalLM(nn.Module):
    """Decoder-only causal language model with Hugging Face parameter names.

    Example:
        >>> model = CausalLM(config)  # doctest: +SKIP
        >>> logits = model(input_ids)  # (B, T, vocab_size)  # doctest: +SKIP
    """

    def __init__(self, config: ModelConfig, linear_factory: LinearFactory | None = None) -> None:
        """Build the model (on the current default device, e.g. inside ``with torch.device("meta")``).

        Args:
            config: The architecture.
            linear_factory: Builds every projection (see `entrenar.models.linear`); default `make_linear`.
        """
        super().__init__()
        self.config = config
        factory = linear_factory or make_linear
        self.model = DecoderModel(config, factory)
        self.lm_head = (
            None if config.tie_word_embeddings else factory("lm_head", config.hidden_size, config.vocab_size, False)
        )
        self.gradient_checkpointing = False
        # generation_config.json of the checkpoint (set by from_pretrained, written by save_pretrained).
        self.generation_config: dict[str, Any] = {}

    @property
    def lm_head_weight(self) -> Tensor:
        """The (vocab_size, hidden_size) matrix mapping hidden states to logits (the embedding when tied)."""
        weight = self.output_embeddings().weight
        assert isinstance(weight, Tensor)
        return weight

    def output_embeddings(self) -> nn.Module:
        """The module whose ``weight`` maps hidden states to logits: ``lm_head``, or ``embed_tokens`` when tied."""
        return self.model.embed_tokens if self.lm_head is None else self.lm_head

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in backward instead of storing them.

        Applies while gradients are being recorded and no KV cache is used
        (`torch.utils.checkpoint` with ``use_reentrant=False``; Chen et al. 2016, https://arxiv.org/abs/1604.06174).

        Args:
            enabled: Turn checkpointing on or off.
        """
        self.gradient_checkpointing = enabled

    def new_kv_cache(self) -> KVCache:
        """An empty `KVCache` sized for this model."""
        return KVCache(self.config.num_layers)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        labels: Tensor | None = None,
        *,
        reduction: Reduction = "sum",
        loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE,
        predict: bool = False,
        kd: KDFn | None = None,
        hidden_layers: tuple[int, ...] = (),
    ) -> Tensor | LossOutput:
        """Logits for every position or, given labels, the next-token loss.

        Args:
            input_ids: Token ids, shape (B, T).
            attention_mask: 1 = token, 0 = padding, shape (B, T_cache + T).
            position_ids: Positions, shape (B, T) or (1, T).
            seq_ids: Packed-sample ids, shape (B, T); not with a KV cache.
            kv_cache: Cache to read and extend.
            labels: What each position predicts, shape (B, T), -100 where nothing (already shifted: the
                data pipeline aligns them). Given, the loss is returned instead of the logits.
            reduction: With labels: "sum" over the labelled tokens (default), "mean" or "none".
            loss_chunk_size: With labels: tokens per chunk of logits.
            predict: With labels: also return the arg-max token at every position.
            kd: With labels: a distillation loss computed on the LM head's operands at the labelled positions
                (`entrenar.models.head_loss.KDFn`), returned as ``LossOutput.kd``.
            hidden_layers: With labels: return these layers' outputs at the labelled positions
                (``LossOutput.hidden_states``, layer -> (N, hidden_size)), for layer-wise distillation.

        Returns:
            Logits (B, T, vocab_size) in the model's dtype; with labels a `LossOutput` (summed loss, labelled
            token count, predictions, distillation loss, layer outputs).

        Raises:
            ModelInputError: Inconsistent shapes or options.
        """
        # the keys ask for those layers; forward_hidden fills their values
        collected = cast(dict[int, Tensor], dict.fromkeys(hidden_layers)) if hidden_layers else None
        hidden = self.forward_hidden(input_ids, attention_mask, position_ids, seq_ids, kv_cache, collected)
        if labels is None:
            return self.logits(hidden)
        output = head_loss(
            self.output_embeddings(),
            self.logits,
            hidden,
            labels,
            reduction=reduction,
            chunk_size=loss_chunk_size,
            predict=predict,
            kd=kd,
        )
        if collected is None:
            return output
        keep = labels != IGNORE_INDEX
        return replace(output, hidden_states={layer: states[keep] for layer, states in collected.items()})

    def logits(self, hidden: Tensor) -> Tensor:
        """Project final hidden states to the vocabulary.

        Args:
            hidden: From `forward_hidden`, shape (..., hidden_size).

        Returns:
            Shape (..., vocab_size).
        """
        if self.lm_head is None:
            return torch.nn.functional.linear(hidden, self.model.embed_tokens.weight)
        output: Tensor = self.lm_head(hidden)
        return output

    def forward_hidden(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        collect: dict[int, Tensor] | None = None,
    ) -> Tensor:
        """Final hidden states (after the last RMSNorm), the LM head's input.

        Args:
            input_ids: Token ids, shape (B, T).
            attention_mask: 1 = token, 0 = padding, shape (B, T_cache + T).
            position_ids: Positions, shape (B, T) or (1, T).
            seq_ids: Packed-sample ids, shape (B, T); not with a KV cache.
            kv_cache: Cache to read and extend.
            collect: Layer index -> filled with that layer's output (B, T, hidden_size), for the keys present.

        Returns:
            Shape (B, T, hidden_size).

        Raises:
            ModelInputError: Inconsistent shapes or options.
        """
        past = _check_inputs(self.config, input_ids, attention_mask, position_ids, seq_ids, kv_cache)
        batch, length = input_ids.shape
        positions = _positions(input_ids, position_ids, past)
        masks = build_attention_masks(
            batch=batch,
            q_len=length,
            past=past,
            device=input_ids.device,
            padding=_padding(attention_mask),
            segments=_segments(positions if position_ids is not None else None, seq_ids, kv_cache),
            windows=self.model.windows,
        )
        checkpointing = self.gradient_checkpointing and kv_cache is None and torch.is_grad_enabled()
        output: Tensor = self.model(input_ids, positions, masks, kv_cache, checkpointing, collect)
        return output


def _check_inputs(
    config: ModelConfig,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor | None,
    seq_ids: Tensor | None,
    kv_cache: KVCache | None,
) -> int:
    """Validate the forward arguments; return the number of cached tokens."""
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ModelInputError(
            f"input_ids must be integer token ids of shape (B, T), got {tuple(input_ids.shape)} {input_ids.dtype}"
        )
    batch, length = input_ids.shape
    if kv_cache is not None and kv_cache.num_layers != config.num_layers:
        raise ModelInputError(
            f"kv_cache has {kv_cache.num_layers} layers but the model {config.num_layers}; "
            "create it with model.new_kv_cache()"
        )
    past = 0 if kv_cache is None else kv_cache.length
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + length):
        raise ModelInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(batch, past + length)} "
            "(batch, cached + new tokens)"
        )
    if position_ids is not None and (
        position_ids.dim() != 2 or position_ids.shape[0] not in (1, batch) or position_ids.shape[1] != length
    ):
        raise ModelInputError(
            f"position_ids has shape {tuple(position_ids.shape)}; expected {(batch, length)} or (1, {length})"
        )
    if seq_ids is not None:
        if kv_cache is not None:
            raise ModelInputError("seq_ids (packed samples) cannot be combined with a kv_cache; pass one or the other")
        if tuple(seq_ids.shape) != (batch, length):
            raise ModelInputError(f"seq_ids has shape {tuple(seq_ids.shape)}; expected {(batch, length)}")
    return past


def _positions(input_ids: Tensor, position_ids: Tensor | None, past: int) -> Tensor:
    batch, length = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(past, past + length, device=input_ids.device)[None]
    return position_ids.expand(batch, length)


def _padding(attention_mask: Tensor | None) -> Tensor | None:
    """The padding mask, or None when it has no padding (so SDPA may use its causal fast path)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask


def _segments(position_ids: Tensor | None, seq_ids: Tensor | None, kv_cache: KVCache | None) -> Tensor | None:
    """Packed-sample ids from `seq_ids`, else from restarting `position_ids` (no cache); None for one sample per row."""
    if seq_ids is not None:
        segments = seq_ids
    elif position_ids is not None and kv_cache is None:
        segments = segment_ids_from_positions(position_ids)
    else:
        return None
    return None if bool((segments == segments[:, :1]).all()) else segments
