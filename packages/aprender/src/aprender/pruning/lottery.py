"""Lottery tickets: iterative magnitude pruning with rewinding, Frankle & Carbin 2019, arXiv 1803.03635.

Each round trains the masked network (the caller's `train_fn`), prunes `rate_per_round` of the
surviving weights with the smallest trained magnitude, and resets the survivors to their initial
values (section 2 of the paper) or, for deeper networks, to the values of an early training
iteration (late rewinding, Frankle et al. 2019, arXiv 1903.01611).

A round prunes exactly ``pruned_count(rate, remaining)`` of the ``remaining`` survivors, so after r
rounds about ``1 − (1 − rate)^r`` of the weights are pruned, exact up to the floor of each round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from aprender.errors import PruningError
from aprender.pruning._checks import check_fraction
from aprender.pruning.masks import mask_lowest, pruned_count

TrainFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]
PruneScope = Literal["layer", "global"]


@dataclass(frozen=True)
class LotteryTicket:
    """The winning ticket after the last round.

    Attributes:
        weights: Rewound weights, zero where pruned; train these under `masks` to evaluate the ticket.
        masks: Boolean keep-masks after the last round, one per weight.
        mask_history: The masks after each round, oldest first; each is a subset of the one before.
    """

    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    mask_history: list[dict[str, torch.Tensor]]

    @property
    def sparsity(self) -> float:
        """Fraction of all weights pruned."""
        total = sum(mask.numel() for mask in self.masks.values())
        kept = sum(int(mask.sum()) for mask in self.masks.values())
        return 1.0 - kept / total


def iterative_magnitude_pruning(
    initial: Mapping[str, torch.Tensor],
    train_fn: TrainFn,
    rounds: int,
    rate_per_round: float,
    *,
    rewind_to: Mapping[str, torch.Tensor] | None = None,
    scope: PruneScope = "layer",
) -> LotteryTicket:
    """Find a lottery ticket by iterative magnitude pruning with rewinding.

    Round 1 trains from `initial`; later rounds train from the rewind point under the current
    masks. `train_fn(weights, masks)` receives copies (pruned entries zero) and returns the trained
    weights; it must keep pruned entries out of training (e.g. multiply gradients by the mask).
    Only surviving weights compete, so every mask is a subset of the previous one.

    Args:
        initial: Weights at initialisation, name -> tensor of any shape (the prunable weights only).
        train_fn: Trains a dict of weights under boolean keep-masks for one round; returns the
            trained weights with the same names and shapes.
        rounds: Number of prune-and-rewind rounds, >= 1.
        rate_per_round: Fraction of the surviving weights pruned per round, in [0, 1).
        rewind_to: Values survivors are reset to after each round (an early-iteration snapshot);
            None rewinds to `initial`.
        scope: ``"layer"`` prunes the rate within each tensor (the paper's convolutional and
            fully-connected setting); ``"global"`` ranks all tensors together (its deeper networks).

    Returns:
        The ticket: rewound weights, final masks and the mask of every round.

    Raises:
        PruningError: On bad rounds/rate/scope, mismatched `rewind_to`, or a `train_fn` result with
            missing names, wrong shapes or NaN.
    """
    check_fraction(rate_per_round, "rate_per_round")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PruningError(f"rounds={rounds!r} must be a positive integer")
    if scope not in ("layer", "global"):
        raise PruningError(f"scope={scope!r} is unknown; pass 'layer' or 'global'")
    rewind = dict(initial) if rewind_to is None else dict(rewind_to)
    _check_same_layout(initial, rewind, "rewind_to")
    masks = {name: torch.ones(w.shape, dtype=torch.bool, device=w.device) for name, w in initial.items()}
    start: Mapping[str, torch.Tensor] = initial
    history: list[dict[str, torch.Tensor]] = []
    for _ in range(rounds):
        trained = train_fn(_apply(start, masks), {name: mask.clone() for name, mask in masks.items()})
        _check_same_layout(initial, trained, "train_fn result")
        masks = _prune_round(trained, masks, rate_per_round, scope)
        history.append(masks)
        start = rewind
    return LotteryTicket(weights=_apply(rewind, masks), masks=masks, mask_history=history)


def _apply(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.where(masks[name], w.detach(), torch.zeros_like(w)) for name, w in weights.items()}


def _check_same_layout(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], what: str) -> None:
    if set(other) != set(reference):
        raise PruningError(f"{what} has names {sorted(other)} but initial has {sorted(reference)}; use the same names")
    for name, tensor in reference.items():
        if other[name].shape != tensor.shape:
            raise PruningError(
                f"{what}[{name!r}] has shape {tuple(other[name].shape)}, expected {tuple(tensor.shape)}; keep shapes"
            )
        if torch.isnan(other[name]).any():
            raise PruningError(f"{what}[{name!r}] contains NaN; lower the learning rate in train_fn")


def _prune_round(
    trained: Mapping[str, torch.Tensor], masks: dict[str, torch.Tensor], rate: float, scope: PruneScope
) -> dict[str, torch.Tensor]:
    """Prune `rate` of the survivors by trained magnitude; pruned entries score −inf and stay pruned."""
    scores = {
        name: torch.where(mask, trained[name].detach().abs().double(), float("-inf")) for name, mask in masks.items()
    }
    if scope == "layer":
        return {name: _prune_survivors(scores[name], masks[name], rate) for name in masks}
    names = list(masks)
    flat_scores = torch.cat([scores[n].reshape(-1).cpu() for n in names])
    flat = _prune_survivors(flat_scores, torch.cat([masks[n].reshape(-1).cpu() for n in names]), rate)
    pieces = torch.split(flat, [masks[n].numel() for n in names])
    return {n: piece.reshape(masks[n].shape).to(masks[n].device) for n, piece in zip(names, pieces, strict=True)}


def _prune_survivors(scores: torch.Tensor, mask: torch.Tensor, rate: float) -> torch.Tensor:
    remaining = int(mask.sum())
    already_pruned = mask.numel() - remaining
    return mask_lowest(scores, already_pruned + pruned_count(rate, remaining))
