"""Parameter groups: the no-decay rule and LoRA+ learning rates on a small model with every kind of parameter.

Expected groups are listed by hand from the rule in entrenar.optim.groups (module type, ndim < 2,
name substrings) applied to the model below.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from entrenar.errors import OptimizerError
from entrenar.optim import AdamW, build_param_groups, decays


class RMSNorm(nn.Module):
    """A custom norm, recognized by its class name ending in 'Norm' (like transformers' LlamaRMSNorm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class LoraLinear(nn.Module):
    """A LoRA-like linear: frozen base, trainable A (r, in) and B (out, r)."""

    def __init__(self, dim: int, r: int) -> None:
        super().__init__()
        self.base = nn.Linear(dim, dim)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(dim, r, bias=False)
        self.lora_B = nn.Linear(r, dim, bias=False)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(4, dim))  # 2-D but named like an embedding
        self.ln = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.rms = RMSNorm(dim)
        self.adapter = LoraLinear(dim, 2)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(10, 6)
        self.block = Block(6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.tok.weight  # tied: appears once, under the embedding


def _names(groups: list[dict[str, object]]) -> list[tuple[list[str], float, float]]:
    return [(g["param_names"], g["lr"], g["weight_decay"]) for g in groups]  # type: ignore[misc]


def test_default_rule_on_a_model_with_every_kind_of_parameter() -> None:
    groups = build_param_groups(Tiny(), 0.1, lr=1e-3)
    assert _names(groups) == [
        (["block.proj.weight", "block.adapter.lora_A.weight", "block.adapter.lora_B.weight"], 1e-3, 0.1),
        (
            [
                "tok.weight",  # nn.Embedding (rule 1, and "tok" has no name match: the type decides)
                "block.pos_embed",  # name contains "embed" (rule 3)
                "block.ln.weight",  # nn.LayerNorm (rule 1)
                "block.ln.bias",
                "block.proj.bias",  # 1-D (rule 2)
                "block.rms.weight",  # class name ends in Norm (rule 1)
            ],
            1e-3,
            0.0,
        ),
    ]
    # Frozen base weights are left out; the tied head weight is the embedding's and appears once.
    assert all("base" not in n for g in groups for n in g["param_names"])


def test_lora_plus_gives_lora_b_its_own_learning_rate() -> None:
    groups = build_param_groups(Tiny(), 0.1, lr=1e-3, lora_plus_ratio=16)
    assert [(g["param_names"], g["lr"], g["weight_decay"]) for g in groups if "lora_B" in str(g["param_names"])] == [
        (["block.adapter.lora_B.weight"], 16e-3, 0.1)
    ]
    assert len(groups) == 3  # decayed, not decayed, LoRA B decayed (the empty LoRA B no-decay group is dropped)
    assert "block.adapter.lora_A.weight" in groups[0]["param_names"]


def test_decays_by_rule() -> None:
    lin, emb, norm = nn.Linear(3, 3), nn.Embedding(3, 3), nn.GroupNorm(1, 3)
    assert decays("x.weight", lin.weight, lin)
    assert not decays("x.bias", lin.bias, lin)
    assert not decays("x.weight", emb.weight, emb)
    assert not decays("x.weight", norm.weight, norm)
    assert not decays("x.Norm_gain", lin.weight, lin)  # name rule, case-insensitive


def test_groups_drive_the_optimizer() -> None:
    # Zero gradients: AdamW's update is exactly p * (1 - lr * wd) for decayed parameters, none for the rest.
    model = Tiny()
    groups = build_param_groups(model, 0.5, lr=0.1, lora_plus_ratio=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    AdamW(groups).step()
    params = dict(model.named_parameters())
    for group in groups:
        factor = 1 - group["lr"] * group["weight_decay"]  # 0.95 decayed, 0.8 for LoRA B (lr 0.4), 1 exempt
        for name in group["param_names"]:
            torch.testing.assert_close(params[name], before[name] * factor)


def test_peft_lora_names_are_recognized() -> None:
    peft = pytest.importorskip("peft")
    base = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0", "2"]))
    groups = build_param_groups(model, 0.01, lr=1e-4, lora_plus_ratio=8)
    names = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    expected_b = {n for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n}
    assert len(expected_b) == 2
    assert {n for n, v in names.items() if v[0] == pytest.approx(8e-4)} == expected_b
    assert len(names) == 4  # only the adapters are trainable


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((-0.1,), {"lr": 1.0}, r"weight_decay=-0.1 is outside \[0, inf\)"),
        ((0.1,), {"lr": -1.0}, "lr=-1.0"),
        ((0.1,), {"lr": 1.0, "lora_plus_ratio": 0}, r"lora_plus_ratio=0 is outside \(0, inf\)"),
    ],
)
def test_invalid_arguments_are_rejected(args: tuple[float], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        build_param_groups(Tiny(), *args, **kwargs)  # type: ignore[arg-type]


def test_a_frozen_model_is_an_error() -> None:
    with pytest.raises(OptimizerError, match="no trainable parameters"):
        build_param_groups(nn.Linear(2, 2).requires_grad_(False), 0.1, lr=1.0)
