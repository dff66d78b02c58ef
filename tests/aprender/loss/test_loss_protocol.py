"""The `Loss` protocol: every registered class satisfies it, is frozen, validates its reduction, and gives
identical results when one instance is used from two threads at once."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

import aprender.loss as loss_module
from aprender.errors import InvalidArgumentError
from aprender.loss import LOSSES, Loss, MSELoss


def sample_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A small (pred, target) batch in the layout each loss documents."""
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(6, 4, generator=g, dtype=torch.float64)
    stacked = torch.randn(6, 2, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64)
    return {
        "mse": (embeddings, torch.randn(6, 4, generator=g, dtype=torch.float64)),
        "mae": (embeddings, torch.randn(6, 4, generator=g, dtype=torch.float64)),
        "huber": (embeddings, torch.randn(6, 4, generator=g, dtype=torch.float64)),
        "cross_entropy": (logits, torch.tensor([0, 4, -100, 2, 1, 3])),
        "bce_with_logits": (logits, torch.rand(6, 5, generator=g, dtype=torch.float64)),
        "binary_focal": (logits, torch.randint(0, 2, (6, 5), generator=g).to(torch.float64)),
        "multiclass_focal": (logits, torch.tensor([0, 4, -100, 2, 1, 3])),
        "kl_distillation": (logits, torch.randn(6, 5, generator=g, dtype=torch.float64)),
        "distillation": (logits, torch.randn(6, 5, generator=g, dtype=torch.float64)),
        "info_nce": (embeddings, torch.randn(6, 4, generator=g, dtype=torch.float64)),
        "nt_xent": (embeddings, torch.randn(6, 4, generator=g, dtype=torch.float64)),
        "pairwise_contrastive": (stacked, torch.tensor([1, 0, 1, 1, 0, 0])),
        "triplet_margin": (embeddings, stacked),
        "cosine_embedding": (stacked, torch.tensor([1, -1, 1, 1, -1, -1])),
    }[name]


def test_registry_lists_every_exported_loss_by_name() -> None:
    exported = {
        obj
        for obj in vars(loss_module).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__name__.endswith("Loss")
    }
    assert set(LOSSES.values()) == exported
    assert len(LOSSES) == 14
    for name, cls in LOSSES.items():
        assert cls.name == name
        assert cls.__name__ in loss_module.__all__


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_is_a_frozen_differentiable_loss(name: str) -> None:
    assert isinstance(LOSSES[name](), Loss)
    loss: Any = LOSSES[name]()
    assert loss.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.reduction = "sum"
    assert loss == LOSSES[name]() and hash(loss) == hash(LOSSES[name]())
    pred, target = sample_inputs(name)
    pred = pred.clone().requires_grad_(True)
    value = loss(pred, target)
    assert value.dim() == 0 and torch.isfinite(value)
    (grad,) = torch.autograd.grad(value, pred)
    assert grad.shape == pred.shape and grad.abs().sum() > 0
    per_item = dataclasses.replace(loss, reduction="none")(pred, target)
    total = dataclasses.replace(loss, reduction="sum")(pred, target)
    torch.testing.assert_close(per_item.sum(), total)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_constructor_rejects_bad_reduction(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"reduction='average'.*'mean', 'sum', 'none'"):
        LOSSES[name](reduction="average")  # type: ignore[call-arg]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_instance_shared_by_two_threads(name: str) -> None:
    loss = LOSSES[name]()
    pred, target = sample_inputs(name)

    def value_and_grad(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = pred.clone().requires_grad_(True)
        value = loss(leaf, target)
        (grad,) = torch.autograd.grad(value, leaf)
        return value.detach(), grad

    expected_value, expected_grad = value_and_grad(0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(value_and_grad, range(16)))
    for value, grad in results:
        assert torch.equal(value, expected_value)
        assert torch.equal(grad, expected_grad)


def test_protocol_is_structural() -> None:
    class Custom:
        name = "custom"

        def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (pred - target).sum()

    assert isinstance(Custom(), Loss)
    assert not isinstance(object(), Loss)
    loss: Loss = MSELoss()
    assert loss(torch.ones(2), torch.zeros(2)).item() == 1.0
