"""Adam and AdamW: one multi-tensor implementation, two ways to apply weight decay.

Adam (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980) keeps two moment estimates per parameter;
AdamW (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101) decouples weight decay from them::

    t = t + 1
    p = p * (1 - lr * weight_decay)                 AdamW (decoupled decay)
    g = grad + weight_decay * p                     Adam (L2 penalty, enters the moments)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v)                           amsgrad only (Reddi et al. 2018, https://openreview.net/forum?id=ryQu7f-RZ)
    p = p - lr / (1 - beta1^t) * m / (sqrt(v or v_max) / sqrt(1 - beta2^t) + eps)

The ops follow ``torch.optim.Adam``'s foreach path one for one, so results match it to float
rounding, and the state keys (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) are
torch's: a ``state_dict`` resumes in either implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from entrenar.errors import OptimizerError
from entrenar.optim._checks import check_betas, check_real, grads_of


def adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    group: dict[str, Any],
    max_exp_avg_sqs: list[torch.Tensor] | None = None,
) -> None:
    """Apply one Adam/AdamW step in place to parameters, moments and step counters.

    All lists are aligned (one entry per parameter). Moments may be of a wider dtype than the
    parameters (the 8-bit optimizer passes dequantized fp32 moments); ``grads`` must then match them.

    Args:
        params: Parameters, any shapes.
        grads: Their gradients (not modified).
        exp_avgs: First moments, same shapes as `params`.
        exp_avg_sqs: Second moments, same shapes as `params`.
        steps: Scalar float32 step counters, one per parameter, incremented here.
        group: The parameter group: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``decoupled_weight_decay``.
        max_exp_avg_sqs: Running maxima of the second moments for AMSGrad, or None without it.
    """
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    torch._foreach_add_(steps, 1)
    if wd != 0:
        if group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=wd))
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    counts = [float(s.item()) for s in steps]
    step_sizes = [-(lr / (1 - beta1**t)) for t in counts]
    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in counts]
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denom = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def check_adam_group(owner: str, group: dict[str, Any]) -> None:
    """Validate the hyperparameters shared by Adam, AdamW and 8-bit AdamW.

    Raises:
        OptimizerError: If lr, betas, eps or weight_decay is out of range.
    """
    check_real(owner, "lr", group["lr"], low=0.0)
    check_betas(owner, group["betas"])
    check_real(owner, "eps", group["eps"], low=0.0)
    check_real(owner, "weight_decay", group["weight_decay"], low=0.0)


class Adam(torch.optim.Optimizer):
    """Adam with L2 weight decay (or decoupled decay with ``decoupled_weight_decay=True``) and AMSGrad.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=1e-4)
        >>> model(torch.ones(1, 4)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        """Create the optimizer.

        Args:
            params: Parameters, or parameter groups (dicts) that may override any hyperparameter.
            lr: Learning rate, >= 0.
            betas: Decay rates (beta1, beta2) of the first and second moments, each in [0, 1).
            eps: Added to the denominator for numerical stability, >= 0.
            weight_decay: Decay coefficient, >= 0: an L2 penalty on the gradient, or decoupled.
            amsgrad: Divide by the running maximum of the second moment (AMSGrad).
            decoupled_weight_decay: Shrink parameters by ``lr * weight_decay`` directly (AdamW).

        Raises:
            OptimizerError: If a hyperparameter is out of range.
        """
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check the group's hyperparameters, then add it like `torch.optim.Optimizer.add_param_group`."""
        merged = {**self.defaults, **param_group}
        check_adam_group(type(self).__name__, merged)
        for flag in ("amsgrad", "decoupled_weight_decay"):
            if not isinstance(merged[flag], bool):
                raise OptimizerError(f"{type(self).__name__}: {flag}={merged[flag]!r} must be True or False.")
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
            params, grads = grads_of(type(self).__name__, group["params"])
            if not params:
                continue
            states = [self._state_for(p, group["amsgrad"]) for p in params]
            adam_update(
                params,
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                group=group,
                max_exp_avg_sqs=[s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else None,
            )
        return loss

    def _state_for(self, p: torch.Tensor, amsgrad: bool) -> dict[str, torch.Tensor]:
        """The state of `p`, created on its first step (zero moments in the parameter's dtype)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state


class AdamW(Adam):
    """Adam with decoupled weight decay (AdamW, https://arxiv.org/abs/1711.05101).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
        >>> model(torch.ones(1, 4)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        amsgrad: bool = False,
    ) -> None:
        """Create the optimizer.

        Args:
            params: Parameters, or parameter groups (dicts) that may override any hyperparameter.
            lr: Learning rate, >= 0.
            betas: Decay rates (beta1, beta2) of the first and second moments, each in [0, 1).
            eps: Added to the denominator for numerical stability, >= 0.
            weight_decay: Decoupled decay coefficient, >= 0 (torch's default 0.01).
            amsgrad: Divide by the running maximum of the second moment (AMSGrad).

        Raises:
            OptimizerError: If a hyperparameter is out of range.
        """
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad=amsgrad, decoupled_weight_decay=True)
