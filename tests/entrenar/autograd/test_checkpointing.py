"""Activation checkpointing: identical gradients, the right blocks recomputed, names and state dict unchanged.

Which blocks are checkpointed is observed, not just read from the plan: a checkpointed block's forward runs
twice per forward + backward (once more to rebuild its activations), a plain one once.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from entrenar.autograd import (
    CheckpointingPlan,
    apply_activation_checkpointing,
    find_layer_stack,
    remove_activation_checkpointing,
)
from entrenar.errors import GradientEngineError


def _forward_backward(model: Any, batch: dict[str, torch.Tensor], seed: int = 0) -> list[int]:
    """One seeded forward + backward; returns each block's forward-call count."""
    for layer in model.layers:
        layer.calls = 0
    torch.manual_seed(seed)  # dropout draws
    model.loss(batch).backward()
    return [layer.calls for layer in model.layers]


@pytest.mark.parametrize("every_n", [1, 2])
def test_gradients_are_identical_with_dropout(lm: SimpleNamespace, every_n: int) -> None:
    """Recomputation replays the RNG state, so even dropout masks match: gradients are bit-identical."""
    batch = lm.make_batch([9, 5, 7], [2, 0, 3], 9, seed=21)
    plain = lm.TinyLM(num_layers=4, dropout=0.3)
    checkpointed = copy.deepcopy(plain)
    plan = apply_activation_checkpointing(checkpointed, every_n_layers=every_n)
    calls_plain = _forward_backward(plain, batch)
    calls_ckpt = _forward_backward(checkpointed, batch)
    assert calls_plain == [1, 1, 1, 1]
    assert calls_ckpt == ([2, 2, 2, 2] if every_n == 1 else [2, 1, 2, 1])
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    assert plan == CheckpointingPlan(method="wrap", layers=("layers.0", "layers.1", "layers.2", "layers.3")[::every_n])


def test_every_n_layers_counts_and_state_dict_is_unchanged(lm: SimpleNamespace) -> None:
    model = lm.TinyLM(num_layers=5)
    keys = list(model.state_dict())
    plan = apply_activation_checkpointing(model, every_n_layers=2)
    assert plan.layers == ("layers.0", "layers.2", "layers.4")  # indices 0, n, 2n: ceil(5 / 2) = 3 blocks
    assert list(model.state_dict()) == keys
    batch = lm.make_batch([6, 4], [0, 1], 6, seed=22)
    assert _forward_backward(model, batch) == [2, 1, 2, 1, 2]
    # Applying again replaces the plan instead of wrapping twice (a double wrap would run blocks 3 times).
    assert len(apply_activation_checkpointing(model, every_n_layers=1).layers) == 5
    assert _forward_backward(model, batch) == [2] * 5
    assert remove_activation_checkpointing(model) == 5
    assert _forward_backward(model, batch) == [1] * 5
    assert remove_activation_checkpointing(model) == 0


def test_no_recomputation_without_grad(lm: SimpleNamespace) -> None:
    model = lm.TinyLM(num_layers=2)
    apply_activation_checkpointing(model)
    batch = lm.make_batch([5], [0], 5, seed=23)
    with torch.no_grad():
        for layer in model.layers:
            layer.calls = 0
        loss = model.loss(batch)
    assert [layer.calls for layer in model.layers] == [1, 1]
    assert not loss.requires_grad


def test_frozen_inputs_and_keyword_arguments(lm: SimpleNamespace) -> None:
    """Non-reentrant checkpointing: gradients reach the blocks even when the embedding is frozen (LoRA-like)."""
    batch = lm.make_batch([8, 8], [0, 3], 8, seed=24)
    plain = lm.TinyLM(num_layers=3)
    plain.embed.requires_grad_(False)
    checkpointed = copy.deepcopy(plain)
    apply_activation_checkpointing(checkpointed)
    for net in (plain, checkpointed):
        hidden = net.forward_hidden(batch["input_ids"], gain=0.5)  # keyword argument passes through
        (hidden**2).sum().backward()
    assert checkpointed.embed.weight.grad is None
    for (name, a), b in zip(plain.layers.named_parameters(), checkpointed.layers.parameters(), strict=True):
        assert a.grad is not None and torch.equal(a.grad, b.grad), name


def test_an_existing_instance_forward_is_restored(lm: SimpleNamespace) -> None:
    model = lm.TinyLM(num_layers=2)
    block = model.layers[0]
    original = block.forward

    def doubled(x: torch.Tensor, **kwargs: float) -> torch.Tensor:
        return 2 * original(x, **kwargs)

    block.forward = doubled
    apply_activation_checkpointing(model)
    x = torch.ones(1, 3, 8, requires_grad=True)
    torch.testing.assert_close(block(x), 2 * original(x))  # the checkpointed call still runs the patch
    remove_activation_checkpointing(model)
    assert block.forward is doubled
    assert "forward" not in model.layers[1].__dict__


class _SwitchModel(nn.Module):
    """A model with its own ``set_gradient_checkpointing`` switch (like entrenar.models' decoder)."""

    def __init__(self, with_layers: bool) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        if with_layers:
            self.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled


def test_the_models_own_switch_is_used_for_every_layer() -> None:
    model = _SwitchModel(with_layers=True)
    plan = apply_activation_checkpointing(model)
    assert plan == CheckpointingPlan(method="model", layers=("layers.0", "layers.1", "layers.2"))
    assert model.gradient_checkpointing
    assert "forward" not in model.layers[0].__dict__  # not wrapped a second time
    # One in two: the switch cannot do it, so it is turned off and blocks are wrapped.
    plan = apply_activation_checkpointing(model, every_n_layers=2)
    assert plan == CheckpointingPlan(method="wrap", layers=("layers.0", "layers.2"))
    assert not model.gradient_checkpointing
    # An explicit layers_path also means wrapping.
    assert apply_activation_checkpointing(model, layers_path="layers").method == "wrap"
    apply_activation_checkpointing(model)
    assert remove_activation_checkpointing(model) == 0 and not model.gradient_checkpointing
    bare = _SwitchModel(with_layers=False)
    assert apply_activation_checkpointing(bare) == CheckpointingPlan(method="model", layers=())
    assert bare.gradient_checkpointing


class _TwoLists(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)])  # mixed classes: not a stack
        self.small = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        self.blocks = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])
        self.empty = nn.ModuleList()
        self.norm = nn.LayerNorm(2)


def test_find_layer_stack() -> None:
    model = _TwoLists()
    assert find_layer_stack(model) == ("blocks", model.blocks)  # the largest single-class container
    assert find_layer_stack(model, "small") == ("small", model.small)
    nested = nn.Sequential(nn.Linear(2, 2))
    assert find_layer_stack(nested) == ("", nested)  # the model itself can be the stack
    plan = apply_activation_checkpointing(nested)
    assert plan.layers == ("0",)
    with pytest.raises(GradientEngineError, match=r"layers_path='missing': _TwoLists has no such module"):
        find_layer_stack(model, "missing")
    with pytest.raises(GradientEngineError, match=r"layers_path='norm' is a LayerNorm; name the nn.ModuleList"):
        find_layer_stack(model, "norm")
    with pytest.raises(GradientEngineError, match=r"Linear has no nn\.ModuleList of repeated blocks"):
        apply_activation_checkpointing(nn.Linear(2, 2))


@pytest.mark.parametrize("bad", [0, -2, 1.0, True])
def test_every_n_layers_is_validated(lm: SimpleNamespace, bad: object) -> None:
    with pytest.raises(GradientEngineError, match="every_n_layers"):
        apply_activation_checkpointing(lm.TinyLM(), every_n_layers=bad)  # type: ignore[arg-type]
