"""CalibrationCollector: statistics equal a direct computation from the captured layer inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aprender.errors import PruningError
from aprender.pruning import CalibrationCollector, LayerStats


class _Net(nn.Module):
    """Two linears in sequence plus one called with a keyword argument."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 5)
        self.down = nn.Linear(5, 3)
        self.side = nn.Linear(6, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.up(x))
        return self.down(hidden).sum(-1) + self.side(input=x).sum(-1)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # Batches of different leading shapes: (batch, seq, features) and (tokens, features).
    return [torch.randn(2, 4, 6, generator=g) * torch.arange(1.0, 7.0), torch.randn(3, 6, generator=g)]


def _direct(inputs: list[torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """count, Σ x² per channel and XXᵀ, in float64, from the raw inputs."""
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs]).double()
    return x.shape[0], x.square().sum(dim=0), x.T @ x


def test_statistics_equal_direct_computation() -> None:
    torch.manual_seed(0)
    net = _Net()
    batches = _batches()
    with torch.no_grad(), CalibrationCollector(net) as collector:
        for batch in batches:
            net(batch)
    with torch.no_grad():
        hidden = [torch.relu(net.up(b)) for b in batches]  # the inputs that `down` saw
    assert set(collector.stats) == {"up", "down", "side"}
    for name, inputs in [("up", batches), ("side", batches), ("down", hidden)]:
        stats = collector.stats[name]
        count, sq_sum, hessian = _direct(inputs)
        assert stats.count == count == 11
        assert stats.sq_sum.dtype == torch.float32
        torch.testing.assert_close(stats.sq_sum.double(), sq_sum, rtol=1e-5, atol=1e-5)
        assert stats.hessian is not None
        torch.testing.assert_close(stats.hessian.double(), hessian, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_on_exit() -> None:
    net = _Net()
    with CalibrationCollector(net) as collector:
        assert all(len(m._forward_hooks) == 1 for m in (net.up, net.down, net.side))
        net(torch.ones(1, 6))
    assert all(len(m._forward_hooks) == 0 for m in (net.up, net.down, net.side))
    before = collector.stats["up"].sq_sum.clone()
    net(torch.ones(1, 6))
    assert collector.stats["up"].count == 1
    assert torch.equal(collector.stats["up"].sq_sum, before)


def test_hooks_are_removed_when_the_body_raises() -> None:
    net = _Net()
    with pytest.raises(RuntimeError, match="boom"), CalibrationCollector(net):
        raise RuntimeError("boom")
    assert len(net.up._forward_hooks) == 0


def test_module_filter_and_per_layer_hessian() -> None:
    net = _Net()
    collector = CalibrationCollector(
        net, module_filter=lambda name, _: name != "side", hessian=lambda _, linear: linear.in_features == 5
    )
    assert set(collector.stats) == {"up", "down"}
    assert collector.stats["up"].hessian is None
    assert collector.stats["down"].hessian is not None
    with collector:
        net(torch.ones(2, 6))
    assert collector.stats["up"].count == 2
    # Σ x² of two all-ones rows is 2 per channel.
    assert collector.stats["up"].sq_sum.tolist() == [2.0] * 6


def test_hessian_false_skips_every_layer_and_float64_accumulates() -> None:
    net = _Net()
    collector = CalibrationCollector(net, hessian=False, dtype=torch.float64)
    assert all(s.hessian is None for s in collector.stats.values())
    with collector:
        net(_batches()[0])
    assert collector.stats["side"].sq_sum.dtype == torch.float64
    _, sq_sum, _ = _direct(_batches()[:1])
    torch.testing.assert_close(collector.stats["side"].sq_sum, sq_sum)


def test_collector_can_be_reentered_and_keeps_accumulating() -> None:
    net = _Net()
    collector = CalibrationCollector(net)
    for _ in range(2):
        with collector:
            net(torch.ones(3, 6))
    assert collector.stats["up"].count == 6


def test_layer_stats_update_by_hand() -> None:
    stats = LayerStats(count=0, sq_sum=torch.zeros(2), hessian=torch.zeros(2, 2))
    stats.update(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    # Σ x²: [1+9, 4+1]; XXᵀ: [[1+9, 2-3], [2-3, 4+1]].
    assert stats.count == 2
    assert stats.sq_sum.tolist() == [10.0, 5.0]
    assert stats.hessian is not None
    assert stats.hessian.tolist() == [[10.0, -1.0], [-1.0, 5.0]]


def test_collector_errors() -> None:
    net = _Net()
    with pytest.raises(PruningError, match=r"no nn\.Linear module matched"):
        CalibrationCollector(net, module_filter=lambda name, _: name == "missing")
    with pytest.raises(PruningError, match=r"no nn\.Linear module matched"):
        CalibrationCollector(nn.ReLU())
    with pytest.raises(PruningError, match=r"dtype=torch\.float16"):
        CalibrationCollector(net, dtype=torch.float16)
    collector = CalibrationCollector(net)
    with collector, pytest.raises(PruningError, match="already active"), collector:
        pass
