"""Lottery tickets: nested masks, rewinding, the exact pruning schedule, on small linear regressions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pytest
import torch

from aprender.errors import PruningError
from aprender.pruning import LotteryTicket, iterative_magnitude_pruning

TrainFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _problem(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Initial weights and (inputs, targets) for two independent regressions y = x Wᵀ."""
    g = torch.Generator().manual_seed(seed)
    initial = {"w": torch.randn(4, 16, generator=g) * 0.1, "v": torch.randn(3, 8, generator=g) * 0.1}
    data = {}
    for name, w in initial.items():
        x = torch.randn(128, w.shape[1], generator=g)
        data[name] = (x, x @ torch.randn(w.shape, generator=g).T)
    return initial, data


def _sgd_train_fn(data: Mapping[str, tuple[torch.Tensor, torch.Tensor]], steps: int = 40, lr: float = 0.1) -> TrainFn:
    """A few full-batch SGD steps on the MSE, with gradients masked so pruned weights stay zero."""

    def train(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, w in weights.items():
            w = w.clone().requires_grad_(True)
            x, y = data[name]
            for _ in range(steps):
                loss = ((x @ w.T - y) ** 2).mean()
                (grad,) = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    w -= lr * grad * masks[name]
            out[name] = w.detach()
        return out

    return train


def _identity(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return weights


def _kept(ticket: LotteryTicket) -> list[dict[str, int]]:
    return [{name: int(mask.sum()) for name, mask in masks.items()} for masks in ticket.mask_history]


def test_masks_nest_rewind_to_initial_and_follow_the_schedule() -> None:
    initial, data = _problem()
    ticket = iterative_magnitude_pruning(initial, _sgd_train_fn(data), rounds=3, rate_per_round=0.3)
    # Survivors per round, floor(0.3 * remaining) pruned each time:
    # w: 64 -19-> 45 -13-> 32 -9-> 23;  v: 24 -7-> 17 -5-> 12 -3-> 9.
    assert _kept(ticket) == [{"w": 45, "v": 17}, {"w": 32, "v": 12}, {"w": 23, "v": 9}]
    assert ticket.sparsity == pytest.approx(1 - 32 / 88)
    for earlier, later in zip(ticket.mask_history, ticket.mask_history[1:], strict=False):
        for name in initial:
            assert not (later[name] & ~earlier[name]).any(), "a pruned weight came back"
    assert ticket.masks is ticket.mask_history[-1]
    for name, w in initial.items():
        mask = ticket.masks[name]
        assert torch.equal(ticket.weights[name][mask], w[mask])
        assert torch.equal(ticket.weights[name][~mask], torch.zeros(int((~mask).sum())))


def test_train_fn_sees_rewound_masked_weights() -> None:
    initial, data = _problem()
    train = _sgd_train_fn(data)
    seen: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def recording(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(({k: v.clone() for k, v in weights.items()}, masks))
        weights["w"].fill_(7.0)  # mutating the copies it gets must not touch the driver's state
        return train(weights, masks)

    ticket = iterative_magnitude_pruning(initial, recording, rounds=2, rate_per_round=0.5)
    assert len(seen) == 2
    assert all(torch.equal(seen[0][0][k], initial[k]) and seen[0][1][k].all() for k in initial)
    for k in initial:
        mask = ticket.mask_history[0][k]
        assert torch.equal(seen[1][1][k], mask)
        assert torch.equal(seen[1][0][k], torch.where(mask, initial[k], 0.0))


def test_trained_magnitudes_find_the_sparse_support() -> None:
    g = torch.Generator().manual_seed(1)
    support = torch.zeros(64, dtype=torch.bool)  # exactly half the entries carry signal
    support[torch.randperm(64, generator=g)[:32]] = True
    support = support.reshape(4, 16)
    target = torch.where(support, 2.0 + torch.rand(4, 16, generator=g), 0.0)
    x = torch.randn(256, 16, generator=g)
    initial = {"w": torch.randn(4, 16, generator=g)}  # random init: its magnitudes say nothing
    ticket = iterative_magnitude_pruning(
        initial, _sgd_train_fn({"w": (x, x @ target.T)}, steps=200), rounds=1, rate_per_round=0.5
    )
    assert torch.equal(ticket.masks["w"], support)


def test_global_scope_ranks_all_tensors_together() -> None:
    g = torch.Generator().manual_seed(2)
    initial = {"big": 10 + torch.rand(8, 8, generator=g), "small": torch.rand(4, 6, generator=g)}
    layer = iterative_magnitude_pruning(initial, _identity, rounds=1, rate_per_round=0.5)
    glob = iterative_magnitude_pruning(initial, _identity, rounds=1, rate_per_round=0.5, scope="global")
    # Layer: half of each (32 of 64, 12 of 24). Global: 44 of 88, all 24 small ones first, then 20 big.
    assert _kept(layer) == [{"big": 32, "small": 12}]
    assert _kept(glob) == [{"big": 44, "small": 0}]
    pruned_big = torch.sort(initial["big"].flatten()).values[:20]
    assert torch.equal(torch.sort(initial["big"][~glob.masks["big"]]).values, pruned_big)


def test_global_schedule_is_exact_over_rounds() -> None:
    initial, data = _problem(3)
    ticket = iterative_magnitude_pruning(initial, _sgd_train_fn(data), rounds=3, rate_per_round=0.4, scope="global")
    # 88 -35-> 53 -21-> 32 -12-> 20 (floor(0.4 * remaining) each round).
    assert [sum(k.values()) for k in _kept(ticket)] == [53, 32, 20]


def test_cumulative_sparsity_matches_the_geometric_schedule() -> None:
    initial = {"w": torch.arange(1.0, 10001.0).reshape(100, 100)}
    ticket = iterative_magnitude_pruning(initial, _identity, rounds=4, rate_per_round=0.2)
    # 10000 -> 8000 -> 6400 -> 5120 -> 4096 survivors: exactly 1 - 0.8^4 pruned.
    assert [k["w"] for k in _kept(ticket)] == [8000, 6400, 5120, 4096]
    assert math.isclose(ticket.sparsity, 1 - 0.8**4)
    # Identity training keeps the order of magnitudes: the 4096 largest values survive.
    assert torch.equal(ticket.weights["w"].flatten()[-4096:], torch.arange(5905.0, 10001.0))


def test_rewind_to_an_early_snapshot() -> None:
    initial, data = _problem(4)
    train = _sgd_train_fn(data, steps=3)
    early = train(dict(initial), {k: torch.ones_like(v, dtype=torch.bool) for k, v in initial.items()})
    seen: list[dict[str, torch.Tensor]] = []

    def recording(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append({k: v.clone() for k, v in weights.items()})
        return train(weights, masks)

    ticket = iterative_magnitude_pruning(initial, recording, rounds=2, rate_per_round=0.5, rewind_to=early)
    for name in initial:
        assert torch.equal(seen[0][name], initial[name])
        assert torch.equal(seen[1][name], torch.where(ticket.mask_history[0][name], early[name], 0.0))
        mask = ticket.masks[name]
        assert torch.equal(ticket.weights[name][mask], early[name][mask])
        assert not torch.equal(early[name], initial[name])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rounds": 0}, "rounds=0 must be a positive integer"),
        ({"rounds": True}, "rounds=True must be a positive integer"),
        ({"rate_per_round": 1.0}, r"rate_per_round=1\.0 is outside \[0, 1\)"),
        ({"scope": "model"}, "scope='model' is unknown"),
        ({"rewind_to": {"w": torch.zeros(2, 2)}}, "rewind_to has names"),
        ({"rewind_to": {"w": torch.zeros(2, 3), "v": torch.zeros(3)}}, r"rewind_to\['w'\] has shape \(2, 3\)"),
        ({"train_fn": lambda w, m: {"w": w["w"]}}, "train_fn result has names"),
        ({"train_fn": lambda w, m: {**w, "v": torch.zeros(4)}}, r"train_fn result\['v'\] has shape \(4,\)"),
        ({"train_fn": lambda w, m: {**w, "v": torch.full((3,), float("nan"))}}, "contains NaN"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "initial": {"w": torch.ones(2, 2), "v": torch.ones(3)},
        "train_fn": _identity,
        "rounds": 1,
        "rate_per_round": 0.5,
    }
    arguments.update(kwargs)
    with pytest.raises(PruningError, match=message):
        iterative_magnitude_pruning(**arguments)  # type: ignore[arg-type]
