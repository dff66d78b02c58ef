"""`prune_model` on the tiny models: exact sparsity, exact N:M groups, and WANDA and SparseGPT equal to an
independent straightforward implementation of the published algorithms.

The oracle (`_reference_prune`) is written from the papers and the reference code's structure
(https://github.com/locuslab/wanda ``prune_wanda``; https://github.com/IST-DASLab/sparsegpt ``llama_sequential``
and ``SparseGPT.fasterprune``), on transformers' own decoder layers in float64: the calibration windows go
through the embedding; for each decoder layer, forward hooks keep every linear layer's inputs, each linear
layer is pruned from them (WANDA: ``|W|·‖X_j‖₂`` compared per output row, or N:M groups by top-k; SparseGPT:
``H = 2XᵀX/N``, Cholesky of ``H⁻¹``, column-by-column OBS updates with the mask chosen per block or group),
then the pruned layer's outputs feed the next layer. Ours runs our `CausalLM` in float32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from aprender.errors import PruningError
from aprender.text import Tokenizer
from entrenar.models import CausalLM, from_pretrained
from entrenar.prune.calibration import load_calibration
from entrenar.prune.oneshot import prune_model
from entrenar.prune.spec import PATTERNS, make_spec

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.txt"
SAMPLES, SEQ_LEN = 8, 32
WEIGHT_TOLERANCE = 1e-5


def _windows(folder: Path) -> Tensor:
    return load_calibration(CORPUS, Tokenizer.from_dir(folder), samples=SAMPLES, seq_len=SEQ_LEN, seed=0).windows


def _ours(folder: Path, method: str, **amount: object) -> tuple[CausalLM, dict[str, Tensor]]:
    model = from_pretrained(folder, dtype="float32")
    windows = _windows(folder) if method != "magnitude" else None
    prune_model(model, make_spec(method, **amount), windows)  # type: ignore[arg-type]
    weights = {name: p.detach().double() for name, p in model.named_parameters() if ".layers." in name}
    return model, {name: w for name, w in weights.items() if w.dim() == 2}


# ------------------------------------------------------------------------------------------------ oracle


def _wanda_mask(weight: Tensor, x: Tensor, sparsity: float | None, nm: tuple[int, int] | None) -> Tensor:
    """True where pruned: |W|·‖X_j‖₂, the lowest int(in·s) of each row, or the lowest M−N of each group."""
    metric = weight.abs() * x.norm(dim=0)[None, :]
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        for i in range(0, weight.shape[1], m):
            lowest = torch.topk(metric[:, i : i + m], m - n, dim=1, largest=False)[1]
            pruned.scatter_(1, i + lowest, True)
        return pruned
    assert sparsity is not None
    order = torch.sort(metric, dim=-1, stable=True)[1]
    return pruned.scatter_(1, order[:, : int(weight.shape[1] * sparsity)], True)


def _sparsegpt(
    weight: Tensor, x: Tensor, sparsity: float | None, nm: tuple[int, int] | None, blocksize: int = 128
) -> Tensor:
    """SparseGPT's algorithm 1 with lazy batches, as ``fasterprune`` (percdamp 0.01); the block mask prunes exactly
    int(numel·s) (the reference's threshold ``<=`` prunes one more on distinct scores)."""
    w = weight.clone()
    h = 2 * x.T @ x / x.shape[0]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += 0.01 * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, w.shape[1], blocksize):
        i2 = min(i1 + blocksize, w.shape[1])
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            assert sparsity is not None
            tmp = (w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2).flatten()
            mask1.view(-1)[torch.sort(tmp, stable=True)[1][: int(tmp.numel() * sparsity)]] = True
        for i in range(i2 - i1):
            col, d = w1[:, i], hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                tmp = w1[:, i : i + m] ** 2 / torch.diag(hinv1)[i : i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def _reference_prune(
    folder: Path, windows: Tensor, method: str, sparsity: float | None, nm: tuple[int, int] | None, *, feed_pruned: bool
) -> dict[str, Tensor]:
    """Prune the transformers model (float64) layer by layer; `feed_pruned=False` feeds the dense outputs instead."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="sdpa")
    positions = torch.arange(windows.shape[1])[None]
    with torch.no_grad():
        hidden = model.model.embed_tokens(windows)
        rope = model.model.rotary_emb(hidden, positions)

        def run(layer: nn.Module, inputs: Tensor) -> Tensor:
            return torch.cat([layer(row[None], position_embeddings=rope, position_ids=positions) for row in inputs])

        for layer in model.model.layers:
            linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
            seen: dict[str, list[Tensor]] = {name: [] for name in linears}
            handles = [
                m.register_forward_hook(lambda _m, args, _out, kept=seen[name]: kept.append(args[0].flatten(0, -2)))
                for name, m in linears.items()
            ]
            dense_out = run(layer, hidden)
            for handle in handles:
                handle.remove()
            for name, linear in linears.items():
                x = torch.cat(seen[name])
                if method == "wanda":
                    linear.weight[_wanda_mask(linear.weight, x, sparsity, nm)] = 0
                else:
                    linear.weight.copy_(_sparsegpt(linear.weight, x, sparsity, nm))
            hidden = run(layer, hidden) if feed_pruned else dense_out
    return {name: p.detach() for name, p in model.named_parameters() if ".layers." in name and p.dim() == 2}


# ------------------------------------------------------------------------------------------------- tests

CASES = [  # (family, method, sparsity, pattern): tied and untied heads, q/k/v biases, both patterns
    ("llama", "wanda", 0.5, None),
    ("qwen2", "wanda", None, "2:4"),
    ("qwen2", "sparsegpt", 0.5, None),
    ("llama", "sparsegpt", None, "4:8"),
]


@pytest.mark.parametrize(("family", "method", "sparsity", "pattern"), CASES)
def test_equals_the_reference_algorithms(
    tiny_checkpoints: dict[str, Path], family: str, method: str, sparsity: float | None, pattern: str | None
) -> None:
    folder = tiny_checkpoints[family]
    _, ours = _ours(folder, method, sparsity=sparsity, pattern=pattern)
    nm = None if pattern is None else PATTERNS[pattern]
    theirs = _reference_prune(folder, _windows(folder), method, sparsity, nm, feed_pruned=True)
    assert ours.keys() == theirs.keys() and len(ours) == 14
    for name in ours:
        assert torch.equal(ours[name] == 0, theirs[name] == 0), name  # the masks
        assert float((ours[name] - theirs[name]).abs().max()) <= WEIGHT_TOLERANCE, name


def test_layer_two_is_calibrated_on_the_pruned_layer_one(tiny_checkpoints: dict[str, Path]) -> None:
    # The oracle fed with the dense layer 1's outputs gives other masks in layer 2 (so the test above sees the feeding).
    folder = tiny_checkpoints["llama"]
    _, ours = _ours(folder, "wanda", sparsity=0.5)
    dense_fed = _reference_prune(folder, _windows(folder), "wanda", 0.5, None, feed_pruned=False)
    first = [name for name in ours if ".layers.0." in name]
    second = [name for name in ours if ".layers.1." in name]
    assert all(torch.equal(ours[name] == 0, dense_fed[name] == 0) for name in first)
    assert any(not torch.equal(ours[name] == 0, dense_fed[name] == 0) for name in second)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_every_layer_has_exactly_the_sparsity(tiny_checkpoints: dict[str, Path], method: str, sparsity: float) -> None:
    # Widths are 64 and 128, so 0.5 and 0.3 of a row (WANDA) and of a layer (magnitude, SparseGPT) are whole
    # counts up to the floor: WANDA prunes floor(0.3·in) per row, the others floor(0.3·numel) per layer.
    folder = tiny_checkpoints["qwen2"]
    model = from_pretrained(folder, dtype="float32")
    report = prune_model(model, make_spec(method, sparsity=sparsity), _windows(folder))
    assert len(report.modules) == 14
    for item in report.modules:
        weight = model.get_parameter(f"{item.module}.weight")
        rows, cols = weight.shape
        expected = rows * int(sparsity * cols + 1e-9) if method == "wanda" else int(sparsity * rows * cols + 1e-9)
        assert item.zeros == int((weight == 0).sum()) == expected, item.module
        if method == "wanda":
            assert ((weight == 0).sum(dim=1) == int(sparsity * cols + 1e-9)).all()
    assert report.sparsity == pytest.approx(sparsity, abs=0.01)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_group_has_exactly_its_zeros(tiny_checkpoints: dict[str, Path], method: str, pattern: str) -> None:
    n, m = PATTERNS[pattern]
    folder = tiny_checkpoints["llama"]
    model = from_pretrained(folder, dtype="float32")
    report = prune_model(model, make_spec(method, pattern=pattern), _windows(folder))
    for item in report.modules:
        weight = model.get_parameter(f"{item.module}.weight")
        zeros_per_group = (weight.reshape(weight.shape[0], -1, m) == 0).sum(dim=-1)
        assert (zeros_per_group == m - n).all(), item.module
        assert item.sparsity == 0.5
    assert [layer for layer in sorted(report.by_layer())] == [0, 1]


def test_magnitude_prunes_the_smallest_weights_of_each_layer(tiny_checkpoints: dict[str, Path]) -> None:
    folder = tiny_checkpoints["llama"]
    dense = {name: p.detach().clone() for name, p in from_pretrained(folder, dtype="float32").named_parameters()}
    _, ours = _ours(folder, "magnitude", sparsity=0.5)
    for name, weight in ours.items():
        magnitudes = dense[name].abs()
        assert float(magnitudes[weight == 0].max()) <= float(magnitudes[weight != 0].min())
        assert torch.equal(weight[weight != 0].float(), dense[name][weight != 0])  # kept weights unchanged


def test_skip_keeps_layers_dense(tiny_checkpoints: dict[str, Path]) -> None:
    folder = tiny_checkpoints["llama"]
    model = from_pretrained(folder, dtype="float32")
    dense = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    spec = make_spec("wanda", sparsity=0.5, skip=["*.down_proj", "model.layers.1.*"])
    lines: list[str] = []
    report = prune_model(model, spec, _windows(folder), report=lines.append)
    assert report.skipped == ("model.layers.0.mlp.down_proj", *(f"model.layers.1.{n}" for n in _LINEARS))
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, dense)
    assert [item.module for item in report.modules] == [f"model.layers.0.{n}" for n in _LINEARS[:-1]]
    assert lines == ["layer 1/2: 50.00% of 28672 weights zero (6 linears)", "layer 2/2: every linear layer skipped"]


_LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def test_refusals(tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model = from_pretrained(tiny_checkpoints["llama"], dtype="float32")
    with pytest.raises(PruningError, match="wanda needs calibration data; pass --calibration"):
        prune_model(model, make_spec("wanda", sparsity=0.5))
    with pytest.raises(PruningError, match="--skip 'lm_head' matches no linear layer"):
        prune_model(model, make_spec("magnitude", sparsity=0.5, skip=["lm_head"]))
    monkeypatch.setitem(PATTERNS, "1:3", (1, 3))
    with pytest.raises(PruningError, match=r"model.layers.0.self_attn.q_proj has 64 inputs, not a multiple of 3"):
        prune_model(model, make_spec("magnitude", pattern="1:3"))
    assert int((model.model.layers[0].self_attn.q_proj.weight == 0).sum()) == 0  # refused before pruning
