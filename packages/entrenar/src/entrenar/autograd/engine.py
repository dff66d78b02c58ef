"""The gradient engine: what the training loop calls for one optimizer step's backward and update.

It ties the pieces together in the order that keeps weights safe:

1. `GradientEngine.backward`: forward passes under the precision policy's autocast, one backward per
   micro-batch scaled by 1 / (target tokens of the whole step) and by the float16 loss scale;
2. `GradientEngine.step`: unscale the gradients, clip them (optional) and get the global norm, run the
   anomaly guard (raises before any weight changes), take the optimizer step (skipped by the loss scaler
   on overflow), update the scale and zero the gradients.

Example::

    engine = GradientEngine(model, PrecisionPolicy.for_device("cuda", "bfloat16"))
    for step, batches in enumerate(steps, start=1):
        result = engine.backward(batches, loss_fn)       # loss_fn returns a summed token loss
        outcome = engine.step(optimizer, step=step, loss=result.loss,
                              clip_grad=lambda params: clip_grad_norm(params, 1.0))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from entrenar.autograd.accumulation import AccumulationResult, BatchT, LossFn, backward_accumulated
from entrenar.autograd.anomaly import AnomalyGuard
from entrenar.autograd.precision import LossScaler, PrecisionPolicy

ClipFn = Callable[[list[torch.Tensor]], float | torch.Tensor]
"""Clips the gradients of the given parameters in place and returns their global norm before clipping; it
must leave the gradients untouched when that norm is inf/NaN (as ``entrenar.optim`` clipping does)."""


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step did.

    Attributes:
        grad_norm: Global gradient norm after unscaling, before clipping (inf/NaN only on a skipped step).
        stepped: False when the float16 loss scaler skipped the step because of inf/NaN gradients.
    """

    grad_norm: float
    stepped: bool


class GradientEngine:
    """Accumulated backward, precision, loss scaling and the anomaly guard for one model."""

    def __init__(
        self,
        model: nn.Module,
        precision: PrecisionPolicy,
        *,
        scaler: LossScaler | None = None,
        labels_key: str = "labels",
        ignore_index: int = -100,
        max_skipped_steps: int = 25,
    ) -> None:
        """Set up the engine.

        Args:
            model: The model being trained (its gradients are checked and named by the guard).
            precision: Autocast policy (`PrecisionPolicy.for_device`).
            scaler: Loss scaler; None: ``precision.make_scaler()`` (a GradScaler only for float16 on CUDA).
            labels_key: Key of the labels in each micro-batch.
            ignore_index: Label value of positions without a loss.
            max_skipped_steps: With loss scaling, overflowed steps in a row the guard tolerates.

        Raises:
            GradientEngineError: If `max_skipped_steps` is not an integer >= 1.
        """
        self.precision = precision
        self.scaler = scaler if scaler is not None else precision.make_scaler()
        self.guard = AnomalyGuard(
            model.named_parameters(), loss_scaling=self.scaler.enabled, max_skipped_steps=max_skipped_steps
        )
        self._parameters: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
        self._labels_key = labels_key
        self._ignore_index = ignore_index

    def backward(self, micro_batches: Iterable[BatchT], loss_fn: LossFn[BatchT]) -> AccumulationResult:
        """Accumulate the gradients of one optimizer step (see `backward_accumulated`).

        Args:
            micro_batches: The step's micro-batches, each with labels (B, T) under the labels key.
            loss_fn: Returns a micro-batch's summed per-token loss, a scalar.

        Returns:
            The mean loss per target token, the token count and the number of micro-batches.

        Raises:
            GradientEngineError: As `backward_accumulated`.
        """
        return backward_accumulated(
            micro_batches,
            loss_fn,
            labels_key=self._labels_key,
            ignore_index=self._ignore_index,
            precision=self.precision,
            scaler=self.scaler,
        )

    def step(
        self, optimizer: torch.optim.Optimizer, *, step: int, loss: float, clip_grad: ClipFn | None = None
    ) -> StepOutcome:
        """Unscale, clip, guard, step, update the scale and zero the gradients.

        Args:
            optimizer: The optimizer over the model's trainable parameters.
            step: The step number (for the guard's message).
            loss: The step's reported loss (`AccumulationResult.loss`).
            clip_grad: Clips the gradients and returns the pre-clip global norm; None: no clipping, the norm is
                computed by the guard.

        Returns:
            The gradient norm and whether the step was taken.

        Raises:
            NonFiniteError: If the loss or the gradients are inf/NaN (see `AnomalyGuard.check`); the optimizer
                has not stepped and the gradients are kept for inspection.
        """
        self.scaler.unscale_(optimizer)
        norm = clip_grad(self._parameters) if clip_grad is not None else None
        grad_norm = self.guard.check(step=step, loss=loss, grad_norm=norm)
        self.scaler.step(optimizer)
        stepped = self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(grad_norm=grad_norm, stepped=stepped)
