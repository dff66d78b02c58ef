"""Parameter counts and a training-memory estimate from ``config.json`` alone (no weights are read).

`meta_model` builds the run's model on PyTorch's ``meta`` device (shapes, no storage) with the same
`entrenar.train.setup.model.assemble_model` the trainer uses, so adapters, quantized layers and what trains
are exactly those of the real run. `estimate_memory` then adds up, in bytes:

- weights: frozen tensors in ``model.dtype`` (quantized layers: their real NF4/int8 buffers, e.g.
  ~4.127 bits per weight for NF4 with double quantization), trainable ones in float32;
- gradients: float32, one per trainable element;
- optimizer state: AdamW/Adam two float32 moments per element; 8-bit AdamW one byte per moment (plus a
  float32 absmax per block of 256) for tensors of at least 4096 elements, float32 below; SGD one float32
  momentum buffer when ``momentum`` > 0;
- activations kept for backward, per token and layer (in the compute dtype): the residual input and the
  two norm outputs (3h), q/k/v (h + 2 kv), the attention output (h), gate/up/product of the MLP (3i),
  i.e. ``6h + 2kv + 3i`` elements, following Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198)
  with memory-efficient attention (no stored score matrix). With gradient checkpointing only each
  layer's input (h) is kept, plus one layer's full set during its recomputation;
- the loss: a few float32 (chunk, vocab) buffers of the chunked cross-entropy (`aprender.loss`).

It is an estimate: allocator overhead, CUDA context and temporary buffers come on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from entrenar.config import TrainConfig
from entrenar.models import CausalLM, LinearFactory, ModelConfig
from entrenar.quant import Int8Linear, NF4Linear
from entrenar.train.loss import DEFAULT_CHUNK_SIZE
from entrenar.train.setup.model import assemble_model

__all__ = ["MemoryEstimate", "ParameterCounts", "count_parameters", "estimate_memory", "meta_model"]

_LOSS_BUFFERS = 3
_BLOCK_8BIT = 256
_MIN_8BIT = 4096


@dataclass(frozen=True)
class ParameterCounts:
    """Model size in elements.

    Attributes:
        total: Every weight (a quantized layer counts its ``out x in`` weights and bias).
        trainable: Elements that receive gradients.
    """

    total: int
    trainable: int

    @property
    def percent(self) -> float:
        """Trainable share of the total, in percent."""
        return 100.0 * self.trainable / self.total


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated training memory in bytes (module docstring).

    Attributes:
        weights: Model weights (frozen and trainable).
        gradients: Gradients of the trainable weights.
        optimizer: Optimizer state.
        activations: Activations kept for backward, plus the loss buffers.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        """The sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.activations


def meta_model(cfg: TrainConfig, config: ModelConfig) -> CausalLM:
    """The run's model with shapes only (``meta`` device): adapters, quantized layers, what trains.

    Args:
        cfg: The training config.
        config: The base model's architecture.

    Returns:
        The model; its tensors hold no data.

    Raises:
        LoraError: Targets that match no layer.
    """

    def load(factory: LinearFactory | None) -> CausalLM:
        with torch.device("meta"):
            return CausalLM(config, factory)

    return assemble_model(cfg, load)


def _quantized_layers(model: nn.Module) -> list[NF4Linear | Int8Linear]:
    return [m for m in model.modules() if isinstance(m, NF4Linear | Int8Linear)]


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Total and trainable weights, counting quantized layers by their logical ``out x in`` (+ bias) size.

    Args:
        model: A model (real or on ``meta``).

    Returns:
        The counts; tied weights count once.
    """
    params = list(model.parameters())
    quantized = sum(
        m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0) for m in _quantized_layers(model)
    )
    return ParameterCounts(
        total=sum(p.numel() for p in params) + quantized, trainable=sum(p.numel() for p in params if p.requires_grad)
    )


def _optimizer_bytes(cfg: TrainConfig, trainable: Sequence[torch.Tensor]) -> int:
    name = cfg.optimizer.name
    if name == "sgd":
        return 0 if not cfg.optimizer.momentum else 4 * sum(p.numel() for p in trainable)
    if name != "adamw8bit":
        return 8 * sum(p.numel() for p in trainable)
    total = 0
    for p in trainable:
        n = p.numel()
        total += 2 * (n + 4 * math.ceil(n / _BLOCK_8BIT)) if n >= _MIN_8BIT else 8 * n
    return total


def _activation_bytes(cfg: TrainConfig, config: ModelConfig, element: int) -> int:
    tokens = cfg.data.batch_size * cfg.data.seq_len
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 6 * h + 2 * config.num_kv_heads * config.head_dim + 3 * i
    if cfg.training.gradient_checkpointing:
        kept = tokens * (config.num_layers * h + per_layer) * element
    else:
        kept = tokens * config.num_layers * per_layer * element
    loss = _LOSS_BUFFERS * min(DEFAULT_CHUNK_SIZE, tokens) * config.vocab_size * 4
    return kept + loss


def estimate_memory(cfg: TrainConfig, config: ModelConfig, model: nn.Module) -> MemoryEstimate:
    """Estimate the memory a training run needs (module docstring).

    Args:
        cfg: The training config (dtype, optimizer, batch size, sequence length, checkpointing).
        config: The base model's architecture.
        model: `meta_model` of the run.

    Returns:
        The estimate.
    """
    dtype_name = cfg.model.dtype if cfg.model.dtype != "auto" else (config.torch_dtype or "float32")
    element = torch.empty((), dtype=getattr(torch, dtype_name)).element_size()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen_params = sum(p.numel() * element for p in params if not p.requires_grad and p.is_floating_point())
    buffers = sum(b.numel() * b.element_size() for m in _quantized_layers(model) for b in m.buffers())
    trainable_bytes = 4 * sum(p.numel() for p in trainable)
    return MemoryEstimate(
        weights=frozen_params + buffers + trainable_bytes,
        gradients=trainable_bytes,
        optimizer=_optimizer_bytes(cfg, trainable),
        activations=_activation_bytes(cfg, config, element),
    )
