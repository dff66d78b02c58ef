"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay.

The update is torch's (Sutskever et al. 2013, http://proceedings.mlr.press/v28/sutskever13.html for
Nesterov momentum), written with multi-tensor ``torch._foreach_*`` ops so one kernel serves every
parameter of a group::

    g = grad + weight_decay * p
    b = g                                      (first step)
    b = momentum * b + (1 - dampening) * g     (later steps)
    g = g + momentum * b  if nesterov  else  b
    p = p - lr * g

The momentum buffer is kept as ``state[p]["momentum_buffer"]``, the key torch uses, so a
``state_dict`` resumes here and in ``torch.optim.SGD`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from entrenar.errors import OptimizerError
from entrenar.optim._checks import check_real, grads_of


class SGD(torch.optim.Optimizer):
    """SGD with momentum (heavy-ball or Nesterov), dampening and L2 weight decay.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> model(torch.ones(1, 4)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        *,
        nesterov: bool = False,
    ) -> None:
        """Create the optimizer.

        Args:
            params: Parameters, or parameter groups (dicts) that may override any hyperparameter.
            lr: Learning rate, >= 0.
            momentum: Momentum factor in [0, 1).
            dampening: Dampening for momentum in [0, 1]; must be 0 with Nesterov.
            weight_decay: L2 penalty coefficient added to the gradient, >= 0.
            nesterov: Use Nesterov momentum (needs momentum > 0 and dampening 0).

        Raises:
            OptimizerError: If a hyperparameter is out of range or Nesterov is asked without momentum.
        """
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check the group's hyperparameters, then add it like `torch.optim.Optimizer.add_param_group`."""
        _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: Optional function that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None without a closure.

        Raises:
            OptimizerError: If a gradient is sparse or a parameter is not real floating point.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = grads_of("SGD", group["params"])
            if params:
                self._update_group(group, params, grads)
        return loss

    def _update_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Apply one SGD step to the parameters of one group (all of which have gradients)."""
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        if group["weight_decay"] != 0:
            grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
        if momentum != 0:
            bufs = self._momentum_buffers(params, grads, momentum, dampening)
            # Nesterov looks ahead along the buffer; a new list keeps p.grad untouched.
            grads = list(torch._foreach_add(grads, bufs, alpha=momentum)) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-lr)

    def _momentum_buffers(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], momentum: float, dampening: float
    ) -> list[torch.Tensor]:
        """Update (or, on a parameter's first step, create from its gradient) the momentum buffers."""
        old = [self.state[p].get("momentum_buffer") for p in params]
        if all(b is not None for b in old):
            bufs: list[torch.Tensor] = old
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - dampening)
            return bufs
        bufs = []
        for p, g, b in zip(params, grads, old, strict=True):
            if b is None:
                b = self.state[p]["momentum_buffer"] = torch.clone(g).detach()
            else:
                b.mul_(momentum).add_(g, alpha=1 - dampening)
            bufs.append(b)
        return bufs


def _check_group(group: dict[str, Any]) -> None:
    """Validate the hyperparameters of one SGD parameter group."""
    check_real("SGD", "lr", group["lr"], low=0.0)
    momentum = check_real("SGD", "momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
    dampening = check_real("SGD", "dampening", group["dampening"], low=0.0, high=1.0)
    check_real("SGD", "weight_decay", group["weight_decay"], low=0.0)
    if not isinstance(group["nesterov"], bool):
        raise OptimizerError(f"SGD: nesterov={group['nesterov']!r} must be True or False.")
    if group["nesterov"] and (momentum == 0 or dampening != 0):
        raise OptimizerError(
            f"SGD: nesterov=True needs momentum > 0 and dampening 0 (got momentum={momentum}, dampening={dampening})."
        )
