"""Mixed precision: which autocast and which loss scaler a (device, dtype) pair gets.

Automatic mixed precision (Micikevicius et al. 2018, https://arxiv.org/abs/1710.03740) runs matmuls in a
16-bit dtype inside ``torch.autocast`` while the weights, the loss and the optimizer stay in float32.
float16 has a narrow exponent range, so small gradients underflow to 0: the loss is multiplied by a large
scale before backward and the gradients divided by it before the step; a step whose gradients overflowed
to inf/NaN is skipped and the scale lowered (``torch.amp.GradScaler``). bfloat16 has float32's exponent
range and needs no scaling.

The table of supported pairs:

| device | float32 | bfloat16 | float16 |
|---|---|---|---|
| cpu | no autocast | autocast | error: use bfloat16 or float32 |
| cuda | no autocast | autocast | autocast + GradScaler |

`LossScaler` gives the training loop one set of verbs whatever the policy: with no scaler, ``scale`` returns
the loss unchanged, ``unscale_`` does nothing and ``step`` calls ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from entrenar.errors import PrecisionError

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SUPPORTED: frozenset[tuple[str, torch.dtype]] = frozenset(
    {
        ("cpu", torch.float32),
        ("cpu", torch.bfloat16),
        ("cuda", torch.float32),
        ("cuda", torch.bfloat16),
        ("cuda", torch.float16),
    }
)


class LossScaler:
    """The loop's uniform view of loss scaling: a `torch.amp.GradScaler`, or a no-op without one.

    Use per optimizer step: ``scale(loss).backward()`` for each micro-batch, then ``unscale_(optimizer)``
    (before clipping or reading gradient norms), ``step(optimizer)`` and ``update()``.
    """

    def __init__(self, grad_scaler: torch.amp.GradScaler | None = None) -> None:
        """Wrap `grad_scaler`, or act as a no-op scaler when it is None (float32 and bfloat16).

        Args:
            grad_scaler: The scaler to drive; a disabled one counts as none.
        """
        self._scaler = grad_scaler if grad_scaler is not None and grad_scaler.is_enabled() else None
        self._scale_before_step: float | None = None

    @property
    def enabled(self) -> bool:
        """True when losses are scaled (and non-finite gradients make the step a skipped one)."""
        return self._scaler is not None

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """Return the loss to call ``.backward()`` on: multiplied by the current scale, or `loss` itself."""
        return loss if self._scaler is None else self._scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of `optimizer`'s parameters by the scale, in place (no-op without a scaler)."""
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Take the optimizer step; with a scaler, skip it when a gradient is inf or NaN."""
        if self._scaler is None:
            optimizer.step()
            return
        self._scale_before_step = self._scaler.get_scale()
        self._scaler.step(optimizer)

    def update(self) -> bool:
        """Adjust the scale after the step(s) of this iteration.

        Returns:
            True when the steps were taken; False when the scaler found inf/NaN gradients, skipped them and
            lowered the scale (GradScaler lowers it exactly then, so comparing the scale tells).
        """
        if self._scaler is None:
            return True
        self._scaler.update()
        before, self._scale_before_step = self._scale_before_step, None
        return before is None or self._scaler.get_scale() >= before

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state for a checkpoint (empty without a scaler)."""
        return {} if self._scaler is None else self._scaler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from `state_dict`.

        Raises:
            PrecisionError: If `state` is non-empty and this is a no-op scaler, or empty for a real scaler
                (the checkpoint was written under another precision).
        """
        if (self._scaler is None) != (not state):
            raise PrecisionError(
                f"LossScaler.load_state_dict: the checkpoint {'has' if state else 'has no'} grad-scaler state but "
                f"this run {'uses' if self._scaler is not None else 'does not use'} one; resume with the "
                "precision (device and dtype) the checkpoint was trained with"
            )
        if self._scaler is not None:
            self._scaler.load_state_dict(dict(state))


@dataclass(frozen=True)
class PrecisionPolicy:
    """How one (device type, compute dtype) pair trains: autocast or not, loss scaling or not.

    Build it with `PrecisionPolicy.for_device`, which rejects unsupported pairs.

    Attributes:
        device_type: "cpu" or "cuda".
        dtype: Compute dtype of autocast regions: torch.float32 (no autocast), torch.bfloat16 or torch.float16.
    """

    device_type: str
    dtype: torch.dtype

    @classmethod
    def for_device(cls, device: str | torch.device, dtype: str | torch.dtype) -> PrecisionPolicy:
        """The policy for training on `device` with matmuls in `dtype`.

        Args:
            device: e.g. "cpu", "cuda", "cuda:1" or a torch.device.
            dtype: torch.float32/bfloat16/float16 or their names "float32", "bfloat16", "float16".

        Returns:
            The policy.

        Raises:
            PrecisionError: For an unknown device or dtype, or an unsupported pair (float16 on CPU).
        """
        try:
            device_type = torch.device(device).type
        except (RuntimeError, TypeError) as exc:
            raise PrecisionError(
                f"PrecisionPolicy: device={device!r} is not a torch device; pass 'cpu' or 'cuda'"
            ) from exc
        resolved = _resolve_dtype(dtype)
        if (device_type, resolved) not in _SUPPORTED:
            raise PrecisionError(_unsupported_message(device_type, resolved))
        return cls(device_type=device_type, dtype=resolved)

    @property
    def uses_autocast(self) -> bool:
        """True when forward passes run under ``torch.autocast`` (bfloat16 and float16)."""
        return self.dtype != torch.float32

    @property
    def uses_grad_scaler(self) -> bool:
        """True only for float16 on CUDA: the one pair whose gradients underflow without loss scaling."""
        return self.device_type == "cuda" and self.dtype == torch.float16

    def autocast(self) -> AbstractContextManager[Any]:
        """A context manager for the forward pass and the loss (not the backward pass).

        Returns:
            ``torch.autocast(device_type, dtype)``, or a null context for float32.
        """
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self, *, init_scale: float = 2.0**16) -> LossScaler:
        """A `LossScaler`: backed by ``torch.amp.GradScaler`` for float16 on CUDA, a no-op otherwise.

        Args:
            init_scale: First loss scale (float16 on CUDA only), > 0.

        Returns:
            The scaler.

        Raises:
            PrecisionError: If `init_scale` is out of range.
        """
        if not (isinstance(init_scale, int | float) and not isinstance(init_scale, bool) and 0 < init_scale < math.inf):
            raise PrecisionError(f"make_scaler: init_scale={init_scale!r} must be a positive finite number")
        if not self.uses_grad_scaler:
            return LossScaler(None)
        return LossScaler(torch.amp.GradScaler(self.device_type, init_scale=init_scale))


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise PrecisionError(f"PrecisionPolicy: dtype={dtype!r} is not supported; pass one of {', '.join(_DTYPES)}")


def _unsupported_message(device_type: str, dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if device_type == "cpu":
        return (
            f"PrecisionPolicy: {name} mixed precision is not supported on the CPU (slow kernels and no loss "
            "scaling there); use bfloat16 or float32 (model.dtype)"
        )
    return f"PrecisionPolicy: device type {device_type!r} has no precision policy; train on 'cpu' or 'cuda'"
