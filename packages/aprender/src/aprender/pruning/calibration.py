"""Calibration statistics of the inputs of ``nn.Linear`` layers, gathered with forward hooks.

WANDA (arXiv 2306.11695) needs the per-input-channel sum of squares ``Σ_t x_tj²``; SparseGPT
(arXiv 2301.00774) needs ``XXᵀ = Σ_t x_t x_tᵀ``. Both are sums over every calibration token, so
batches of any shape can be fed in any order:

    with CalibrationCollector(model) as collector:
        for batch in calibration_batches:
            model(batch)
    stats = collector.stats["model.layers.0.mlp.down_proj"]
    scores = wanda_scores(layer.weight, stats.sq_sum)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from aprender.errors import PruningError

ModuleFilter = Callable[[str, nn.Linear], bool]


@dataclass
class LayerStats:
    """Running input statistics of one linear layer.

    Attributes:
        count: Number of input vectors (tokens) seen: every leading dimension flattened.
        sq_sum: Per-input-channel sum of squares ``Σ_t x_tj²``, shape (in_features,).
        hessian: ``XXᵀ = Σ_t x_t x_tᵀ``, shape (in_features, in_features), or None when not
            collected for this layer. SparseGPT's ``H = 2XXᵀ/count`` differs only in scale.
    """

    count: int
    sq_sum: torch.Tensor
    hessian: torch.Tensor | None

    def update(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs, shape (..., in_features), to the sums."""
        x = inputs.detach().reshape(-1, self.sq_sum.shape[0]).to(self.sq_sum.dtype)
        self.count += x.shape[0]
        self.sq_sum += x.square().sum(dim=0)
        if self.hessian is not None:
            self.hessian.addmm_(x.T, x)


class CalibrationCollector:
    """Context manager that records input statistics of the selected ``nn.Linear`` layers.

    Hooks are registered on enter and removed on exit; the statistics stay readable afterwards.

    Args:
        model: The model to observe; its modules are matched by their ``named_modules`` name.
        module_filter: ``(name, linear) -> bool`` selecting layers; None selects every nn.Linear.
        hessian: Collect ``XXᵀ`` (in², memory-heavy) for every selected layer (True), none
            (False), or those for which ``hessian(name, linear)`` is True.
        dtype: Accumulation dtype, ``torch.float32`` or ``torch.float64``.

    Raises:
        PruningError: If no nn.Linear is selected or `dtype` is not float32/float64.
    """

    def __init__(
        self,
        model: nn.Module,
        module_filter: ModuleFilter | None = None,
        *,
        hessian: bool | ModuleFilter = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise PruningError(f"dtype={dtype} is not supported; accumulate in torch.float32 or torch.float64")
        self._layers = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and (module_filter is None or module_filter(name, module))
        }
        if not self._layers:
            raise PruningError("CalibrationCollector: no nn.Linear module matched module_filter; check the filter")
        self.stats: dict[str, LayerStats] = {
            name: _empty_stats(module, hessian(name, module) if callable(hessian) else hessian, dtype)
            for name, module in self._layers.items()
        }
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> CalibrationCollector:
        if self._handles:
            raise PruningError("CalibrationCollector is already active; do not nest the same collector")
        for name, module in self._layers.items():
            self._handles.append(module.register_forward_hook(_recorder(self.stats[name]), with_kwargs=True))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _empty_stats(module: nn.Linear, with_hessian: bool, dtype: torch.dtype) -> LayerStats:
    n, device = module.in_features, module.weight.device
    hessian = torch.zeros(n, n, dtype=dtype, device=device) if with_hessian else None
    return LayerStats(count=0, sq_sum=torch.zeros(n, dtype=dtype, device=device), hessian=hessian)


def _recorder(stats: LayerStats) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        stats.update(args[0] if args else kwargs["input"])

    return hook
