"""Smoke test of benchmarks/prune_smollm2.py on the tiny Llama, so the experiment cannot rot.

The data split, the window draw and the sparsity checks are checked as values (each check on hand-made weights
with exactly the zeros its method guarantees, and with one zero too many or one moved); one run of `main` prunes
the tiny Llama (standing in for SmolLM2) six ways, checks and scores every output, trains and folds the two LoRA
recovery runs, then reruns reusing everything and stops on a pruned file with one zero too many.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPT = "prune_smollm2.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)


def test_split_is_deterministic_and_disjoint(bench: ModuleType, tmp_path: Path) -> None:
    topics = {f"topic-{i:02d}": f"Topic {i}.\n\nIts second paragraph.\n" for i in range(12)}
    calibration, held = bench.split_topics(dict(reversed(topics.items())))  # the keys are sorted first
    assert held == ["topic-00", "topic-05", "topic-10"]
    assert calibration == [key for key in topics if key not in held]
    files = bench.write_data(tmp_path, topics)
    text = files[1].read_text()
    assert text == (
        "Topic 0.\n\nIts second paragraph.\n\nTopic 5.\n\nIts second paragraph.\n\nTopic 10.\n\nIts second paragraph.\n"
    )
    assert bench.write_data(tmp_path / "again", topics)[0].read_bytes() == files[0].read_bytes()

    from pydoc_data.topics import topics as manual

    calibration, held = bench.split_topics(manual)
    assert not set(calibration) & set(held) and set(calibration) | set(held) == set(manual)
    assert len(held) == (len(manual) + 4) // 5 and held[0] == min(manual)


def test_window_draw_is_entrenar_prunes(bench: ModuleType, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from aprender.text import Tokenizer
    from entrenar.prune.calibration import load_calibration

    folder = tiny_checkpoints["llama"]
    path = tmp_path / "calibration.txt"
    path.write_text("One paragraph of text.\n\nAnd another one, a little longer than the first.\n" * 20)
    stream = bench.token_stream(path, folder)
    drawn = load_calibration(path, Tokenizer.from_dir(folder), samples=6, seq_len=16, seed=3)
    assert drawn.tokens == stream.size
    starts = bench.window_starts(stream.size, samples=6, seq_len=16, seed=3)
    assert torch.equal(drawn.windows, torch.from_numpy(stream[starts[:, None] + range(16)]))
    # Two windows over the same 4 positions hold 8 tokens, 4 of them distinct.
    assert bench.window_coverage(np.array([2, 2]), 4, 10) == 0.5
    assert bench.window_coverage(np.array([0, 4]), 4, 10) == 1.0


def _zeroed(rows: int, cols: int, zero: torch.Tensor | None = None) -> torch.Tensor:
    """A weight with no zero by chance, zero where `zero` is True."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) + 10
    return weight if zero is None else weight.masked_fill(zero, 0)


def test_check_weight_counts_exactly(bench: ModuleType) -> None:
    wanda, magnitude = bench.Setting("wanda", 0.5), bench.Setting("magnitude", 0.5)
    dense = _zeroed(4, 8)
    half = torch.zeros(4, 8, dtype=torch.bool)
    half[:, :4] = True  # each row's first half
    assert bench.check_weight("w", _zeroed(4, 8, half), wanda, dense) == (16, 16)
    assert bench.check_weight("w", _zeroed(4, 8, half), magnitude, dense) == (16, 16)
    more = half.clone()
    more[2, 5] = True
    with pytest.raises(
        bench.SparsityError, match=r"w: 1 wrong counts of zeros in each row .* 5 zeros where 4 are pruned"
    ):
        bench.check_weight("w", _zeroed(4, 8, more), wanda, dense)
    with pytest.raises(
        bench.SparsityError, match=r"w: 1 wrong counts of zeros in each tensor; first at \(0,\): 17 zeros"
    ):
        bench.check_weight("w", _zeroed(4, 8, more), magnitude, dense)
    moved = more.clone()
    moved[3, 0] = False  # the tensor's count is right again, two rows' are not
    assert bench.check_weight("w", _zeroed(4, 8, moved), magnitude, dense) == (16, 16)
    with pytest.raises(bench.SparsityError, match=r"2 wrong counts of zeros in each row \(row\); first at \(2,\)"):
        bench.check_weight("w", _zeroed(4, 8, moved), wanda, dense)
    odd = torch.zeros(3, 5, dtype=torch.bool)
    odd.view(-1)[:7] = True  # floor(0.5 * 15)
    assert bench.check_weight("w", _zeroed(3, 5, odd), magnitude, _zeroed(3, 5)) == (7, 7)


def test_check_weight_groups_and_blocks(bench: ModuleType) -> None:
    two_of_four = torch.tensor([True, False, True, False]).repeat(2, 4)  # (2, 16)
    dense = _zeroed(2, 16)
    for method in ("magnitude", "wanda", "sparsegpt"):
        setting = bench.Setting(method, pattern="2:4")
        assert bench.check_weight("w", _zeroed(2, 16, two_of_four), setting, dense) == (16, 16)
    moved = two_of_four.clone()
    moved[1, 2], moved[1, 5] = False, True  # same count per row, groups of 1 and 3 zeros
    with pytest.raises(bench.SparsityError, match=r"2 wrong counts of zeros in each group of 4 .* \(1, 0\)"):
        bench.check_weight("w", _zeroed(2, 16, moved), bench.Setting("wanda", pattern="2:4"), dense)
    # SparseGPT, 2 x 200: the block of columns [0, 128) loses floor(0.5 * 2 * 128) = 128 weights, [128, 200) 72.
    blocks = torch.zeros(2, 200, dtype=torch.bool)
    blocks[0, :128], blocks[1, 128:200] = True, True
    sparsegpt = bench.Setting("sparsegpt", 0.5)
    assert bench.check_weight("w", _zeroed(2, 200, blocks), sparsegpt, _zeroed(2, 200)) == (200, 200)
    blocks[0, 127], blocks[0, 128] = False, True  # the layer still has 200 zeros, the blocks 127 and 73
    with pytest.raises(bench.SparsityError, match=r"2 wrong counts of zeros in each block of 128 columns"):
        bench.check_weight("w", _zeroed(2, 200, blocks), sparsegpt, _zeroed(2, 200))


def test_check_weight_allows_the_dense_models_zeros(bench: ModuleType) -> None:
    # SmolLM2 (de-quantized from Q4_1) has exact zeros: a group of 4 holding 3 prunes 2 of them and keeps one.
    three = torch.tensor([[True, True, True, False] + [False] * 4])
    dense = _zeroed(1, 8, three)
    magnitude, sparsegpt = bench.Setting("magnitude", pattern="2:4"), bench.Setting("sparsegpt", pattern="2:4")
    kept = three | torch.tensor([[False] * 4 + [True, True, False, False]])
    # one dense zero kept beyond the 4 pruned
    assert bench.check_weight("w", _zeroed(1, 8, kept), magnitude, dense) == (5, 4)
    with pytest.raises(
        bench.SparsityError, match=r"first at \(0, 0\): 3 zeros where 2 are pruned and the dense weight has 0"
    ):
        bench.check_weight("w", _zeroed(1, 8, kept), magnitude, _zeroed(1, 8))
    two = torch.tensor([[True, False, True, False] * 2])
    with pytest.raises(bench.SparsityError, match="a weight zero in the dense model is non-zero after magnitude"):
        bench.check_weight("w", _zeroed(1, 8, two), magnitude, dense)
    # SparseGPT's updates may move a dense zero (2 zeros here), never leave fewer than it pruned.
    assert bench.check_weight("w", _zeroed(1, 8, two), sparsegpt, dense) == (4, 4)
    with pytest.raises(
        bench.SparsityError, match=r"first at \(0, 0\): 1 zeros where 2 are pruned and the dense weight has 3"
    ):
        bench.check_weight("w", _zeroed(1, 8, two & ~torch.eye(1, 8, dtype=torch.bool)), sparsegpt, dense)


def test_main_prunes_checks_scores_and_recovers(
    bench: ModuleType, bench_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--threads", "1", "--samples", "8", "--seq-len", "32", "--recovery-steps", "2", "--cache", str(bench_cache)]
    bench.main(args)
    out = capsys.readouterr().out
    for setting in bench.SETTINGS:
        assert f"{setting.name}: every pruned weight has exactly the zeros {setting.method} guarantees" in out
    assert "wanda-50/folded: zero exactly where the pruned base is" in out
    root = bench_cache / "prune-smollm2"
    results = json.loads((root / "results.json").read_text())
    rows = {(row["model"], row["pattern"]): row for row in results["rows"]}
    assert len(rows) == 7 and rows["dense", ""]["pruned_sparsity"] is None
    # The tiny Llama's decoder linears are 4 of 64 x 64, 2 of 128 x 64 and 1 of 64 x 128 per layer, all with even
    # counts (per tensor, per row, per group and per block): exactly half of each is zero.
    assert all(row["pruned_sparsity"] == 0.5 for key, row in rows.items() if key != ("dense", ""))
    assert all(row["perplexity"] > 1 for row in rows.values())
    recovered, dense_lora = results["recovery"]
    assert dense_lora["model"] == "dense + LoRA" and recovered["model"] == "wanda + LoRA (keep)"
    assert (
        recovered["pruned_sparsity"] == 0.5
        and recovered["perplexity"] != rows["wanda", "50% unstructured"]["perplexity"]
    )
    assert "| wanda + LoRA (keep) | 50% unstructured |" in out

    bench.main(args)  # everything reused
    out = capsys.readouterr().out
    assert out.count("reusing ") == 1 + len(bench.SETTINGS) + 2 and "pruning:" not in out
    # One zero too many in a reused output stops the run.
    path = root / "pruned" / "wanda-50" / "model.safetensors"
    tensors = load_file(path)
    weight = tensors["model.layers.1.mlp.down_proj.weight"]
    weight[0, (weight[0] != 0).nonzero()[0]] = 0
    save_file(tensors, path)
    with pytest.raises(bench.SparsityError, match=r"model.layers.1.mlp.down_proj.weight: 1 wrong counts .* \(0,\)"):
        bench.main(args)
