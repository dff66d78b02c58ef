"""entrenar.merge.methods.sparsify: the deterministic prunings equal mergekit 0.1.5's ``sparsify`` functions; the
random ones (DARE, DELLA) match their distributions (mergekit draws from torch's global RNG, ours from the
generator it is given, so only statistics compare) and are reproducible from a seed."""

from __future__ import annotations

import math

import pytest
import torch
from mergekit import sparsify as mergekit_sparsify
from mergekit.sparsify import RescaleNorm

from entrenar.errors import MergeError
from entrenar.merge.base import ResolvedParameters, TensorGroup
from entrenar.merge.methods import METHODS
from entrenar.merge.methods.sparsify import (
    prune_della,
    prune_magnitude,
    prune_magnitude_outliers,
    prune_random,
    rescale_l1,
)

SIZE = 100_000


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    # Offset from the mask seeds: a tensor and a mask drawn from the same stream are correlated.
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 + seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within_3_sigma(kept: float, expected: float, variance_sum: float, count: int) -> bool:
    """`kept` (a fraction of `count` Bernoulli draws whose variances sum to `variance_sum`) is within 3 sigma."""
    return abs(kept - expected) <= 3 * math.sqrt(variance_sum) / count


@pytest.mark.parametrize("shape", [(7,), (6, 10), (40, 3)], ids=str)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("rescale", [False, True])
def test_magnitude_equals_mergekit(shape: tuple[int, ...], density: float, rescale: bool) -> None:
    tensor = randn(*shape)
    expected = mergekit_sparsify.magnitude(tensor, density, RescaleNorm.l1 if rescale else None)
    assert torch.allclose(prune_magnitude(tensor, density, rescale=rescale), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(7,), (6, 10), (40, 3)], ids=str)
@pytest.mark.parametrize(("density", "gamma"), [(0.2, 0.01), (0.5, 0.1), (0.9, 0.3), (0.5, 0.0), (1.0, 0.1)])
@pytest.mark.parametrize("rescale", [False, True])
def test_magnitude_outliers_equals_mergekit(
    shape: tuple[int, ...], density: float, gamma: float, rescale: bool
) -> None:
    tensor = randn(*shape)
    expected = mergekit_sparsify.magnitude_outliers(tensor, density, RescaleNorm.l1 if rescale else None, gamma)
    assert torch.allclose(
        prune_magnitude_outliers(tensor, density, gamma, rescale=rescale), expected, rtol=1e-6, atol=0
    )


def test_magnitude_outliers_drops_the_largest_then_the_smallest() -> None:
    # 10 values 1..10, density 0.5, gamma 0.2: the 2 largest (9, 10) go, then the 3 smallest (1, 2, 3)
    tensor = torch.arange(1.0, 11.0)
    assert prune_magnitude_outliers(tensor, 0.5, 0.2).tolist() == [0, 0, 0, 4, 5, 6, 7, 8, 0, 0]


def test_rescale_l1_keeps_the_l1_norm_and_leaves_tiny_tensors() -> None:
    tensor = randn(1000)
    kept = (randn(1000, seed=1) > 0).float()
    assert torch.isclose(rescale_l1(tensor, kept).abs().sum(), tensor.abs().sum(), rtol=1e-5)
    tiny = torch.full((4,), 1e-9)
    assert torch.equal(rescale_l1(tiny, torch.tensor([1.0, 0, 0, 0])), torch.tensor([1e-9, 0, 0, 0]))


@pytest.mark.parametrize("density", [0.1, 0.3, 0.7])
def test_dare_keeps_density_and_rescales_as_mergekit(density: float) -> None:
    tensor = randn(SIZE)
    ours = prune_random(tensor, density, rescale=True, generator=seeded(0))
    torch.manual_seed(0)
    theirs = mergekit_sparsify.bernoulli(tensor, density, RescaleNorm.l1)
    variance = SIZE * density * (1 - density)
    for result in (ours, theirs):
        assert within_3_sigma((result != 0).float().mean().item(), density, variance, SIZE)
        # L1 rescaling: exact L1 norm; per value about the paper's 1 / density
        assert torch.isclose(result.abs().sum(), tensor.abs().sum(), rtol=1e-5)
        kept = result != 0
        assert abs((result[kept] / tensor[kept]).mean().item() * density - 1) < 0.03
    # without rescale the kept values are unchanged
    plain = prune_random(tensor, density, generator=seeded(0))
    assert torch.equal(plain[plain != 0], tensor[plain != 0])


def test_dare_rescale_preserves_the_expected_sum() -> None:
    # a positive tensor: the L1 rescale preserves its sum exactly, as mergekit's does
    tensor = randn(SIZE).abs()
    for seed in range(3):
        assert torch.isclose(
            prune_random(tensor, 0.2, rescale=True, generator=seeded(seed)).sum(), tensor.sum(), rtol=1e-5
        )


def _della_probabilities(columns: int, density: float, epsilon: float) -> torch.Tensor:
    """Keep probability of the value of magnitude rank r (0 = smallest) in a row of `columns`."""
    return density - epsilon + 2 * epsilon * torch.arange(columns) / (columns - 1)


@pytest.mark.parametrize(("density", "epsilon"), [(0.5, 0.15), (0.3, 0.2), (0.8, 0.1)])
def test_della_keeps_density_with_rank_driven_probabilities_as_mergekit(density: float, epsilon: float) -> None:
    rows, columns = 100, 1000
    tensor = randn(rows, columns)
    ours = prune_della(tensor, density, epsilon, rescale=True, generator=seeded(0))
    torch.manual_seed(0)
    theirs = mergekit_sparsify.della_magprune(tensor, density, epsilon, RescaleNorm.l1)
    probabilities = _della_probabilities(columns, density, epsilon)
    ranks = tensor.abs().argsort(dim=1).argsort(dim=1)
    for result in (ours, theirs):
        kept = (result != 0).float()
        variance = rows * (probabilities * (1 - probabilities)).sum().item()
        assert within_3_sigma(kept.mean().item(), density, variance, rows * columns)
        # the smallest and the largest tenth of each row: mean keep probability of those ranks, within 3 sigma
        for low, high in ((0, columns // 10), (columns - columns // 10, columns)):
            band = (ranks >= low) & (ranks < high)
            p = probabilities[low:high]
            count = rows * (high - low)
            assert within_3_sigma(kept[band].mean().item(), p.mean().item(), rows * (p * (1 - p)).sum().item(), count)
        assert torch.isclose(result.abs().sum(), tensor.abs().sum(), rtol=1e-5)


def test_della_ranks_along_dim_1() -> None:
    # epsilon at its widest (density 0.5, epsilon just under 0.5): the smallest of each dim-1 fibre is almost never
    # kept and the largest almost always, whatever the tensor's rank
    tensor = randn(20, 30, 4)
    ranks = tensor.abs().argsort(dim=1).argsort(dim=1)
    kept = torch.stack([prune_della(tensor, 0.5, 0.4999, generator=seeded(seed)) != 0 for seed in range(20)]).float()
    assert kept.mean(0)[ranks == 0].mean().item() < 0.01
    assert kept.mean(0)[ranks == 29].mean().item() > 0.99


def test_della_one_dimensional_and_single_column() -> None:
    # a 1-D tensor is one row; a row of one value keeps the mean probability (mergekit divides 0 by 0 there)
    vector = prune_della(randn(SIZE), 0.4, 0.1, generator=seeded(0))
    assert within_3_sigma((vector != 0).float().mean().item(), 0.4, SIZE * (0.4 * 0.6 - 0.1**2 / 3), SIZE)
    column = prune_della(randn(SIZE, 1), 0.4, 0.1, generator=seeded(0))
    assert within_3_sigma((column != 0).float().mean().item(), 0.4, SIZE * 0.4 * 0.6, SIZE)


def test_della_rejects_epsilon_outside_the_density() -> None:
    with pytest.raises(MergeError, match=r"^w: della needs density - epsilon and density \+ epsilon in \(0, 1\)"):
        prune_della(randn(10), 0.1, 0.15, generator=seeded(0), name="w")


def test_random_pruning_needs_a_generator() -> None:
    with pytest.raises(ValueError, match=r"needs a torch\.Generator"):
        prune_random(randn(10), 0.5)


def _random_merge(name: str, seed: int, inputs: tuple[torch.Tensor, ...], density: float) -> torch.Tensor:
    method = METHODS[name]
    values = {"weight": 1.0, "density": density, "epsilon": 0.1}
    shared = {p.name: p.default for p in method.parameters if not p.per_input}
    per_input = {
        p.name: tuple(None if i == 0 else values[p.name] for i in range(len(inputs)))
        for p in method.parameters
        if p.per_input
    }
    group = TensorGroup("model.layers.0.mlp.down_proj.weight", inputs, base_index=0)
    return method.merge(group, ResolvedParameters(shared, per_input), seeded(seed))


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_merges_depend_on_the_seed_only(name: str) -> None:
    inputs = (randn(50, 40), randn(50, 40, seed=1), randn(50, 40, seed=2))
    state = torch.get_rng_state()
    first = _random_merge(name, 7, inputs, 0.4)
    assert torch.equal(first, _random_merge(name, 7, inputs, 0.4))
    assert not torch.equal(first, _random_merge(name, 8, inputs, 0.4))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


@pytest.mark.parametrize("name", ["dare_linear", "della_linear"])
def test_random_merge_of_one_model_keeps_density(name: str) -> None:
    # base 0, one model: the output is the sparsified task vector itself (weight 1, lambda 1, no normalize)
    base, model = torch.zeros(SIZE), randn(SIZE)
    result = _random_merge(name, 0, (base, model), 0.3)
    variance = SIZE * 0.3 * 0.7
    assert within_3_sigma((result != 0).float().mean().item(), 0.3, variance, SIZE)
    assert torch.isclose(result.abs().sum(), model.abs().sum(), rtol=1e-5)
