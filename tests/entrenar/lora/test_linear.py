"""LoRALinear: merge arithmetic, forward numerics against PEFT's lora.Linear, inits, QLoRA bases.

Oracles: hand formulas (W + scaling * B @ A in float64), PEFT's ``tuners.lora.layer.Linear`` built on a copy
of the same base with the same A, B (and DoRA magnitude).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

from entrenar.errors import LoraError
from entrenar.lora import LoraConfig, LoRALinear
from entrenar.quant import NF4Linear


def _randomised(layer: LoRALinear, seed: int = 0) -> LoRALinear:
    """Give A, B (and m) random values so the adapter changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
        if layer.use_dora:
            layer.lora_magnitude_vector.mul_(1 + 0.2 * torch.rand(layer.out_features, generator=gen))
    return layer


@settings(max_examples=40, deadline=None)
@given(
    out_f=st.integers(1, 12),
    in_f=st.integers(1, 12),
    rank=st.integers(1, 6),
    alpha=st.floats(0.5, 64),
    rslora=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_merge_is_w_plus_scaled_ba_and_idempotent(
    out_f: int, in_f: int, rank: int, alpha: float, rslora: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = _randomised(LoRALinear(nn.Linear(in_f, out_f), LoraConfig(rank, alpha, use_rslora=rslora)), seed)
    assert layer.weight is not None
    w0 = layer.weight.detach().clone()
    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    # Expected: the formula evaluated in float64 from the same tensors.
    expected = w0.double() + scale * layer.lora_B.detach().double() @ layer.lora_A.detach().double()
    x = torch.randn(3, in_f)
    unmerged_out = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.weight.detach().double(), expected, rtol=1e-5, atol=1e-4)
    once = layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.weight.detach(), once)  # merge twice = once
    torch.testing.assert_close(layer(x), unmerged_out, rtol=1e-4, atol=1e-3)
    layer.unmerge()
    layer.unmerge()  # a second unmerge is a no-op
    assert not layer.merged
    torch.testing.assert_close(layer.weight.detach(), w0, rtol=0, atol=1e-4 * max(1.0, expected.abs().max().item()))


def test_forward_is_base_plus_scaled_update() -> None:
    torch.manual_seed(0)
    layer = _randomised(LoRALinear(nn.Linear(10, 6), LoraConfig(rank=3, alpha=6)))
    assert layer.weight is not None and layer.bias is not None
    x = torch.randn(2, 5, 10)
    # Hand formula: x W^T + b + (alpha / r) (x A^T) B^T.
    expected = x @ layer.weight.T + layer.bias + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_disabled_gives_the_base_output_even_when_merged() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 4)
    reference = copy.deepcopy(base)
    layer = _randomised(LoRALinear(base, LoraConfig(rank=2, alpha=4)))
    x = torch.randn(3, 8)
    assert not torch.allclose(layer(x), reference(x))  # the adapter matters
    layer.disabled = True
    assert torch.equal(layer(x), reference(x))
    layer.disabled = False
    layer.merge()
    layer.disabled = True
    torch.testing.assert_close(layer(x), reference(x))  # unmerged on the way, as PEFT
    assert not layer.merged


@pytest.mark.parametrize(
    ("dora", "rslora", "dropout", "bias", "training"),
    [
        (False, False, 0.0, True, False),
        (False, True, 0.25, False, True),
        (True, False, 0.0, True, False),
        (True, False, 0.0, True, True),
        (True, True, 0.3, True, True),  # DoRA + dropout in training: the base term is recomputed
        (True, False, 0.3, False, False),
    ],
)
def test_forward_backward_and_merge_match_peft(
    dora: bool, rslora: bool, dropout: float, bias: bool, training: bool
) -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 12, bias=bias)
    peft_config = PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, use_dora=dora, use_rslora=rslora)
    theirs = PeftLinear(copy.deepcopy(base), "default", config=peft_config, r=4, lora_alpha=8)
    ours = LoRALinear(copy.deepcopy(base), LoraConfig(4, 8, dropout, use_rslora=rslora, use_dora=dora))
    with torch.no_grad():
        theirs.lora_B["default"].weight.normal_()
        ours.lora_A.copy_(theirs.lora_A["default"].weight)
        ours.lora_B.copy_(theirs.lora_B["default"].weight)
        if dora:
            # Our magnitude was initialised independently: it must already equal PEFT's ||W + s B A||.
            torch.testing.assert_close(
                ours.lora_magnitude_vector,
                torch.linalg.norm(base.weight, dim=1),  # B = 0 at our init
            )
            theirs.lora_magnitude_vector["default"].weight.mul_(1.5)
            ours.lora_magnitude_vector.copy_(theirs.lora_magnitude_vector["default"].weight)
    theirs.train(training)
    ours.train(training)
    x = torch.randn(3, 7, 16)
    torch.manual_seed(1)
    expected = theirs(x)
    torch.manual_seed(1)  # same dropout mask
    got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    expected.square().sum().backward()
    got.square().sum().backward()
    pairs = [(ours.lora_A, theirs.lora_A["default"].weight), (ours.lora_B, theirs.lora_B["default"].weight)]
    if dora:
        pairs.append((ours.lora_magnitude_vector, theirs.lora_magnitude_vector["default"].weight))
    for mine, ref in pairs:
        assert ref.grad is not None and mine.grad is not None
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-4, atol=1e-4)
    theirs.merge()
    ours.merge()
    assert ours.weight is not None
    torch.testing.assert_close(ours.weight, theirs.base_layer.weight, rtol=1e-5, atol=1e-5)
    theirs.unmerge()
    ours.unmerge()
    torch.testing.assert_close(ours.weight, base.weight, rtol=1e-5, atol=1e-5)


def test_dora_merge_is_idempotent_and_unmerge_restores() -> None:
    torch.manual_seed(0)
    layer = _randomised(LoRALinear(nn.Linear(9, 5), LoraConfig(rank=2, alpha=4, use_dora=True)))
    assert layer.weight is not None
    w0 = layer.weight.detach().clone()
    x = torch.randn(4, 9)
    before = layer(x)
    layer.merge()
    merged = layer.weight.detach().clone()
    # DoRA (arXiv 2402.09353 eq. 5) by hand: rows of W + sBA rescaled to the magnitudes.
    combined = w0 + 2.0 * layer.lora_B.detach() @ layer.lora_A.detach()
    expected = layer.lora_magnitude_vector.detach().unsqueeze(1) * combined / combined.norm(dim=1, keepdim=True)
    torch.testing.assert_close(merged, expected)
    layer.merge()
    assert torch.equal(layer.weight.detach(), merged)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.weight.detach(), w0, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- inits


def test_default_init_is_kaiming_a_and_zero_b() -> None:
    torch.manual_seed(0)
    base = nn.Linear(1024, 16)
    layer = LoRALinear(copy.deepcopy(base), LoraConfig(rank=8, alpha=16))
    # kaiming_uniform(a=sqrt(5)) draws U(-b, b) with b = sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in).
    bound = 1 / math.sqrt(1024)
    assert layer.lora_A.abs().max().item() <= bound
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # std of U(-b, b)
    assert torch.count_nonzero(layer.lora_B) == 0
    x = torch.randn(2, 1024)
    assert torch.equal(layer(x), base(x))  # the adapter starts as a no-op


def test_gaussian_init_has_std_one_over_rank() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(2048, 8), LoraConfig(rank=4, alpha=8, init="gaussian"))
    assert layer.lora_A.std().item() == pytest.approx(1 / 4, rel=0.05)  # N(0, 1/r), PEFT's "gaussian"
    assert abs(layer.lora_A.mean().item()) < 0.01
    assert torch.count_nonzero(layer.lora_B) == 0


def test_none_init_draws_b_too() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 256), LoraConfig(rank=4, alpha=8, init="none"))
    assert torch.count_nonzero(layer.lora_B) == layer.lora_B.numel()
    assert layer.lora_B.abs().max().item() <= 1 / math.sqrt(4)  # nn.Linear(r, out) default bound 1/sqrt(r)


def test_pissa_init_keeps_the_output_and_matches_peft() -> None:
    torch.manual_seed(0)
    base = nn.Linear(20, 12)
    original = base.weight.detach().clone()
    layer = LoRALinear(copy.deepcopy(base), LoraConfig(rank=3, alpha=6, init="pissa"))
    assert layer.weight is not None
    x = torch.randn(5, 20)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-5, atol=1e-5)
    # scaling * B @ A is the best rank-3 approximation of W (Eckart-Young), computed in float64 here.
    u, s, vh = torch.linalg.svd(original.double(), full_matrices=False)
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    torch.testing.assert_close((2.0 * layer.lora_B @ layer.lora_A).double(), best, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.double(), original.double() - best, rtol=1e-5, atol=1e-5)
    theirs = PeftLinear(
        copy.deepcopy(base),
        "default",
        config=PeftLoraConfig(r=3, lora_alpha=6, init_lora_weights="pissa"),
        r=3,
        lora_alpha=6,
    )
    torch.testing.assert_close(layer.weight, theirs.base_layer.weight, rtol=1e-5, atol=1e-5)


def test_dora_magnitude_starts_at_the_row_norms() -> None:
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    layer = LoRALinear(copy.deepcopy(base), LoraConfig(rank=2, alpha=2, use_dora=True, init="none"))
    expected = torch.linalg.norm(base.weight + 1.0 * layer.lora_B @ layer.lora_A, dim=1)  # scaling 2/2 = 1
    torch.testing.assert_close(layer.lora_magnitude_vector, expected)
    x = torch.randn(3, 7)
    # With m = ||W + sBA|| the DoRA output equals plain LoRA's.
    plain = base(x) + (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-5)


def test_meta_construction_defers_init_until_initialize_parameters() -> None:
    with torch.device("meta"):
        layer = LoRALinear(nn.Linear(6, 4), LoraConfig(rank=2, alpha=4, use_dora=True))
    assert layer.lora_A.is_meta
    layer.to_empty(device="cpu")
    weight = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 10
    with torch.no_grad():
        assert layer.weight is not None and layer.bias is not None
        layer.weight.copy_(weight)
        layer.bias.zero_()
    layer.initialize_parameters()
    assert torch.count_nonzero(layer.lora_B) == 0
    torch.testing.assert_close(layer.lora_magnitude_vector, weight.norm(dim=1))


def test_base_is_frozen_and_keeps_hf_names() -> None:
    layer = LoRALinear(nn.Linear(4, 3), LoraConfig(rank=2, alpha=2, use_dora=True))
    names = {name: p.requires_grad for name, p in layer.named_parameters()}
    assert names == {"weight": False, "bias": False, "lora_A": True, "lora_B": True, "lora_magnitude_vector": True}
    assert "rank=2" in repr(layer) and "dora=True" in repr(layer)


def test_initialize_parameters_refuses_a_merged_layer() -> None:
    layer = LoRALinear(nn.Linear(4, 3), LoraConfig(rank=2, alpha=2))
    layer.merge()
    with pytest.raises(LoraError, match="unmerge"):
        layer.initialize_parameters()


def test_float32_adapter_on_bfloat16_base() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 4).to(torch.bfloat16)
    layer = _randomised(LoRALinear(base, LoraConfig(rank=2, alpha=2), dtype=torch.float32))
    assert layer.lora_A.dtype == torch.float32 and layer.weight is not None
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    # PEFT's promotion: bf16 base output + float32 update, then back to bf16.
    expected = (F.linear(x, layer.weight, layer.bias) + (x.float() @ layer.lora_A.T) @ layer.lora_B.T).to(
        torch.bfloat16
    )
    assert torch.equal(out, expected)


# ------------------------------------------------------------------------------------------- QLoRA bases


def test_lora_on_an_nf4_base() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(64, 32)
    nf4 = NF4Linear.from_weight(dense.weight.detach(), dense.bias.detach(), compute_dtype=torch.float32)
    layer = _randomised(LoRALinear(nf4, LoraConfig(rank=4, alpha=8)))
    assert layer.base_layer is nf4 and layer.lora_A.dtype == torch.float32
    assert [name for name, _ in layer.named_parameters()] == ["lora_A", "lora_B"]
    x = torch.randn(5, 64, requires_grad=True)
    out = layer(x)
    expected = nf4(x) + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert layer.lora_A.grad is not None and x.grad is not None
    with pytest.raises(LoraError, match="merge_adapter_into_checkpoint"):
        layer.merge()


def test_dora_on_an_nf4_base_uses_the_dequantized_weight() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(64, 16, bias=True)
    nf4 = NF4Linear.from_weight(dense.weight.detach(), dense.bias.detach(), double_quant=False)
    layer = _randomised(LoRALinear(nf4, LoraConfig(rank=2, alpha=4, use_dora=True)))
    w = nf4.weight_dequantized(torch.float32)
    x = torch.randn(3, 64)
    # Hand formula: (m / ||W + sBA||) * (x (W + sBA)^T) + b, W the de-quantized weight.
    combined = w + 2.0 * layer.lora_B @ layer.lora_A
    expected = (layer.lora_magnitude_vector / combined.norm(dim=1)) * (x @ combined.T) + nf4.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


class _Sized(nn.Module):
    """A linear-shaped module without weight_dequantized (like a third-party quantized layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features, self.out_features = 4, 3
        self.inner = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out


def test_generic_base_is_called_as_is() -> None:
    torch.manual_seed(0)
    base = _Sized()
    layer = _randomised(LoRALinear(base, LoraConfig(rank=2, alpha=2)))
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), base(x) + (x @ layer.lora_A.T) @ layer.lora_B.T)
    assert not any(p.requires_grad for p in base.parameters())
    assert "base=quantized" in repr(layer)


@pytest.mark.parametrize(
    ("make", "config", "needle"),
    [
        (lambda: nn.Embedding(4, 3), LoraConfig(), "in_features and out_features"),
        (lambda: LoRALinear(nn.Linear(4, 3), LoraConfig(rank=1)), LoraConfig(), "already has a LoRA adapter"),
        (lambda: nn.Linear(4, 3), LoraConfig(rank=4, init="pissa"), "exceeds min"),
        (_Sized, LoraConfig(rank=1, init="pissa"), "dense nn.Linear"),
        (_Sized, LoraConfig(rank=1, use_dora=True), "weight_dequantized"),
    ],
)
def test_bases_lora_cannot_wrap(make: object, config: LoraConfig, needle: str) -> None:
    with pytest.raises(LoraError) as info:
        LoRALinear(make(), config)  # type: ignore[operator]
    assert needle in str(info.value)
