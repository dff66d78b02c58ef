"""8-bit AdamW: the two moments stored block-wise quantized to one byte per element.

Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization" (https://arxiv.org/abs/2110.02861).
Each step dequantizes the moments of a tensor to fp32, applies the AdamW update of
`entrenar.optim.adam.adam_update`, and requantizes them; gradients and the update itself stay exact.

Block-wise quantization: a flattened moment is cut into blocks of ``block_size`` elements (the last
one zero-padded); each block keeps its absolute maximum in fp32 and every element the uint8 index of
the codebook value nearest to ``x / absmax``. One outlier thus costs precision in its block only.

Codebook: the dynamic tree map of Dettmers (2015, https://arxiv.org/abs/1511.04561), which
bitsandbytes also uses. A code is read as sign bit (signed map only), then ``k`` zero bits giving the
decade ``10^-k`` (k = 0..6), an indicator bit, and the remaining bits as a linear fraction: the
``n`` values of a decade are the midpoints of ``n`` equal steps across [0.1, 1], times ``10^-k``.

- signed (first moment ``m``): ``n = 2^(6-k)`` per sign and decade: 127 positive, 127 negative,
  plus 0 and 1 = 256 values spanning [-0.993, 1] with relative precision from ~1e-2 near 1 down to 1e-6;
- unsigned (second moment ``v >= 0``): the sign bit becomes one more fraction bit, ``n = 2^(7-k)``:
  254 positive values plus 0 and 1.

Tensors with fewer than ``min_8bit_size`` elements (biases, norms) keep fp32 moments as bitsandbytes
does: they are a negligible share of memory and the most sensitive to rounding. State per quantized
element is 2 bytes plus 8 bytes per block, against AdamW's 8 (fp32): ~25.4% with blocks of 256.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F

from entrenar.optim._checks import check_int, grads_of
from entrenar.optim.adam import adam_update, check_adam_group

_DECADES = 7  # 10^0 .. 10^-6


def dynamic_map(*, signed: bool) -> torch.Tensor:
    """The 256 values of the dynamic tree quantization map, sorted ascending.

    Args:
        signed: Signed map for values in [-1, 1] (first moment); unsigned for [0, 1] (second moment).

    Returns:
        A float32 tensor of shape (256,) of distinct values containing 0 and 1 exactly; the signed
        map's lowest value is -0.993 (the map has one more code above zero than below, like bitsandbytes').
    """
    values = [0.0, 1.0]
    for k in range(_DECADES):
        n = 2 ** (_DECADES - 1 - k) if signed else 2 ** (_DECADES - k)
        edges = torch.linspace(0.1, 1.0, n + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0**-k).tolist()
        values += mids + ([-x for x in mids] if signed else [])
    return torch.tensor(sorted(values), dtype=torch.float32)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, block_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` block-wise to the uint8 index of the nearest `code` value of ``x / absmax``.

    Args:
        x: Tensor of any shape, N elements; NaN gives undefined codes.
        code: Sorted codebook of shape (256,) spanning the range of ``x / absmax``.
        block_size: Elements per block.

    Returns:
        ``(codes, absmax)``: uint8 codes of the shape of `x`, float32 absmax of shape (ceil(N / block_size),).
    """
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    blocks = F.pad(flat, (0, -n % block_size)).view(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    boundaries = (code[1:] + code[:-1]) / 2  # a value maps to the code whose half-way interval holds it
    idx = torch.bucketize(blocks / scale[:, None], boundaries)
    return idx.to(torch.uint8).view(-1)[:n].view(x.shape), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int = 256
) -> torch.Tensor:
    """Inverse of `quantize_blockwise`: ``code[codes] * absmax`` of each block.

    Args:
        codes: uint8 codes of any shape, N elements.
        absmax: float32 absmax of shape (ceil(N / block_size),).
        code: The codebook used to quantize, shape (256,).
        block_size: Elements per block, as used to quantize.

    Returns:
        A float32 tensor of the shape of `codes`.
    """
    n = codes.numel()
    values = code[codes.reshape(-1).long()]
    blocks = F.pad(values, (0, -n % block_size)).view(-1, block_size) * absmax[:, None]
    return blocks.view(-1)[:n].view(codes.shape)


class AdamW8bit(torch.optim.Optimizer):
    """AdamW whose moments are stored block-wise quantized to 8 bits (https://arxiv.org/abs/2110.02861).

    State of a quantized parameter: ``step``, ``exp_avg_codes``/``exp_avg_absmax`` (signed map) and
    ``exp_avg_sq_codes``/``exp_avg_sq_absmax`` (unsigned map); of a small one: ``step``, fp32
    ``exp_avg`` and ``exp_avg_sq``.

    Example:
        >>> model = torch.nn.Linear(128, 64)
        >>> opt = AdamW8bit(model.parameters(), lr=1e-3)
        >>> model(torch.ones(1, 128)).sum().backward()
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
        block_size: int = 256,
        min_8bit_size: int = 4096,
    ) -> None:
        """Create the optimizer.

        Args:
            params: Parameters, or parameter groups (dicts) that may override lr, betas, eps, weight_decay.
            lr: Learning rate, >= 0.
            betas: Decay rates (beta1, beta2) of the first and second moments, each in [0, 1).
            eps: Added to the denominator for numerical stability, >= 0.
            weight_decay: Decoupled decay coefficient, >= 0.
            block_size: Elements per quantization block (bitsandbytes: 256 for blockwise 8-bit state).
            min_8bit_size: Parameters with fewer elements keep fp32 moments.

        Raises:
            OptimizerError: If a hyperparameter is out of range.
        """
        self.block_size = check_int("AdamW8bit", "block_size", block_size, minimum=1)
        self.min_8bit_size = check_int("AdamW8bit", "min_8bit_size", min_8bit_size, minimum=0)
        self._maps: dict[tuple[bool, torch.device], torch.Tensor] = {}
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check the group's hyperparameters, then add it like `torch.optim.Optimizer.add_param_group`."""
        check_adam_group("AdamW8bit", {**self.defaults, **param_group})
        super().add_param_group(param_group)

    def _map(self, signed: bool, device: torch.device) -> torch.Tensor:
        """The codebook on `device`, built once per device."""
        key = (signed, device)
        if key not in self._maps:
            self._maps[key] = dynamic_map(signed=signed).to(device)
        return self._maps[key]

    def _state_for(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state of `p`, created on its first step: zero moments, quantized or fp32 by size."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            zeros = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            if p.numel() >= self.min_8bit_size:
                for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                    codes, absmax = quantize_blockwise(zeros, self._map(signed, p.device), self.block_size)
                    state[f"{key}_codes"], state[f"{key}_absmax"] = codes, absmax
            else:
                state["exp_avg"], state["exp_avg_sq"] = zeros, zeros.clone()
        return state

    def _moment(self, state: dict[str, torch.Tensor], key: str, signed: bool) -> torch.Tensor:
        """A moment in fp32: the stored tensor itself, or the dequantized codes."""
        if key in state:
            return state[key]
        codes = state[f"{key}_codes"]
        return dequantize_blockwise(codes, state[f"{key}_absmax"], self._map(signed, codes.device), self.block_size)

    def _store(self, state: dict[str, torch.Tensor], key: str, signed: bool, value: torch.Tensor) -> None:
        """Requantize an updated moment of a quantized parameter (fp32 moments were updated in place)."""
        if f"{key}_codes" in state:
            codes, absmax = quantize_blockwise(value, self._map(signed, value.device), self.block_size)
            state[f"{key}_codes"], state[f"{key}_absmax"] = codes, absmax

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step: dequantize, update as AdamW, requantize.

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
            params, grads = grads_of("AdamW8bit", group["params"])
            if not params:
                continue
            states = [self._state_for(p) for p in params]
            exp_avgs = [self._moment(s, "exp_avg", True) for s in states]
            exp_avg_sqs = [self._moment(s, "exp_avg_sq", False) for s in states]
            adam_update(
                params,
                [g.float() for g in grads],
                exp_avgs,
                exp_avg_sqs,
                [s["step"] for s in states],
                group={**group, "decoupled_weight_decay": True},
            )
            for s, m, v in zip(states, exp_avgs, exp_avg_sqs, strict=True):
                self._store(s, "exp_avg", True, m)
                self._store(s, "exp_avg_sq", False, v)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by `state_dict`, keeping uint8 codes and fp32 moments and absmax.

        `torch.optim.Optimizer.load_state_dict` casts every non-step state tensor to its parameter's
        dtype; that would turn codes into floats and round fp32 state of bf16 parameters. The saved
        tensors are therefore put back with their own dtypes, on the parameter's device.

        Args:
            state_dict: The optimizer state, as returned by `state_dict`.
        """
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(pid, {}).items():
                if isinstance(value, torch.Tensor) and key != "step":
                    self.state[p][key] = value.to(device=p.device)
