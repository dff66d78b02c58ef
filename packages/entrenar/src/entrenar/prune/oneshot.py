"""One-shot pruning of a `CausalLM`, layer by layer, as the WANDA and SparseGPT reference code does.

Magnitude pruning needs no data: each linear layer is pruned on its own weights. WANDA and SparseGPT
(https://github.com/locuslab/wanda ``prune_wanda``, https://github.com/IST-DASLab/sparsegpt
``llama_sequential``) calibrate sequentially:

1. the calibration windows go through the token embedding: the hidden states (samples, T, hidden);
2. for each decoder layer in turn: the layer runs on those hidden states with hooks on its linear layers
   (`aprender.pruning.CalibrationCollector`: ``Σx²`` per input channel for WANDA, ``XXᵀ`` for SparseGPT),
   every selected linear layer of it is pruned from those statistics, then the *pruned* layer runs again
   on the same inputs and its outputs, written over them, are the next layer's inputs.

So each layer is calibrated on what the already-pruned layers below it produce, and one layer's activations
(one (samples, T, hidden) buffer) are held at a time. Windows go through a layer `BATCH` at a time; the
statistics are sums over every token, so the batching changes nothing but memory. Statistics accumulate
in float32 (float64 for a float64 model).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aprender.errors import PruningError
from aprender.pruning import (
    CalibrationCollector,
    LayerStats,
    magnitude_scores,
    nm_mask,
    sparsegpt_prune,
    unstructured_mask,
    wanda_scores,
)
from entrenar.display import Report, silent
from entrenar.models import CausalLM
from entrenar.models.masks import build_attention_masks
from entrenar.prune.spec import PruneSpec

__all__ = ["BATCH", "ModuleSparsity", "PruneReport", "prune_model", "target_linears"]

BATCH = 8
"""Calibration windows per forward pass of one decoder layer."""


@dataclass(frozen=True)
class ModuleSparsity:
    """Zeros in one pruned linear layer's weight.

    Attributes:
        module: Its path, e.g. ``model.layers.0.self_attn.q_proj``.
        layer: The decoder layer it belongs to.
        weights: Entries of its weight.
        zeros: Entries that are zero after pruning.
    """

    module: str
    layer: int
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """``zeros / weights``."""
        return self.zeros / self.weights


@dataclass(frozen=True)
class PruneReport:
    """What `prune_model` did.

    Attributes:
        modules: Every pruned linear layer, in model order.
        skipped: Paths of the decoder linear layers kept dense by ``skip`` patterns.
    """

    modules: tuple[ModuleSparsity, ...]
    skipped: tuple[str, ...]

    @property
    def weights(self) -> int:
        """Weights of the pruned linear layers."""
        return sum(item.weights for item in self.modules)

    @property
    def zeros(self) -> int:
        """Zeros among them."""
        return sum(item.zeros for item in self.modules)

    @property
    def sparsity(self) -> float:
        """Fraction of the pruned linear layers' weights that are zero (0 when nothing was pruned)."""
        return self.zeros / self.weights if self.weights else 0.0

    def by_layer(self) -> dict[int, tuple[int, int]]:
        """Decoder layer -> (weights, zeros) over its pruned linear layers."""
        totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for item in self.modules:
            totals[item.layer][0] += item.weights
            totals[item.layer][1] += item.zeros
        return {layer: (weights, zeros) for layer, (weights, zeros) in totals.items()}


def target_linears(model: CausalLM, spec: PruneSpec) -> tuple[list[dict[str, nn.Linear]], list[str]]:
    """The linear layers to prune, per decoder layer (path -> module), and the paths `spec.skip` keeps dense.

    Raises:
        PruningError: A skip pattern that matches no decoder linear layer, or an N:M pattern whose M does not
            divide some layer's in_features.
    """
    targets: list[dict[str, nn.Linear]] = []
    skipped: list[str] = []
    for index, layer in enumerate(model.model.layers):
        linears = {
            f"model.layers.{index}.{name}": module
            for name, module in layer.named_modules()
            if isinstance(module, nn.Linear)
        }
        skipped.extend(path for path in linears if spec.skips(path))
        targets.append({path: module for path, module in linears.items() if not spec.skips(path)})
    for pattern in spec.skip:
        if not any(fnmatch.fnmatchcase(path, pattern) for path in skipped):
            raise PruningError(f"--skip {pattern!r} matches no linear layer; use globs like 'model.layers.0.*'")
    if spec.nm is not None:
        m = spec.nm[1]
        for path, module in (item for chosen in targets for item in chosen.items()):
            if module.in_features % m:
                raise PruningError(
                    f"{path} has {module.in_features} inputs, not a multiple of {m}; --pattern {spec.pattern} "
                    f"cannot apply (skip it with --skip {path!r})"
                )
    return targets, skipped


def prune_model(
    model: CausalLM, spec: PruneSpec, windows: Tensor | None = None, *, report: Report = silent
) -> PruneReport:
    """Prune `model` in place (module docstring).

    Args:
        model: The model, in eval mode, on the device the work runs on.
        spec: What to do.
        windows: Calibration token ids, shape (samples, T); needed by WANDA and SparseGPT, unused by magnitude.
        report: Told one line per decoder layer.

    Returns:
        The sparsity of every pruned linear layer.

    Raises:
        PruningError: No calibration for a method that needs it, or see `target_linears`; SparseGPT's
            Hessian not positive definite.
    """
    if spec.method.needs_calibration and windows is None:
        raise PruningError(f"{spec.method.name} needs calibration data; pass --calibration")
    targets, skipped = target_linears(model, spec)
    modules: list[ModuleSparsity] = []
    with torch.no_grad():
        hidden = None
        if windows is not None and spec.method.needs_calibration:
            hidden = model.model.embed_tokens(windows.to(model.model.embed_tokens.weight.device))
        for index, chosen in enumerate(targets):
            stats = {} if hidden is None else _layer_stats(model, index, chosen, hidden, spec)
            for path, linear in chosen.items():
                _prune_linear(linear, spec, stats.get(path))
                zeros = int((linear.weight == 0).sum())
                modules.append(ModuleSparsity(path, index, linear.weight.numel(), zeros))
            if hidden is not None and index + 1 < len(targets):
                _run_layer(model, index, hidden)
            _report_layer(report, index, len(targets), modules)
    return PruneReport(tuple(modules), tuple(skipped))


def _layer_stats(
    model: CausalLM, index: int, chosen: dict[str, nn.Linear], hidden: Tensor, spec: PruneSpec
) -> dict[str, LayerStats]:
    """Input statistics of the chosen linear layers of decoder layer `index` on `hidden` (left unchanged)."""
    if not chosen:
        return {}
    layer = model.model.layers[index]
    prefix = f"model.layers.{index}."
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    collector = CalibrationCollector(
        layer,
        lambda name, module: prefix + name in chosen,
        hessian=spec.method.name == "sparsegpt",
        dtype=dtype,
    )
    with collector:
        _run_layer(model, index, hidden, write=False)
    return {prefix + name: stats for name, stats in collector.stats.items()}


def _run_layer(model: CausalLM, index: int, hidden: Tensor, *, write: bool = True) -> None:
    """Run decoder layer `index` on `hidden` (samples, T, hidden), `BATCH` windows at a time, in place if `write`."""
    body = model.model
    length = hidden.shape[1]
    positions = torch.arange(length, device=hidden.device)[None]
    cos, sin = body.rotary(positions, hidden.dtype)
    layer, window = body.layers[index], body.windows[index]
    for start in range(0, hidden.shape[0], BATCH):
        chunk = hidden[start : start + BATCH]
        masks = build_attention_masks(
            batch=chunk.shape[0],
            q_len=length,
            past=0,
            device=hidden.device,
            padding=None,
            segments=None,
            windows=[window],
        )
        output = layer(chunk, cos, sin, masks[window])
        if write:
            chunk.copy_(output)


def _prune_linear(linear: nn.Linear, spec: PruneSpec, stats: LayerStats | None) -> None:
    """Prune one weight in place as `spec` says, from its input statistics (WANDA, SparseGPT)."""
    weight = linear.weight
    name = spec.method.name
    if name == "sparsegpt":
        assert stats is not None and stats.hessian is not None
        weight.copy_(sparsegpt_prune(weight, stats.hessian, spec.sparsity, nm=spec.nm).weight)
        return
    if name == "wanda":
        assert stats is not None
        scores = wanda_scores(weight, stats.sq_sum)
    else:
        scores = magnitude_scores(weight)
    if spec.nm is not None:
        keep = nm_mask(scores, *spec.nm)
    else:
        assert spec.sparsity is not None
        keep = unstructured_mask(scores, spec.sparsity, scope="row" if name == "wanda" else "tensor")
    weight.masked_fill_(~keep, 0)


def _report_layer(report: Callable[[str], None], index: int, total: int, modules: list[ModuleSparsity]) -> None:
    mine = [item for item in modules if item.layer == index]
    if not mine:
        report(f"layer {index + 1}/{total}: every linear layer skipped")
        return
    weights, zeros = sum(item.weights for item in mine), sum(item.zeros for item in mine)
    report(f"layer {index + 1}/{total}: {100 * zeros / weights:.2f}% of {weights} weights zero ({len(mine)} linears)")
