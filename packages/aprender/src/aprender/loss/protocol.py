"""The `Loss` protocol every loss class in `aprender.loss` satisfies, and the reduction names.

A loss is a frozen dataclass holding its hyperparameters and nothing else, so one instance is stateless
and safe to share across threads; calling it computes a differentiable torch value.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args, runtime_checkable

from torch import Tensor

Reduction = Literal["mean", "sum", "none"]
"""How per-item losses become the result: their mean, their sum, or the per-item tensor itself."""

REDUCTIONS: tuple[str, ...] = get_args(Reduction)


@runtime_checkable
class Loss(Protocol):
    """A differentiable loss: `loss(pred, target)` returns a tensor (a scalar unless reduction is "none").

    Implementations are frozen dataclasses of hyperparameters; what `pred` and `target` hold (logits and
    class indices, two embedding batches, student and teacher logits) is documented on each class.
    """

    @property
    def name(self) -> str:
        """Short stable identifier, e.g. ``"cross_entropy"``: the key in `aprender.loss.LOSSES`."""
        ...

    def __call__(self, pred: Tensor, target: Tensor, /) -> Tensor:
        """Compute the loss of `pred` against `target`."""
        ...
