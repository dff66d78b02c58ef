"""Sparse outputs are marked, and what comes after keeps their zeros or says plainly that it drops them.

A model `entrenar prune` wrote (magnitude, 50%, on the tiny Llama) is trained with ``prune: {schedule: keep}``
(LoRA and full: every zero of the base is still zero in what is written and published), without it (the run
and the publish say the zeros are dropped, and the card says so), merged (a merge with a dense model drops them,
a merge of the pruned model with itself keeps them), and exported to GGUF (decoded, each type keeps them).
Zeros are compared position by position with the pruned model's.
"""

from __future__ import annotations

import io
import json
import shutil
from importlib import import_module
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from aprender.errors import PruningError
from entrenar.config import load_config
from entrenar.errors import ConfigError
from entrenar.prune.marks import SparsityMark, count_zeros, mark_of, read_mark
from entrenar.prune.run import run_prune
from entrenar.prune.spec import make_spec
from entrenar.train import run_training
from entrenar.train.pruning import MASKS_NAME

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

KEEP = {"schedule": "keep"}


@pytest.fixture(scope="module")
def pruned(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama pruned by `entrenar prune` (magnitude, 50% per layer)."""
    out = tmp_path_factory.mktemp("keep") / "pruned"
    run_prune(tiny_checkpoints["llama"], out, make_spec("magnitude", sparsity=0.5), log=lambda line: None)
    return out


def _run(config: Path, *overrides: str) -> tuple[object, str]:
    stream = io.StringIO()
    result = run_training(load_config(config, list(overrides)), console=Console(file=stream, width=400))
    return result, stream.getvalue()


def _zeros(folder: Path) -> dict[str, torch.Tensor]:
    """The zero positions of every pruned weight of a model folder, by the mark of the pruned model."""
    weights = load_file(folder / "model.safetensors")
    return {name: weights[name] == 0 for name in weights if ".layers." in name and name.endswith("_proj.weight")}


def test_the_pruned_output_is_marked(pruned: Path, tiny_checkpoints: dict[str, Path]) -> None:
    mark = read_mark(pruned)
    assert mark is not None and mark.description == "Magnitude, 50% unstructured"
    zeros = _zeros(pruned)
    assert set(mark.weights) == set(zeros)
    assert mark.zeros == sum(int(z.sum()) for z in zeros.values()) and mark.total == sum(
        z.numel() for z in zeros.values()
    )
    assert read_mark(tiny_checkpoints["llama"]) is None  # no final_model.json


def test_lora_keeps_the_base_zeros_through_publishing(pruned: Path, tmp_path: Path) -> None:
    from entrenar.publish import detect_model_folder, export_model

    result, log = _run(runs.write_config(tmp_path, pruned, prune=KEEP), "training.max_steps=3")
    assert "Keeping the base's zeros: 50.00% of the weights of 14 decoder linear layers" in log
    assert "note:" not in log
    masks = load_file(result.output_dir / MASKS_NAME)  # type: ignore[attr-defined]
    base = _zeros(pruned)
    assert masks.keys() == base.keys() and all(torch.equal(~masks[name], base[name]) for name in base)
    record = json.loads((result.output_dir / "final_model.json").read_text())  # type: ignore[attr-defined]
    assert record["prune"]["schedule"] == "keep" and record["prune"]["method"] is None
    assert record["prune"]["pruned_sparsity"] == 0.5

    lines: list[str] = []
    exported = export_model(
        detect_model_folder(result.output_dir),  # type: ignore[attr-defined]
        tmp_path / "export",
        name="kept",
        report=lines.append,
    )
    merged = _zeros(exported.folder)
    assert all(torch.equal(merged[name] & base[name], base[name]) for name in base)  # every base zero is zero
    (check,) = exported.sparsity
    assert check["kept"] and check["sparsity_after"] == 0.5 and check["what"] == "the merged model (re-masked)"
    assert check["line"] in lines and "keeps its zeros: 50.00% of the pruned layers' weights" in check["line"]


def test_full_fine_tune_keeps_the_zeros(pruned: Path, tmp_path: Path) -> None:
    result, _ = _run(
        runs.write_config(tmp_path, pruned, lora=None, prune=KEEP, optimizer={"lr": 3e-3}), "training.max_steps=3"
    )
    trained, base = _zeros(result.output_dir), _zeros(pruned)  # type: ignore[attr-defined]
    assert all(torch.equal(trained[name], base[name]) for name in base)  # adam moved every other weight
    weights, before = load_file(result.output_dir / "model.safetensors"), load_file(pruned / "model.safetensors")  # type: ignore[attr-defined]
    assert not torch.equal(weights["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    assert read_mark(result.output_dir) is not None  # type: ignore[attr-defined]  # and it is marked in turn


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("lora", "the adapter's update is dense, so the model publish merges will not keep its zeros"),
        ("full", "this run trains every weight and will fill its zeros"),
        ("qlora", "QLoRA cannot keep its zeros"),
    ],
)
def test_without_keep_the_run_says_the_zeros_go(method: str, expected: str, pruned: Path, tmp_path: Path) -> None:
    sections = {"lora": {}, "full": {"lora": None}, "qlora": {"quantize": {"bits": 4}}}[method]
    _, log = _run(runs.write_config(tmp_path, pruned, **sections), "training.max_steps=1")
    (line,) = [line for line in log.splitlines() if line.startswith("note:")]
    assert f"the base model {pruned} is pruned (Magnitude, 50% unstructured, 50.00% zero); {expected}" in line
    assert "prune: {schedule: keep}" in line


def test_lora_without_keep_publishes_dense_and_says_so(
    pruned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entrenar.publish.upload as upload
    from entrenar.publish.card import render_model_card

    cards: list[str] = []
    monkeypatch.setattr(upload, "write_model_card", lambda folder, ctx, points: cards.append(render_model_card(ctx)))
    result, _ = _run(runs.write_config(tmp_path, pruned), "training.max_steps=2")
    lines: list[str] = []
    upload.publish(result.output_dir, "me/dense", dry_run=True, report=lines.append)  # type: ignore[attr-defined]
    (line,) = [line for line in lines if "is pruned" in line]
    assert line.startswith(f"{pruned} is pruned (Magnitude, 50% unstructured); the merged model (the adapter's update")
    assert "does not keep its zeros: 0.00% of the pruned layers' weights are zero (50.00% before)" in line
    assert f"## Sparsity\n\n- {line}\n" in cards[0]


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_0"])
def test_gguf_export_counts_the_zeros_it_decodes(gguf_type: str, pruned: Path, tmp_path: Path) -> None:
    from entrenar.publish import detect_model_folder, export_model

    lines: list[str] = []
    exported = export_model(
        detect_model_folder(pruned), tmp_path, name="p", fmt="gguf", gguf_type=gguf_type, report=lines.append
    )
    (check,) = exported.sparsity
    # each of these types stores zero exactly (q4_0: (8 - 8) * d); rounding may add zeros, never remove them
    assert check["kept"] and check["sparsity_after"] >= 0.5 and check["what"] == f"the GGUF file ({gguf_type.upper()})"
    assert lines[-1] == check["line"] and check["line"].startswith("this model is pruned (Magnitude, 50% unstructured)")


def test_merges_keep_or_drop_the_zeros_and_say_which(
    pruned: Path, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from entrenar.merge.config import load_merge_config
    from entrenar.merge.run import run_merge

    def merge(name: str, models: list[Path]) -> tuple[list[str], dict[str, object]]:
        config = {
            "merge_method": "linear",
            "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        lines: list[str] = []
        out = tmp_path / name
        run_merge(load_merge_config(path), out, log=lines.append)
        return lines, json.loads((out / "final_model.json").read_text())

    lines, record = merge("dense", [pruned, tiny_checkpoints["llama"]])
    (check,) = record["sparsity_checks"]  # type: ignore[misc]
    assert not check["kept"] and check["line"] in lines and "the merged model does not keep its zeros" in check["line"]
    assert "## Sparsity" in (tmp_path / "dense" / "README.md").read_text()
    twin = tmp_path / "twin"
    shutil.copytree(pruned, twin)
    lines, record = merge("self", [pruned, twin])
    assert [c["kept"] for c in record["sparsity_checks"]] == [True, True]  # type: ignore[attr-defined]
    assert read_mark(tmp_path / "self") is None  # a merge does not claim a pruning of its own


def test_keep_on_a_dense_model_is_refused(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PruningError, match=r"has no zero weights in its decoder linear layers, so there is nothing"):
        _run(runs.write_config(tmp_path, tiny_checkpoints["llama"], prune=KEEP), "training.max_steps=1")


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"sparsity": 0.5}, "prune.sparsity: applies to prune.schedule gradual or oneshot only, not keep; remove it"),
        ({"method": "wanda"}, "prune.method: applies to prune.schedule gradual or oneshot only, not keep"),
    ],
)
def test_keep_takes_no_other_key(prune: dict[str, object], message: str, pruned: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(runs.write_config(tmp_path, pruned, prune={**KEEP, **prune}))


def test_keep_with_quantize_is_refused(pruned: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"prune: cannot be used with quantize: .* train LoRA with prune: \{sche"):
        load_config(runs.write_config(tmp_path, pruned, quantize={"bits": 4}, prune=KEEP))


def test_count_zeros_scales_to_the_weights_present_and_sees_lost_zeros() -> None:
    record = {"prune": {"modules": {"a": 0.5, "b": 0.5}, "pruned_sparsity": 0.5, "pruned_weights": 8, "method": "x"}}
    mark = mark_of(record, "m")
    assert mark == SparsityMark("m", "x, 0% unstructured", ("a.weight", "b.weight"), 4, 8)
    half = torch.tensor([0.0, 0.0, 1.0, 2.0])
    assert count_zeros(mark, "it", {"a.weight": half, "b.weight": half}.get).kept
    lost = count_zeros(mark, "it", {"a.weight": half, "b.weight": torch.tensor([0.0, 1.0, 1.0, 2.0])}.get)
    assert (lost.kept, lost.zeros, lost.expected) == (False, 3, 4)
    sliced = count_zeros(mark, "it", {"a.weight": half}.get)  # b is gone (a layer sliced away): 2 of 4 expected
    assert (sliced.kept, sliced.total, sliced.expected) == (True, 4, 2)
    assert mark_of({"prune": {"modules": {}, "pruned_sparsity": 0.5, "pruned_weights": 8}}, "m") is None
    assert mark_of({"prune": {"modules": {"a": 0.0}, "pruned_sparsity": 0.0, "pruned_weights": 8}}, "m") is None
    assert mark_of({"merge": {}}, "m") is None


def test_every_fold_of_a_kept_adapter_is_re_masked(pruned: Path, tmp_path: Path) -> None:
    from entrenar.merge.config import load_merge_config
    from entrenar.merge.run import run_merge
    from entrenar.publish import detect_model_folder, export_model

    result, _ = _run(runs.write_config(tmp_path, pruned, prune=KEEP), "training.max_steps=2")
    adapter = result.output_dir  # type: ignore[attr-defined]
    base = _zeros(pruned)
    # entrenar prune at a lower sparsity folds the adapter first: the base's zeros are still the smallest weights
    run_prune(adapter, tmp_path / "again", make_spec("magnitude", sparsity=0.25), log=lambda line: None)
    config = {"merge_method": "linear", "models": [{"model": f"{pruned}+{adapter}", "parameters": {"weight": 1.0}}]}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    run_merge(load_merge_config(tmp_path / "merge.yaml"), tmp_path / "merged", log=lambda line: None)
    for folder in (tmp_path / "again", tmp_path / "merged"):
        zeros = _zeros(folder)
        assert all(torch.equal(zeros[name], base[name]) for name in base), folder  # exactly the base's zeros

    (adapter / MASKS_NAME).unlink()
    with pytest.raises(PruningError, match=rf"final_model.json names pruning masks {MASKS_NAME} that are missing"):
        export_model(detect_model_folder(adapter), tmp_path / "export", name="x")
