"""The gradient engine: accumulation, mixed precision and the anomaly guard.

This is the layer the training loop talks to for backward, built on ``torch.autograd``:

- `GradientEngine` runs one optimizer step's accumulated backward (`backward`) and update (`step`);
- `backward_accumulated` / `GradientAccumulator` scale each micro-batch's summed token loss by
  1 / (target tokens of the whole step), so k micro-batches give exactly one big batch's gradient;
- `PrecisionPolicy` picks autocast and loss scaling per device and dtype; `LossScaler` is the uniform
  ``scale`` / ``unscale_`` / ``step`` / ``update`` interface (a no-op for float32 and bfloat16);
- `AnomalyGuard` raises `NonFiniteError` on an inf/NaN loss or gradient before the optimizer step.
"""

from __future__ import annotations

from entrenar.autograd.accumulation import (
    AccumulationResult,
    GradientAccumulator,
    LossFn,
    LossParts,
    MicroBatch,
    backward_accumulated,
    count_target_tokens,
)
from entrenar.autograd.anomaly import AnomalyGuard, first_non_finite_grad, global_grad_norm
from entrenar.autograd.engine import ClipFn, GradientEngine, StepOutcome
from entrenar.autograd.precision import LossScaler, PrecisionPolicy

__all__ = [
    "AccumulationResult",
    "AnomalyGuard",
    "ClipFn",
    "GradientAccumulator",
    "GradientEngine",
    "LossFn",
    "LossParts",
    "LossScaler",
    "MicroBatch",
    "PrecisionPolicy",
    "StepOutcome",
    "backward_accumulated",
    "count_target_tokens",
    "first_non_finite_grad",
    "global_grad_norm",
]
