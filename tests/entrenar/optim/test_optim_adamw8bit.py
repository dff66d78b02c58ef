"""8-bit AdamW: the codebooks, block-wise quantization, fidelity to AdamW and state size.

Oracles: hand-computed codebook values, a brute-force nearest-code search, torch.optim.AdamW (exact
while no tensor is quantized, and on the first step), and our AdamW on a small regression task.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from entrenar.errors import OptimizerError
from entrenar.optim import AdamW, AdamW8bit, dequantize_blockwise, dynamic_map, quantize_blockwise


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in the optimizer state."""
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def test_dynamic_maps_by_hand() -> None:
    signed, unsigned = dynamic_map(signed=True), dynamic_map(signed=False)
    for code in (signed, unsigned):
        assert code.shape == (256,) and code.dtype == torch.float32
        assert bool((code[1:] > code[:-1]).all())  # sorted and distinct
        assert code[-1].item() == 1.0 and 0.0 in code.tolist()
    # Signed: 127 values below 0, 0, and 128 above (127 tree values + 1.0).
    assert int((signed < 0).sum()) == 127 and int((signed > 0).sum()) == 128
    assert int((unsigned < 0).sum()) == 0
    # Smallest magnitudes, decade 1e-6: signed has 1 value, the midpoint of [0.1, 1] = 0.55 -> 5.5e-7;
    # unsigned has 2, the midpoints of [0.1, 0.55] and [0.55, 1] -> 3.25e-7 and 7.75e-7.
    positive = signed[signed > 0]
    assert positive[0].item() == pytest.approx(5.5e-7)
    assert unsigned[1].item() == pytest.approx(3.25e-7) and unsigned[2].item() == pytest.approx(7.75e-7)
    # Largest below 1, decade 1e0: the last of n midpoints across [0.1, 1] is 1 - 0.9 / (2n);
    # signed n = 64 -> 0.99296875, unsigned n = 128 -> 0.996484375. The signed map is symmetric but for 1.0.
    assert signed[-2].item() == pytest.approx(0.99296875) and signed[0].item() == pytest.approx(-0.99296875)
    assert unsigned[-2].item() == pytest.approx(0.996484375)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    numel=st.integers(1, 1500),
    block_size=st.sampled_from([16, 64, 256, 2048]),
    log_scale=st.integers(-8, 4),
    signed=st.booleans(),
)
def test_quantization_picks_the_nearest_code_per_block(
    seed: int, numel: int, block_size: int, log_scale: int, signed: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g) * 10.0**log_scale
    x = x if signed else x.abs()
    code = dynamic_map(signed=signed)
    codes, absmax = quantize_blockwise(x, code, block_size)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.shape == (math.ceil(numel / block_size),) and absmax.dtype == torch.float32
    # Oracle: absmax by a Python loop over blocks, nearest code by brute-force argmin.
    blocks = [x[i : i + block_size] for i in range(0, numel, block_size)]
    expected_absmax = torch.stack([b.abs().max() for b in blocks])
    torch.testing.assert_close(absmax, expected_absmax, rtol=0, atol=0)
    normed = x / expected_absmax.repeat_interleave(block_size)[:numel]
    distance = (normed[:, None] - code[None, :]).abs()
    chosen = distance.gather(1, codes.long()[:, None]).squeeze(1)
    assert bool((chosen <= distance.min(dim=1).values + 1e-7).all())
    # Round trip: a positive block maximum is exact (code 1.0 exists) and every error is at most half
    # the widest gap of the code times the block's absmax (-1 itself is 0.9 / 128, exactly half the
    # widest signed gap, from the nearest code -0.99297; 1e-5 covers float32 rounding).
    restored = dequantize_blockwise(codes, absmax, code, block_size)
    half_gap = (code[1:] - code[:-1]).max() / 2
    bound = half_gap * expected_absmax.repeat_interleave(block_size)[:numel]
    assert bool(((restored - x).abs() <= bound * (1 + 1e-5)).all())
    top = x.abs().argmax()
    assert restored[top].item() == pytest.approx(x[top].item(), rel=1e-6) or x[top] < 0


def test_zeros_round_trip_to_zeros() -> None:
    code = dynamic_map(signed=True)
    codes, absmax = quantize_blockwise(torch.zeros(3, 100), code, 64)
    assert absmax.tolist() == [0.0] * 5
    assert bool((codes == 127).all())  # index of 0.0 in the signed map
    assert bool((dequantize_blockwise(codes, absmax, code, 64) == 0).all())


def test_equals_adamw_while_no_tensor_is_quantized(lockstep: Callable[..., Any]) -> None:
    # min_8bit_size above every tensor size: fp32 moments, the exact AdamW update of torch.
    lockstep(
        lambda groups: AdamW8bit(groups, min_8bit_size=10**9),
        lambda groups: torch.optim.AdamW(groups),
        lr=1e-2,
        weight_decay=0.1,
        max_norm=0.5,
    )


def test_first_step_is_exact_and_moments_are_quantized() -> None:
    # Step 1 starts from zero moments (exact in any code), so the update equals AdamW's exactly;
    # the stored moments then carry at most the code's rounding error.
    torch.manual_seed(0)
    ours, ref = nn.Linear(128, 64), nn.Linear(128, 64)
    ref.load_state_dict(ours.state_dict())
    opt, ref_opt = AdamW8bit(ours.parameters(), lr=1e-2), torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for model, o in ((ours, opt), (ref, ref_opt)):
        model(torch.randn(4, 128, generator=torch.Generator().manual_seed(1))).pow(2).sum().backward()
        o.step()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    weight_state, bias_state = opt.state[ours.weight], opt.state[ours.bias]
    assert weight_state["exp_avg_codes"].dtype == torch.uint8 and weight_state["exp_avg_codes"].shape == (64, 128)
    assert weight_state["exp_avg_absmax"].shape == (8192 // 256,)
    assert set(bias_state) == {"step", "exp_avg", "exp_avg_sq"}  # 64 < 4096 elements: fp32
    m = dequantize_blockwise(
        weight_state["exp_avg_codes"], weight_state["exp_avg_absmax"], dynamic_map(signed=True), 256
    )
    exact = ref_opt.state[ref.weight]["exp_avg"]
    # Widest gap of the signed map is 0.9 / 64 (decade 1e0) -> error <= 0.9 / 128 = 0.00703 * block absmax.
    assert 0 < (m - exact).abs().max().item() <= 0.00704 * exact.abs().max().item()


def _regression_loss(cls: type[AdamW] | type[AdamW8bit]) -> tuple[float, float, int]:
    """Train a 64-128-128-32 GELU MLP on a noisy teacher for 300 AdamW steps; (initial, final loss, state bytes)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2048, 64, generator=g)
    teacher1, teacher2 = torch.randn(64, 32, generator=g) / 8, torch.randn(32, 32, generator=g) / 6
    y = torch.tanh(x @ teacher1) @ teacher2 + 0.1 * torch.randn(2048, 32, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 32))
    with torch.no_grad():
        initial = float(((model(x) - y) ** 2).mean())
    opt = cls(model.parameters(), lr=3e-3, weight_decay=0.01)
    batches = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, 2048, (128,), generator=batches)
        opt.zero_grad()
        ((model(x[idx]) - y[idx]) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        return initial, float(((model(x) - y) ** 2).mean()), state_bytes(opt)


def test_regression_loss_within_two_percent_of_adamw_with_under_30_percent_state() -> None:
    initial, loss32, bytes32 = _regression_loss(AdamW)
    _, loss8, bytes8 = _regression_loss(AdamW8bit)
    task = "MLP 64-128-128-32 on y = tanh(x W1) W2 + 0.1 noise, 2048 samples, batch 128, 300 steps, lr 3e-3"
    assert loss32 < initial / 2, f"{task}: AdamW did not learn ({initial:.4f} -> {loss32:.4f})"
    assert abs(loss8 - loss32) <= 0.02 * loss32, f"{task}: AdamW {loss32:.5f}, 8-bit {loss8:.5f}"
    # Quantized: 28672 weights * 2 B + 112 blocks * 8 B; fp32: 288 biases * 8 B; 6 steps * 4 B -> 60568 B.
    # AdamW: 28960 params * 8 B + 6 * 4 B = 231704 B; ratio 0.261.
    assert (bytes8, bytes32) == (60568, 231704)
    assert bytes8 <= 0.30 * bytes32, f"{task}: state {bytes8} B vs AdamW {bytes32} B"


def test_block_size_and_min_8bit_size_set_the_state_layout() -> None:
    model = nn.Linear(100, 50)  # weight 5000 elements, bias 50
    opt = AdamW8bit(model.parameters(), block_size=2048, min_8bit_size=0)
    model(torch.ones(1, 100)).sum().backward()
    opt.step()
    assert opt.state[model.weight]["exp_avg_sq_absmax"].shape == (3,)  # ceil(5000 / 2048)
    assert opt.state[model.bias]["exp_avg_codes"].shape == (50,)  # quantized although small
    # Bytes: codes 2 * (5000 + 50), absmax 2 * 4 * (3 + 1), steps 2 * 4.
    assert state_bytes(opt) == 2 * 5050 + 8 * 4 + 8


def test_resume_keeps_dtypes_and_continues_identically() -> None:
    def make() -> tuple[nn.Module, AdamW8bit]:
        torch.manual_seed(0)
        model = nn.Linear(128, 64).to(torch.bfloat16)
        return model, AdamW8bit(model.parameters(), lr=1e-2)

    def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
        for step in steps:
            opt.zero_grad()
            inputs = torch.randn(8, 128, generator=torch.Generator().manual_seed(step)).to(torch.bfloat16)
            model(inputs).float().pow(2).mean().backward()
            opt.step()

    straight, straight_opt = make()
    train(straight, straight_opt, range(10))
    first, opt = make()
    train(first, opt, range(5))
    saved_model, saved_opt = copy.deepcopy(first.state_dict()), copy.deepcopy(opt.state_dict())
    resumed, resumed_opt = make()
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    dtypes = {k: v.dtype for s in resumed_opt.state.values() for k, v in s.items()}
    # torch's loader alone would cast codes and absmax to bfloat16; ours keeps the saved dtypes.
    assert dtypes == {
        "step": torch.float32,
        "exp_avg_codes": torch.uint8,
        "exp_avg_absmax": torch.float32,
        "exp_avg_sq_codes": torch.uint8,
        "exp_avg_sq_absmax": torch.float32,
        "exp_avg": torch.float32,
        "exp_avg_sq": torch.float32,
    }
    train(resumed, resumed_opt, range(5, 10))
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 0}, "block_size=0 must be an integer >= 1"),
        ({"min_8bit_size": -1}, "min_8bit_size=-1"),
        ({"min_8bit_size": 1.5}, "min_8bit_size=1.5"),
        ({"betas": (0.9, 1.0)}, r"AdamW8bit: betas\[1\]=1.0"),
        ({"lr": -1.0}, "lr=-1.0"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        AdamW8bit([nn.Parameter(torch.zeros(2))], **kwargs)


def test_closure_and_params_without_grad() -> None:
    used, unused = nn.Parameter(torch.tensor([1.0])), nn.Parameter(torch.tensor([3.0]))
    opt = AdamW8bit([used, unused], lr=0.5, weight_decay=0.0)

    def closure() -> float:
        opt.zero_grad()
        loss = (used * 2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == 2.0
    assert used.item() == pytest.approx(0.5)
    assert unused not in opt.state
    # A whole group without gradients is skipped.
    frozen = nn.Parameter(torch.tensor([5.0]))
    opt.add_param_group({"params": [frozen]})
    opt.step(closure)
    assert frozen.item() == 5.0 and frozen not in opt.state
