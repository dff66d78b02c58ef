"""Precision policy per (device, dtype) and the uniform LossScaler, with a real GradScaler on the CPU.

The CPU GradScaler stands in for the CUDA one in the wrapper tests (same class, same arithmetic); the policy
itself creates one only for float16 on CUDA, which the `cuda` tests exercise on a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from entrenar.autograd import LossScaler, PrecisionPolicy
from entrenar.errors import PrecisionError


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def test_float32_has_no_autocast_and_no_scaler() -> None:
    policy = PrecisionPolicy.for_device("cpu", torch.float32)
    assert (policy.device_type, policy.dtype, policy.uses_autocast, policy.uses_grad_scaler) == (
        "cpu",
        torch.float32,
        False,
        False,
    )
    assert isinstance(policy.autocast(), contextlib.nullcontext)
    with policy.autocast():
        assert _linear()(torch.ones(2, 4)).dtype == torch.float32
    assert not policy.make_scaler().enabled


def test_cpu_bfloat16_autocast_runs_matmuls_in_bfloat16() -> None:
    policy = PrecisionPolicy.for_device(torch.device("cpu"), "bfloat16")
    assert policy.uses_autocast and not policy.uses_grad_scaler
    layer, x = _linear(), torch.ones(2, 4)
    with policy.autocast():
        inside = layer(x)
    assert inside.dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32  # only inside the context
    torch.testing.assert_close(inside.float(), layer(x), rtol=1e-2, atol=1e-2)  # bf16 has 8 mantissa bits
    assert not policy.make_scaler().enabled  # bfloat16 has float32's exponent range: no scaling


def test_float16_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(PrecisionError, match=r"float16 .* not supported on the CPU.*use bfloat16 or float32"):
        PrecisionPolicy.for_device("cpu", torch.float16)


def test_cuda_pairs_without_a_gpu() -> None:
    """The policy is a pure table: it can be built for CUDA on any machine."""
    fp16 = PrecisionPolicy.for_device("cuda", "float16")
    assert fp16.uses_autocast and fp16.uses_grad_scaler
    bf16 = PrecisionPolicy.for_device("cuda:1", torch.bfloat16)
    assert (bf16.device_type, bf16.uses_autocast, bf16.uses_grad_scaler) == ("cuda", True, False)
    assert not PrecisionPolicy.for_device("cuda", "float32").uses_autocast


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("mps", torch.float32, "device type 'mps' has no precision policy; train on 'cpu' or 'cuda'"),
        ("not-a-device", torch.float32, "device='not-a-device' is not a torch device"),
        (3.5, torch.float32, "device=3.5 is not a torch device"),
        ("cpu", "fp8", "dtype='fp8' is not supported; pass one of float32, bfloat16, float16"),
        ("cpu", torch.int8, "dtype=torch.int8 is not supported"),
        ("cpu", torch.float64, "dtype=torch.float64 is not supported"),
    ],
)
def test_unsupported_inputs(device: object, dtype: object, message: str) -> None:
    with pytest.raises(PrecisionError, match=message):
        PrecisionPolicy.for_device(device, dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init_scale": 0.0}, "init_scale=0.0"),
        ({"init_scale": float("inf")}, "init_scale=inf"),
        ({"init_scale": True}, "init_scale=True"),
    ],
)
def test_make_scaler_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PrecisionError, match=message):
        PrecisionPolicy.for_device("cpu", "float32").make_scaler(**kwargs)  # type: ignore[arg-type]


def _sgd_step(scaler: LossScaler, layer: nn.Linear, x: torch.Tensor) -> tuple[torch.optim.Optimizer, bool]:
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler.scale(layer(x).sum()).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    return optimizer, scaler.update()


def test_noop_scaler_is_plain_backward_and_step() -> None:
    scaler = LossScaler(None)
    assert not scaler.enabled
    loss = torch.tensor(2.0, requires_grad=True)
    assert scaler.scale(loss) is loss
    layer, oracle, x = _linear(), _linear(), torch.ones(2, 4)
    _, stepped = _sgd_step(scaler, layer, x)
    oracle_opt = torch.optim.SGD(oracle.parameters(), lr=0.1)
    oracle(x).sum().backward()
    oracle_opt.step()
    assert stepped
    for got, want in zip(layer.parameters(), oracle.parameters(), strict=True):
        assert torch.equal(got, want)
    assert scaler.state_dict() == {}
    scaler.load_state_dict({})
    with pytest.raises(PrecisionError, match="checkpoint has grad-scaler state but this run does not use one"):
        scaler.load_state_dict({"scale": 8.0})


def test_disabled_grad_scaler_counts_as_none() -> None:
    assert not LossScaler(torch.amp.GradScaler("cpu", enabled=False)).enabled


def test_grad_scaler_finite_step_unscales_and_grows() -> None:
    """Scale 8, growth every step: gradients equal the unscaled ones, the step is taken, the scale doubles."""
    scaler = LossScaler(torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1))
    assert scaler.enabled
    assert scaler.scale(torch.tensor(1.5)).item() == 12.0  # 1.5 × 8
    layer, oracle, x = _linear(), _linear(), torch.ones(2, 4)
    _, stepped = _sgd_step(scaler, layer, x)
    _, oracle_stepped = _sgd_step(LossScaler(None), oracle, x)
    assert stepped and oracle_stepped
    for got, want in zip(layer.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert scaler.state_dict()["scale"] == 16.0


def test_grad_scaler_skips_overflowed_step_and_backs_off() -> None:
    scaler = LossScaler(torch.amp.GradScaler("cpu", init_scale=8.0))
    layer, x = _linear(), torch.tensor([[float("inf"), 0.0, 0.0, 0.0]])
    before = [p.detach().clone() for p in layer.parameters()]
    _, stepped = _sgd_step(scaler, layer, x)
    assert not stepped
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))
    assert scaler.state_dict()["scale"] == 4.0  # backoff factor 0.5


def test_grad_scaler_state_round_trip() -> None:
    scaler = LossScaler(torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1))
    _sgd_step(scaler, _linear(), torch.ones(2, 4))
    restored = LossScaler(torch.amp.GradScaler("cpu", init_scale=1.0))
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()
    assert restored.scale(torch.tensor(1.0)).item() == 16.0
    with pytest.raises(PrecisionError, match="checkpoint has no grad-scaler state but this run uses one"):
        restored.load_state_dict({})


@pytest.mark.cuda
def test_cuda_float16_policy_trains_with_a_grad_scaler() -> None:
    policy = PrecisionPolicy.for_device("cuda", "float16")
    scaler = policy.make_scaler(init_scale=1024.0)
    assert scaler.enabled and scaler.state_dict()["scale"] == 1024.0
    layer = _linear().cuda()
    with policy.autocast():
        out = layer(torch.ones(2, 4, device="cuda"))
    assert out.dtype == torch.float16
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler.scale(out.float().sum()).backward()
    scaler.unscale_(optimizer)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    scaler.step(optimizer)
    assert scaler.update()
    with policy.autocast():
        overflow = layer(torch.full((2, 4), 60000.0, device="cuda")) * 1e4  # inf in float16
    before = [p.detach().clone() for p in layer.parameters()]
    scaler.scale(overflow.float().sum()).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    assert not scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))


@pytest.mark.cuda
def test_cuda_bfloat16_policy_has_no_scaler() -> None:
    policy = PrecisionPolicy.for_device("cuda", "bfloat16")
    with policy.autocast():
        assert _linear().cuda()(torch.ones(2, 4, device="cuda")).dtype == torch.bfloat16
    assert not policy.make_scaler().enabled
