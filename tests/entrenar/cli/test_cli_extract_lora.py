"""``entrenar extract-lora``: writes a PEFT adapter folder and says what it did; user mistakes are one
``error:`` line, exit code 2, and nothing written."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from aprender.format.safetensors import load, save
from entrenar.lora import read_adapter_config
from entrenar.publish.detect import detect_model_folder
from fixtures.cli import run_cli
from fixtures.finetuned import finetuned_copy

UP = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture
def models(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> tuple[Path, Path]:
    """(base, fine-tuned): the tiny Llama and a copy whose first up_proj changed by a rank-1 step."""
    base = tiny_checkpoints["llama"]
    return base, finetuned_copy(base, tmp_path / "ft", {UP: torch.full((128, 64), 0.01)})


def test_extracts_an_adapter_and_reports_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: tuple[Path, Path]
) -> None:
    base, finetuned = models
    out = tmp_path / "adapter"
    code, stdout, stderr = run_cli(
        capsys, "extract-lora", "--model", str(finetuned), "--base", str(base), "--energy", "0.99", "-o", str(out)
    )
    assert (code, stderr) == (0, "")
    # A constant change is rank 1: its one singular value holds all the energy (the rest is float32 noise).
    lines = stdout.splitlines()
    first = re.fullmatch(r"extracted 1 layers \(rank 1\); largest relative error (\S+) \((.+)\)", lines[0])
    assert first is not None and float(first[1]) < 1e-5 and first[2] == "model.layers.0.mlp.up_proj"
    assert lines[1] == "13 linear layers are unchanged and get no adapter"
    assert lines[2].startswith(f"wrote {out}: adapter_config.json, adapter_model.safetensors, ")
    assert read_adapter_config(out).lora.target_modules == ("model.layers.0.mlp.up_proj",)
    folder = detect_model_folder(out)
    assert (folder.kind, folder.techniques, folder.base_model) == ("adapter", ("extract-lora",), str(base))


def test_allow_lossy_drops_what_lora_cannot_express(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    base = tiny_checkpoints["llama"]
    deltas = {UP: torch.full((128, 64), 0.01), "model.norm.weight": torch.full((64,), 0.5)}
    finetuned = finetuned_copy(base, tmp_path / "ft", deltas)
    args = ["extract-lora", "--model", str(finetuned), "--base", str(base), "--rank", "4", "-o", str(tmp_path / "a")]
    code, _, stderr = run_cli(capsys, *args)
    assert code == 2 and "LoRA cannot express them" in stderr and not (tmp_path / "a").exists()
    code, _, stderr = run_cli(capsys, *args, "--allow-lossy")
    # ||0.5 * ones(64)|| / ||norm weight|| is the relative change the message reports.
    expected = (deltas["model.norm.weight"].norm() / load(base)["model.norm.weight"].norm()).item()
    assert code == 0
    assert (
        stderr
        == f"dropped 1 changes LoRA cannot express (largest relative change {expected:.3g} in model.norm.weight)\n"
    )


def _transposed_k(folder: Path) -> None:
    tensors = load(folder)
    name = "model.layers.0.self_attn.k_proj.weight"
    tensors[name] = tensors[name].T.contiguous()
    save(tensors, folder)


def _missing_tensor(folder: Path) -> None:
    tensors = load(folder)
    del tensors["model.layers.1.mlp.gate_proj.weight"]
    save(tensors, folder)


def _other_eps(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))


def _norm_changed(folder: Path) -> None:
    tensors = load(folder)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.1
    save(tensors, folder)


# (name, what to do to the fine-tuned folder, extra arguments, the one error line expected)
CASES: list[tuple[str, Callable[[Path], None] | None, list[str], str]] = [
    ("no rank", None, [], r"pass exactly one of a rank \(--rank\) or an energy threshold \(--energy\)"),
    ("both", None, ["--rank", "2", "--energy", "0.9"], "pass exactly one of"),
    ("rank 0", None, ["--rank", "0"], "rank 0 must be an integer >= 1"),
    ("energy 1.5", None, ["--energy", "1.5"], r"energy 1\.5 must lie in \(0, 1\]"),
    (
        "device",
        None,
        ["--rank", "2", "--device", "gpu0"],
        r"device 'gpu0' is not a torch device; use cpu, cuda or cuda:N",
    ),
    (
        "transposed",
        _transposed_k,
        ["--rank", "2"],
        r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[64, 32\] but the base's is \[32, 64\]",
    ),
    (
        "missing tensor",
        _missing_tensor,
        ["--rank", "2"],
        r"'model\.layers\.1\.mlp\.gate_proj\.weight' is only in the base",
    ),
    ("architecture", _other_eps, ["--rank", "2"], r"config\.json rms_norm_eps is 1e-06 but the base .* has 1e-05"),
    ("lossy", _norm_changed, ["--rank", "2"], r"1 tensor\(s\) outside linear layers .* model\.norm\.weight"),
]


@pytest.mark.parametrize(("change", "extra", "pattern"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_and_write_nothing(
    change: Callable[[Path], None] | None,
    extra: list[str],
    pattern: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    models: tuple[Path, Path],
) -> None:
    base, finetuned = models
    if change is not None:
        change(finetuned)
    out = tmp_path / "adapter"
    code, stdout, stderr = run_cli(
        capsys, "extract-lora", "--model", str(finetuned), "--base", str(base), "-o", str(out), *extra
    )
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert re.search(pattern, stderr), stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("missing model", r"nope: no such folder, and not a Hub repo id"),
        ("same model", r"no linear layer differs from the base"),
        ("output not empty", r"adapter: exists and is not an empty folder; pass a new output folder with -o"),
    ],
)
def test_folder_errors(
    setup: str, pattern: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, models: tuple[Path, Path]
) -> None:
    base, finetuned = models
    out = tmp_path / "adapter"
    model = {"missing model": tmp_path / "nope", "same model": base}.get(setup, finetuned)
    if setup == "output not empty":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    code, _, stderr = run_cli(
        capsys, "extract-lora", "--model", str(model), "--base", str(base), "-o", str(out), "--rank", "2"
    )
    assert code == 2 and stderr.count("\n") == 1 and re.search(pattern, stderr), stderr
    if setup == "output not empty":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()
