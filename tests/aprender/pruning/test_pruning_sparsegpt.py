"""SparseGPT against a naive sequential-OBS oracle, exact counts, and the reconstruction ranking.

The oracle follows the paper's equations literally: for every column q it inverts the Hessian of
the columns not yet processed, ``H_F⁻¹`` with F = [q, in), prunes where the mask says so and
applies ``δ_F = −(w_q − q̂) / [H_F⁻¹]_qq · (H_F⁻¹)_{q,:}`` (arXiv 2301.00774, eq. 3), picking the
mask with the score ``w²/[H_F⁻¹]_qq`` on the weights updated so far. It uses neither the Cholesky
trick nor lazy batching, which the module under test does.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from aprender.errors import PruningError
from aprender.pruning import (
    CalibrationCollector,
    magnitude_scores,
    nm_mask,
    pruned_count,
    sparsegpt_prune,
    unstructured_mask,
    wanda_scores,
)


def _oracle_keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning the k lowest scores, lower row-major index first among ties."""
    values = scores.flatten().tolist()
    pruned = set(sorted(range(len(values)), key=lambda i: (values[i], i))[:k])
    return torch.tensor([i not in pruned for i in range(len(values))]).reshape(scores.shape)


def _naive_sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None,
    nm: tuple[int, int] | None,
    blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    w, h = weight.double().clone(), hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += percdamp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    rows, cols = w.shape
    hinv_rows = [torch.linalg.inv(h[i:, i:])[0] for i in range(cols)]  # row q of H_F⁻¹, F = [q, cols)
    c = torch.stack([r[0] for r in hinv_rows])  # [H_F⁻¹]_qq
    keep = torch.ones(rows, cols, dtype=torch.bool)
    for i in range(cols):
        if sparsity is not None and i % blocksize == 0:
            i2 = min(i + blocksize, cols)
            k = pruned_count(sparsity, rows * i2) - pruned_count(sparsity, rows * i)
            keep[:, i:i2] = _oracle_keep(w[:, i:i2] ** 2 / c[i:i2], k)
        if nm is not None and i % nm[1] == 0:
            group = slice(i, i + nm[1])
            for r in range(rows):
                keep[r, group] = _oracle_keep(w[r, group] ** 2 / c[group], nm[1] - nm[0])
        q = torch.where(keep[:, i], w[:, i], 0.0)
        w[:, i:] -= ((w[:, i] - q) / c[i])[:, None] * hinv_rows[i][None, :]
        w[:, i] = q
    return w, keep


def _layer(rows: int, cols: int, samples: int, seed: int, dead: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 weight (rows, cols) and XXᵀ of correlated inputs with unequal channel scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, cols, generator=g, dtype=torch.float64)
    x = x @ torch.randn(cols, cols, generator=g, dtype=torch.float64) * torch.rand(cols, generator=g).double().add(0.1)
    if dead is not None:
        x[:, dead] = 0.0
    return torch.randn(rows, cols, generator=g, dtype=torch.float64), x.T @ x


@pytest.mark.parametrize(
    ("sparsity", "nm", "blocksize", "percdamp", "dead"),
    [
        (0.5, None, 4, 0.01, None),
        (0.3, None, 64, 0.1, None),  # one block wider than the layer
        (0.6, None, 5, 0.01, 7),  # a partial last block and a dead input channel
        (None, (2, 4), 8, 0.01, None),
        (None, (1, 4), 4, 0.05, 2),
        (None, (4, 8), 16, 0.01, None),
    ],
)
def test_matches_naive_sequential_obs(
    sparsity: float | None, nm: tuple[int, int] | None, blocksize: int, percdamp: float, dead: int | None
) -> None:
    weight, hessian = _layer(6, 16, 40, seed=1, dead=dead)
    result = sparsegpt_prune(weight, hessian, sparsity, nm=nm, blocksize=blocksize, percdamp=percdamp)
    expected_w, expected_keep = _naive_sparsegpt(weight, hessian, sparsity, nm, blocksize, percdamp)
    assert torch.equal(result.mask, expected_keep)
    torch.testing.assert_close(result.weight, expected_w, rtol=1e-9, atol=1e-9)


def test_blocksize_changes_the_unstructured_mask() -> None:
    # Masks are chosen per block, so 4-column blocks and one 16-column block need not agree; the
    # oracle test above shows each is right. Here: they do differ on this layer, and both are exact.
    weight, hessian = _layer(6, 16, 40, seed=3)
    a = sparsegpt_prune(weight, hessian, 0.5, blocksize=4)
    b = sparsegpt_prune(weight, hessian, 0.5, blocksize=16)
    assert not torch.equal(a.mask, b.mask)
    assert int((~a.mask).sum()) == int((~b.mask).sum()) == 48


def test_nm_result_does_not_depend_on_blocksize() -> None:
    # N:M groups never cross blocks, so lazy batching must reproduce the column-by-column result.
    weight, hessian = _layer(5, 24, 60, seed=4)
    a = sparsegpt_prune(weight, hessian, nm=(2, 4), blocksize=4)
    b = sparsegpt_prune(weight, hessian, nm=(2, 4), blocksize=128)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-10, atol=1e-10)


def test_dead_input_is_zeroed_without_nan() -> None:
    weight, hessian = _layer(4, 8, 30, seed=5, dead=3)
    assert hessian[3, 3] == 0
    result = sparsegpt_prune(weight.float(), hessian.float(), 0.25, blocksize=4)
    assert torch.isfinite(result.weight).all()
    assert torch.equal(result.weight[:, 3], torch.zeros(4))
    assert int((~result.mask).sum()) == 8


def test_zero_sparsity_leaves_weight_unchanged() -> None:
    weight, hessian = _layer(4, 8, 30, seed=6)
    result = sparsegpt_prune(weight, hessian, 0.0)
    assert result.mask.all()
    assert torch.equal(result.weight, weight)


def test_hessian_scale_does_not_matter() -> None:
    # H = 2XXᵀ/N (the reference code's scaling) and XXᵀ give the same pruning.
    weight, hessian = _layer(4, 12, 30, seed=7)
    a = sparsegpt_prune(weight, hessian, 0.5, blocksize=4)
    b = sparsegpt_prune(weight, 2 * hessian / 30, 0.5, blocksize=4)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.weight, b.weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_output_keeps_weight_dtype(dtype: torch.dtype) -> None:
    weight, hessian = _layer(4, 8, 30, seed=8)
    result = sparsegpt_prune(weight.to(dtype), hessian.float(), 0.5)
    assert result.weight.dtype == dtype
    assert torch.equal(result.weight[~result.mask], torch.zeros(16, dtype=dtype))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 24),
    blocksize=st.integers(1, 10),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_unstructured_count_is_exact(rows: int, cols: int, blocksize: int, sparsity: float, seed: int) -> None:
    weight, hessian = _layer(rows, cols, cols + 5, seed)
    result = sparsegpt_prune(weight.float(), hessian.float(), sparsity, blocksize=blocksize)
    assert int((~result.mask).sum()) == pruned_count(sparsity, rows * cols)
    assert torch.equal(result.weight[~result.mask], torch.zeros(int((~result.mask).sum())))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 5),
    nm=st.sampled_from([(2, 4), (4, 8), (1, 2), (3, 4), (1, 1), (3, 5)]),
    blocks_per=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_nm_groups_are_exact(rows: int, groups: int, nm: tuple[int, int], blocks_per: int, seed: int) -> None:
    n, m = nm
    weight, hessian = _layer(rows, groups * m, groups * m + 5, seed)
    result = sparsegpt_prune(weight.float(), hessian.float(), nm=nm, blocksize=blocks_per * m)
    assert torch.equal(result.mask.reshape(rows, groups, m).sum(-1), torch.full((rows, groups), n))
    assert torch.equal(result.weight[~result.mask], torch.zeros(int((~result.mask).sum())))


def test_reconstruction_error_ranks_sparsegpt_wanda_magnitude() -> None:
    g = torch.Generator().manual_seed(0)
    # Correlated, non-isotropic inputs: X = Z A, with the channels rescaled by log-normal factors.
    x = torch.randn(2048, 256, generator=g) @ (torch.randn(256, 256, generator=g) / 16)
    x = x * torch.exp(torch.randn(256, generator=g))
    layer = nn.Linear(256, 128)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(128, 256, generator=g))
    with torch.no_grad(), CalibrationCollector(layer) as collector:
        layer(x)
    stats = collector.stats[""]
    assert stats.hessian is not None
    w = layer.weight.detach()

    def error(pruned: torch.Tensor) -> float:
        return float((x @ (w - pruned).T).norm() / (x @ w.T).norm())

    magnitude = error(w * unstructured_mask(magnitude_scores(w), 0.5))
    wanda = error(w * unstructured_mask(wanda_scores(w, stats.sq_sum), 0.5, scope="row"))
    sparse = sparsegpt_prune(w, stats.hessian, 0.5)
    sparsegpt = error(sparse.weight)
    assert int((~sparse.mask).sum()) == 128 * 128
    numbers = f"relative ‖WX−ŴX‖: sparsegpt={sparsegpt:.4f} wanda={wanda:.4f} magnitude={magnitude:.4f}"
    assert sparsegpt < 0.95 * wanda < 0.95 * magnitude, numbers

    wanda_24 = error(w * nm_mask(wanda_scores(w, stats.sq_sum), 2, 4))
    sparsegpt_24 = error(sparsegpt_prune(w, stats.hessian, nm=(2, 4)).weight)
    numbers_24 = f"2:4 relative ‖WX−ŴX‖: sparsegpt={sparsegpt_24:.4f} wanda={wanda_24:.4f}"
    assert sparsegpt_24 < 0.95 * wanda_24, numbers_24


def test_singular_hessian_without_damping_is_an_error() -> None:
    weight, hessian = _layer(4, 8, 3, seed=9)  # 3 samples: rank 3 < 8, no zero diagonal
    assert (hessian.diagonal() > 0).all()
    with pytest.raises(PruningError, match="not positive definite; raise percdamp"):
        sparsegpt_prune(weight, hessian, 0.5, percdamp=0.0)
    assert torch.isfinite(sparsegpt_prune(weight, hessian, 0.5, percdamp=0.01).weight).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hessian": torch.eye(7)}, r"hessian has shape \(7, 7\) but weight has in_features=8"),
        ({"weight": torch.ones(8)}, "2-D"),
        ({"weight": torch.full((4, 8), float("nan"))}, "weight or hessian contains NaN or inf"),
        ({"hessian": torch.eye(8) * float("inf")}, "weight or hessian contains NaN or inf"),
        ({"sparsity": None}, "exactly one of sparsity"),
        ({"nm": (2, 4)}, "exactly one of sparsity"),
        ({"sparsity": 1.0}, r"sparsity=1\.0 is outside"),
        ({"blocksize": 0}, "blocksize=0 must be a positive integer"),
        ({"blocksize": True}, "blocksize=True must be a positive integer"),
        ({"sparsity": None, "nm": (2, 4), "blocksize": 6}, "blocksize=6 is not a multiple of M=4"),
        ({"sparsity": None, "nm": (5, 4)}, "need 1 <= N <= M"),
        ({"sparsity": None, "nm": (2, 3)}, "M=3 does not divide in_features=8"),
        ({"percdamp": -0.1}, "percdamp=-0.1 must be >= 0"),
        ({"percdamp": float("nan")}, "percdamp=nan must be >= 0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"weight": torch.ones(4, 8), "hessian": torch.eye(8), "sparsity": 0.5}
    arguments.update(kwargs)
    with pytest.raises(PruningError, match=message):
        sparsegpt_prune(**arguments)  # type: ignore[arg-type]


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    # float64 on both devices, so masks agree exactly and weights to rounding.
    weight, hessian = _layer(16, 64, 100, seed=10, dead=5)
    for kwargs in ({"sparsity": 0.5, "blocksize": 16}, {"nm": (2, 4), "blocksize": 32}):
        cpu = sparsegpt_prune(weight, hessian, **kwargs)
        gpu = sparsegpt_prune(weight.cuda(), hessian, **kwargs)
        assert gpu.weight.device.type == "cuda"
        assert gpu.mask.device.type == "cuda"
        assert torch.equal(gpu.mask.cpu(), cpu.mask)
        torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, rtol=1e-8, atol=1e-8)
