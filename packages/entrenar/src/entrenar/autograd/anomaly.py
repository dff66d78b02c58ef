"""Anomaly guard: stop training at the first inf/NaN loss or gradient, before the optimizer step.

An inf or NaN that reaches ``optimizer.step()`` spreads into every weight (and Adam's moments) and the run
is lost. The guard runs after backward and before the step: it checks the reported loss and the global
gradient norm — one fused ``torch._foreach_norm`` per (device, dtype) group, then the 2-norm of those
norms, so there is one host sync per step (a non-finite gradient entry makes the global norm inf or NaN).
Only when something is non-finite does it look for the first parameter at fault, to name it.

With float16 loss scaling (`LossScaler` enabled) overflowing gradients are expected now and then: the scaler
skips that step and lowers the scale (Micikevicius et al. 2018, https://arxiv.org/abs/1710.03740). The
guard then lets a non-finite gradient pass, unless it persists for more than `max_skipped_steps` steps in a
row (the scale is then far too low to be the cause). A non-finite *loss* always raises: scaling happens
after the loss, so lowering the scale cannot cure it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from entrenar.errors import GradientEngineError, NonFiniteError

_ADVICE = (
    "the optimizer step was not taken and the weights are unchanged; try a lower learning rate, enable "
    "gradient clipping (training.grad_clip), or check this step's data for empty or corrupt samples"
)


def global_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients taken together, as if concatenated into one vector.

    Args:
        parameters: Tensors whose ``.grad`` counts (those without a gradient are skipped).

    Returns:
        A float32 scalar on the first gradient's device (0 on the CPU when there are none); inf or NaN when
        a gradient holds one.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    if not groups:
        return torch.zeros((), dtype=torch.float32)
    device = next(iter(groups))[0]
    norms = [n.to(device=device, dtype=torch.float32) for g in groups.values() for n in torch._foreach_norm(g, 2.0)]
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


def first_non_finite_grad(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first parameter whose gradient holds an inf or NaN, or None if all are finite."""
    for name, p in named_parameters:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


class AnomalyGuard:
    """Raises `NonFiniteError` when a step's loss or gradients are inf/NaN, before the optimizer step."""

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.Tensor]],
        *,
        loss_scaling: bool = False,
        max_skipped_steps: int = 25,
    ) -> None:
        """Watch the parameters of one model.

        Args:
            named_parameters: ``model.named_parameters()``: the gradients checked and the names reported.
            loss_scaling: True when a float16 `LossScaler` is active, so non-finite gradients mean "skip
                this step" rather than "stop".
            max_skipped_steps: With loss scaling, the most steps in a row with non-finite gradients before
                the guard raises anyway, >= 1.

        Raises:
            GradientEngineError: If `max_skipped_steps` is not an integer >= 1.
        """
        if not isinstance(max_skipped_steps, int) or isinstance(max_skipped_steps, bool) or max_skipped_steps < 1:
            raise GradientEngineError(f"AnomalyGuard: max_skipped_steps={max_skipped_steps!r} must be an integer >= 1")
        self._named = list(named_parameters)
        self._loss_scaling = loss_scaling
        self._max_skipped = max_skipped_steps
        self._skipped_in_a_row = 0

    @property
    def skipped_in_a_row(self) -> int:
        """Consecutive checked steps whose gradients were non-finite under loss scaling (0 otherwise)."""
        return self._skipped_in_a_row

    def check(self, *, step: int, loss: float | torch.Tensor, grad_norm: float | torch.Tensor | None = None) -> float:
        """Check one step after backward (and after ``LossScaler.unscale_``), before the optimizer step.

        Args:
            step: The step number, for the message.
            loss: The step's reported loss.
            grad_norm: The global gradient norm if the caller already has it (e.g. from clipping, which must
                leave non-finite gradients untouched); computed with `global_grad_norm` when None.

        Returns:
            The global gradient norm; inf or NaN only under loss scaling, where the scaler will skip the step.

        Raises:
            NonFiniteError: If the loss is non-finite, or a gradient is without loss scaling, or with it for
                more than `max_skipped_steps` steps in a row. The message names the step, what was
                non-finite and the first parameter whose gradient is.
        """
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise NonFiniteError(f"step {step}: the loss is {loss_value}; {_ADVICE}")
        if grad_norm is None:
            grad_norm = global_grad_norm(p for _, p in self._named)
        norm = float(grad_norm)
        if math.isfinite(norm):
            self._skipped_in_a_row = 0
            return norm
        if self._loss_scaling:
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row <= self._max_skipped:
                return norm
        raise NonFiniteError(self._gradient_message(step, norm))

    def _gradient_message(self, step: int, norm: float) -> str:
        culprit = first_non_finite_grad(self._named)
        where = (
            f"first in parameter {culprit!r}"
            if culprit is not None
            else "every entry is finite but their norm overflowed float32"
        )
        persisted = (
            f" for {self._skipped_in_a_row} steps in a row despite float16 loss scaling" if self._loss_scaling else ""
        )
        return f"step {step}: the gradient is not finite (global norm {norm}, {where}){persisted}; {_ADVICE}"
