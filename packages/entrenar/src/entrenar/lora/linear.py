"""`LoRALinear`: a frozen linear layer plus a trainable low-rank update (LoRA, rsLoRA, DoRA, PiSSA init).

    y = x @ W.T + b + scaling * dropout(x) @ A.T @ B.T          A (r, in), B (out, r)

LoRA: Hu et al. 2021, https://arxiv.org/abs/2106.09685. DoRA (Liu et al. 2024,
https://arxiv.org/abs/2402.09353) rescales each output row of ``W' = W + scaling * B @ A`` to a trained
magnitude m: ``y = (m / ||W'||_row) * (x @ W'.T) + b``, with the row norm treated as a constant in
backward (section 4.3 of the paper). The numerics follow PEFT's ``tuners/lora/layer.py`` and ``dora.py``
(DoRA in the same operation order), so logits match a PEFT model with the same tensors; plain LoRA applies
the scaling to the rank-r activations and fuses the addition into the last matmul (float rounding apart,
the same result with less memory traffic).

Where the base lives:

- a dense ``nn.Linear`` base is taken apart: its ``weight`` (out, in) and ``bias`` (out,) become this
  module's own frozen parameters under the same names, so a Hugging Face checkpoint's
  ``...q_proj.weight`` loads into ``...q_proj.weight`` unchanged (torchtune's choice);
- any other base (a quantized ``NF4Linear``/``Int8Linear``: ``in_features``, ``out_features``, a forward
  and ``weight_dequantized(dtype)``) is kept as the child ``base_layer`` and called as is: QLoRA is a
  4-bit base plus adapters in the compute dtype. Merging into such a base is refused (merge into the
  de-quantized checkpoint on disk instead).

The adapter adds ``lora_A``, ``lora_B`` and, with DoRA, ``lora_magnitude_vector`` (out,): the names PEFT
uses, so `entrenar.lora.peft_io` maps them to ``<path>.lora_A.weight`` etc.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entrenar.errors import LoraError
from entrenar.lora.config import LoraConfig

__all__ = ["LoRALinear", "WeightFakeQuant", "dora_merge", "lora_delta", "pissa_split"]


class WeightFakeQuant(Protocol):
    """What quantization-aware training sets as `LoRALinear.fake_quant` (`entrenar.train.qat.LayerFakeQuant`)."""

    @property
    def active(self) -> bool:
        """Whether the forward pass runs on the fake-quantized merged weight now."""

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, sources: Sequence[Tensor]) -> Tensor:
        """``x @ fq(weight).T + bias`` with a straight-through gradient; `sources` are what `weight` is made of."""


def lora_delta(lora_A: Tensor, lora_B: Tensor, scaling: float) -> Tensor:
    """The weight update ``scaling * B @ A`` in float32.

    Args:
        lora_A: (r, in).
        lora_B: (out, r).
        scaling: ``alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA).

    Returns:
        (out, in) float32.
    """
    return (lora_B.float() @ lora_A.float()) * scaling


def dora_merge(weight: Tensor, delta: Tensor, magnitude: Tensor) -> tuple[Tensor, Tensor]:
    """DoRA's merged weight ``(m / ||W + delta||_row) * (W + delta)`` (arXiv 2402.09353, eq. 5), in float32.

    Args:
        weight: W (out, in).
        delta: The LoRA update (out, in), scaling included.
        magnitude: m (out,).

    Returns:
        The merged weight (out, in) and the row norms ``||W + delta||`` (out,) it divided by, both float32.
    """
    combined = weight.float() + delta.float()
    norm = torch.linalg.norm(combined, dim=1)
    return (magnitude.float() / norm).unsqueeze(1) * combined, norm


def pissa_split(weight: Tensor, rank: int, scaling: float) -> tuple[Tensor, Tensor, Tensor]:
    """PiSSA init (Meng et al. 2024, https://arxiv.org/abs/2404.02948): principal part into A/B, rest stays.

    With ``W = U S V^T`` (full SVD in float32), ``A = sqrt(S_r / scaling) V_r^T`` and
    ``B = U_r sqrt(S_r / scaling)``, so ``scaling * B @ A`` is the best rank-r approximation of W and the
    residual ``W - scaling * B @ A`` replaces the base weight (PEFT's ``init_lora_weights="pissa"``).

    Args:
        weight: W (out, in).
        rank: r <= min(out, in).
        scaling: The adapter's scaling.

    Returns:
        A (r, in), B (out, r) and the residual (out, in), all float32.
    """
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = torch.sqrt(s[:rank] / scaling)
    lora_A = root.unsqueeze(1) * vh[:rank]
    lora_B = u[:, :rank] * root.unsqueeze(0)
    return lora_A, lora_B, weight.float() - scaling * (lora_B @ lora_A)


class LoRALinear(nn.Module):
    """A frozen base linear layer plus a LoRA (or DoRA) adapter.

    Args:
        base: ``nn.Linear`` (its weight and bias are adopted under the same names) or a module with
            ``in_features``, ``out_features`` and a forward (kept as ``base_layer``; DoRA also needs
            ``weight_dequantized(dtype)``).
        config: Rank, alpha, dropout, rsLoRA, DoRA and init (``target_modules`` is not used here).
        dtype: dtype of the adapter parameters; None: the dense weight's dtype, or the quantized base's
            ``compute_dtype`` (float32 when it has none).

    Attributes:
        disabled: When True the forward is the base alone (the reference model); a merged adapter is
            unmerged first, as PEFT does.
        merged: Whether the update is currently folded into ``weight``.
        fake_quant: Set by quantization-aware training (`entrenar.train.qat`): while it is active the forward is
            ``x @ fq(merged_weight()).T + b`` (dense base, no DoRA, no dropout); None: the plain forward.

    Raises:
        LoraError: The base has no ``in_features``/``out_features``, is already a `LoRALinear`, the rank is
            larger than a side of W with PiSSA, or DoRA/PiSSA need a weight the base cannot give.

    Example:
        >>> layer = LoRALinear(nn.Linear(64, 32), LoraConfig(rank=4, alpha=8))
        >>> layer(torch.randn(2, 64)).shape
        torch.Size([2, 32])
    """

    weight: Tensor | None
    bias: Tensor | None

    def __init__(self, base: nn.Module, config: LoraConfig, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        in_features, out_features = _check_base(base, config)
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.scaling, self.dropout = config.rank, config.alpha, config.scaling, config.dropout
        self.use_dora, self.init = config.use_dora, config.init
        self.disabled = False
        self.merged = False
        self.fake_quant: WeightFakeQuant | None = None
        self._merge_norm: Tensor | None = None
        if isinstance(base, nn.Linear):
            self.base_layer: nn.Module | None = None
            self.weight = base.weight
            self.bias = base.bias
            device, dtype = base.weight.device, dtype or base.weight.dtype
        else:
            self.base_layer = base
            self.weight = self.bias = None
            device = next(itertools.chain(base.parameters(), base.buffers()), torch.empty(0)).device
            dtype = dtype or getattr(base, "compute_dtype", None) or torch.float32
        for tensor in itertools.chain(base.parameters(), base.buffers()):
            tensor.requires_grad_(False)
        self.lora_dropout: nn.Module = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(config.rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out_features, config.rank, device=device, dtype=dtype))
        if config.use_dora:
            self.lora_magnitude_vector = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        if device.type != "meta":  # on meta the loader calls initialize_parameters() once the base is loaded
            self.initialize_parameters()

    # ------------------------------------------------------------------------------------------ init

    def initialized_tensor_names(self) -> tuple[str, ...]:
        """What `initialize_parameters` fills and no base checkpoint holds: A, B and DoRA's magnitude."""
        return ("lora_A", "lora_B", "lora_magnitude_vector") if self.use_dora else ("lora_A", "lora_B")

    @torch.no_grad()
    def initialize_parameters(self) -> None:
        """Draw A and B for `init` and set DoRA's magnitude to ``||W + scaling * B @ A||_row``.

        Call it once the base weight holds its final values: the model loader does, after reading the
        checkpoint. PiSSA moves the principal part out of the base weight each time it runs, so call it once
        per freshly loaded base.

        Raises:
            LoraError: The adapter is merged (unmerge first), or PiSSA on a base that is not dense.
        """
        if self.merged:
            raise LoraError("cannot re-initialise a merged LoRA adapter; call unmerge() first")
        if self.init == "pissa":
            self._pissa_init()
        else:
            if self.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1 / self.rank)
            else:  # "default" and "none": nn.Linear's draw, as PEFT
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            if self.init == "none":
                nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))
            else:
                nn.init.zeros_(self.lora_B)
        if self.use_dora:
            combined = self.base_weight(torch.float32) + lora_delta(self.lora_A, self.lora_B, self.scaling)
            self.lora_magnitude_vector.copy_(torch.linalg.norm(combined, dim=1))

    def _pissa_init(self) -> None:
        weight = self._dense_weight("PiSSA init")
        lora_A, lora_B, residual = pissa_split(weight, self.rank, self.scaling)
        self.lora_A.copy_(lora_A)
        self.lora_B.copy_(lora_B)
        weight.copy_(residual)

    # ------------------------------------------------------------------------------------------ forward

    def base_weight(self, dtype: torch.dtype) -> Tensor:
        """The base weight W (out, in) in `dtype` (de-quantized for a quantized base); no gradient flows to it."""
        if self.weight is not None:
            return self.weight.detach().to(dtype)
        assert self.base_layer is not None
        dequantized: Tensor = cast(Any, self.base_layer).weight_dequantized(dtype)
        return dequantized.detach()

    def forward(self, x: Tensor) -> Tensor:
        """Base output plus the adapter's.

        Args:
            x: (..., in_features).

        Returns:
            (..., out_features) in the base output's dtype.
        """
        if self.disabled:
            if self.merged:
                self.unmerge()
            return self._base_forward(x)
        fake_quant = self.fake_quant
        if fake_quant is not None and fake_quant.active and not self.merged:
            assert self.weight is not None
            return fake_quant.linear(x, self.merged_weight(), self.bias, (self.weight, self.lora_A, self.lora_B))
        result = self._base_forward(x)
        if self.merged:
            return result
        x = x.to(self.lora_A.dtype)
        if self.use_dora:
            return self._dora_forward(x, result).to(result.dtype)
        return self._add_update(result, self.lora_dropout(x))

    def matmul_operands(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(x', W')`` with ``x' @ W'.T`` equal to this layer's output, for a fused LM-head loss.

        ``x' = [x, scaling * dropout(x) A^T]`` and ``W' = [W, B]``: the adapter's rank-r activations ride
        along as r extra input features, so a loss that takes one matrix (the chunked cross-entropy) trains A
        and B through autograd. None where no such pair exists (a bias, a quantized base, DoRA).

        Args:
            x: (N, in_features).

        Returns:
            x' (N, in_features + r) and W' (out_features, in_features + r), both in x's dtype, or None.
        """
        if self.bias is not None or self.weight is None:
            return None
        if self.disabled and self.merged:
            self.unmerge()
        if self.disabled or self.merged:
            return x, self.weight.to(x.dtype)
        if self.use_dora:
            return None
        down = F.linear(self.lora_dropout(x.to(self.lora_A.dtype)), self.lora_A) * self.scaling
        weight = torch.cat([self.weight.to(x.dtype), self.lora_B.to(x.dtype)], 1)
        return torch.cat([x, down.to(x.dtype)], -1), weight

    def _add_update(self, result: Tensor, x: Tensor) -> Tensor:
        """``result + scaling * (x A^T) B^T`` in the base output's dtype.

        The scaling multiplies the rank-r activations (r values per token instead of out_features), and when
        the base output already has the adapter's dtype the addition is fused into the second matmul
        (``addmm``): no (..., out_features) update tensor is made in forward or backward.
        """
        down = F.linear(x, self.lora_A) * self.scaling
        if result.dtype != down.dtype:  # e.g. a bfloat16 base with float32 adapters: PEFT's promotion
            return (result + F.linear(down, self.lora_B)).to(result.dtype)
        fused = torch.addmm(result.reshape(-1, self.out_features), down.reshape(-1, self.rank), self.lora_B.t())
        return fused.view(result.shape)

    def _base_forward(self, x: Tensor) -> Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        assert self.base_layer is not None
        out: Tensor = self.base_layer(x)
        return out

    def _dora_forward(self, x: Tensor, result: Tensor) -> Tensor:
        """``result + (m / n - 1) * (x W.T) + (m / n) * scaling * (x A.T B.T)``, n the detached row norm."""
        weight = self.base_weight(x.dtype)
        with torch.no_grad():
            norm = torch.linalg.norm(weight + self.scaling * (self.lora_B @ self.lora_A).to(x.dtype), dim=1)
        scale = (self.lora_magnitude_vector / norm).view(1, -1)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = self.bias if self.base_layer is None else getattr(self.base_layer, "bias", None)
            base = result if bias is None else result - bias
        else:  # dropout changes x, so the base term is recomputed from the dropped input (no bias)
            x = self.lora_dropout(x)
            base = F.linear(x, weight)
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return result + ((scale - 1) * base + scale * update * self.scaling)  # PEFT's grouping, bit for bit

    # ------------------------------------------------------------------------------------------ merge

    def merged_weight(self) -> Tensor:
        """``W + scaling * B @ A`` in W's dtype, differentiable with respect to A and B: the weight `merge` and
        `entrenar.lora.merge_weight` fold (same operations, same bits); dense base, no DoRA.

        Raises:
            LoraError: The base is quantized.
        """
        weight = self._dense_weight("merged_weight")
        return (weight.detach().float() + lora_delta(self.lora_A, self.lora_B, self.scaling)).to(weight.dtype)

    def delta_weight(self) -> Tensor:
        """The LoRA update ``scaling * B @ A`` (out, in) in float32 (DoRA's rescaling not included)."""
        return lora_delta(self.lora_A.detach(), self.lora_B.detach(), self.scaling)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into ``weight`` (computed in float32); calling it again changes nothing.

        Raises:
            LoraError: The base is quantized.
        """
        if self.merged:
            return
        weight = self._dense_weight("merge")
        delta = self.delta_weight()
        if self.use_dora:
            merged, self._merge_norm = dora_merge(weight, delta, self.lora_magnitude_vector)
        else:
            merged = weight.float() + delta
        weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight (up to float rounding); a no-op when not merged."""
        if not self.merged:
            return
        weight = self._dense_weight("unmerge")
        delta = self.delta_weight()
        if self.use_dora:
            assert self._merge_norm is not None
            factor = (self.lora_magnitude_vector.float() / self._merge_norm).unsqueeze(1)
            weight.copy_(weight.float() / factor - delta)
            self._merge_norm = None
        else:
            weight.copy_(weight.float() - delta)
        self.merged = False

    def _dense_weight(self, what: str) -> Tensor:
        if self.weight is None:
            raise LoraError(
                f"LoRA {what} needs a dense base weight, but this layer's base is {type(self.base_layer).__name__}; "
                "merge into the de-quantized checkpoint with merge_adapter_into_checkpoint"
            )
        return self.weight

    def extra_repr(self) -> str:
        kind = "dense" if self.base_layer is None else "quantized"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"scaling={self.scaling:g}, dora={self.use_dora}, init={self.init}, base={kind}, "
            f"bias={self._has_bias()}, merged={self.merged}, disabled={self.disabled}"
        )

    def _has_bias(self) -> bool:
        return (self.bias if self.base_layer is None else getattr(self.base_layer, "bias", None)) is not None


def _check_base(base: nn.Module, config: LoraConfig) -> tuple[int, int]:
    """(in_features, out_features) of a base LoRA can wrap; refuse what it cannot."""
    if isinstance(base, LoRALinear):
        raise LoraError("this layer already has a LoRA adapter; one adapter per layer is supported")
    in_features, out_features = getattr(base, "in_features", None), getattr(base, "out_features", None)
    if not isinstance(in_features, int) or not isinstance(out_features, int):
        raise LoraError(
            f"LoRA needs a linear base with in_features and out_features, got {type(base).__name__}; "
            "target linear layers only"
        )
    dense = isinstance(base, nn.Linear)
    if config.init == "pissa" and not dense:
        raise LoraError(f"PiSSA init needs a dense nn.Linear base, got {type(base).__name__}; quantize after init")
    if config.init == "pissa" and config.rank > min(in_features, out_features):
        raise LoraError(
            f"PiSSA rank {config.rank} exceeds min(in_features, out_features) = {min(in_features, out_features)}; "
            "lower the rank"
        )
    if config.use_dora and not dense and not callable(getattr(base, "weight_dequantized", None)):
        raise LoraError(f"DoRA needs the base weight, but {type(base).__name__} has no weight_dequantized(dtype)")
    return in_features, out_features
