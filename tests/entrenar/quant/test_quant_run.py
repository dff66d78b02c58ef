"""``entrenar quantize`` end to end on the tiny models: the file holds what `export_gguf` writes for the model (with
the importance matrix `collect_imatrix` gives for the calibration windows), adapters are folded first, the quality
report compares the dequantized file with the original, and bad requests are one line, exit 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from aprender.format.gguf import read_gguf
from aprender.format.gguf_export import export_gguf
from aprender.format.safetensors import load
from aprender.text import Tokenizer
from entrenar.models import from_pretrained
from entrenar.prune.calibration import load_calibration
from entrenar.quant.imatrix import collect_imatrix
from fixtures.cli import run_cli
from fixtures.finetuned import finetuned_copy

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.txt"
CALIBRATION = ["--calibration", str(CORPUS), "--samples", "6", "--seq-len", "32", "--seed", "3"]


def _quantize(capsys: pytest.CaptureFixture[str], model: str, out: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "quantize", model, "-o", str(out), *args)


def test_the_file_and_the_report(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_checkpoints["qwen2"]
    code, stdout, stderr = _quantize(
        capsys, str(model), tmp_path / "q8.gguf", "--gguf", "Q8_0", "--eval-data", str(CORPUS)
    )
    assert code == 0, stderr
    assert (tmp_path / "q8.gguf").read_bytes() == export_gguf(
        model, tmp_path / "ref.gguf", gguf_type="q8_0", name="q8"
    ).read_bytes()
    (line,) = [line for line in stdout.splitlines() if line.startswith("Q8_0 against the original on")]
    assert "perplexity" in line and "mean KL" in line and "same top token" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.gguf", "ref.gguf"]  # no work folder left


def test_calibration_gives_the_importance_matrix(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_checkpoints["llama"]
    code, stdout, stderr = _quantize(capsys, str(model), tmp_path / "q5.gguf", "--gguf", "q5_0", *CALIBRATION)
    assert code == 0, stderr
    assert "calibration: 6 windows of 32 tokens" in stdout and "importance matrix: 14 weights from 192 tokens" in stdout
    windows = load_calibration(CORPUS, Tokenizer.from_dir(model), samples=6, seq_len=32, seed=3).windows
    imatrix = collect_imatrix(from_pretrained(model, dtype="float32").eval(), windows)
    expected = export_gguf(model, tmp_path / "ref.gguf", gguf_type="q5_0", name="q5", imatrix=imatrix)
    assert (tmp_path / "q5.gguf").read_bytes() == expected.read_bytes()
    plain = export_gguf(model, tmp_path / "plain.gguf", gguf_type="q5_0", name="q5")
    assert plain.read_bytes() != expected.read_bytes()  # the weighting changed some blocks


def test_an_adapter_output_is_folded_first(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from entrenar.lora.extract import extract_lora
    from entrenar.lora.merge import merge_adapter_into_checkpoint

    base = tiny_checkpoints["llama"]
    generator = torch.Generator().manual_seed(7)
    deltas = {n: 0.05 * torch.randn(t.shape, generator=generator) for n, t in load(base).items() if "proj" in n}
    adapter = extract_lora(finetuned_copy(base, tmp_path / "ft", deltas), base, tmp_path / "adapter", rank=4).out_dir
    folded = tmp_path / "folded"
    merge_adapter_into_checkpoint(base, adapter, folded)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, folded)
    assert _quantize(capsys, str(adapter), tmp_path / "a.gguf", "--gguf", "f16")[0] == 0
    assert _quantize(capsys, str(folded), tmp_path / "b.gguf", "--gguf", "f16")[0] == 0
    with read_gguf(tmp_path / "a.gguf") as a, read_gguf(tmp_path / "b.gguf") as b:
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.load_tensor(name), b.load_tensor(name)) for name in a.tensors)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gguf", "q4_k_x"], "GGUF type 'q4_k_x' is not supported; use one of f32, f16"),
        (
            ["--gguf", "q2_k_s"],
            "GGUF type Q2_K_S needs an importance matrix (as llama-quantize does); pass --calibration",
        ),
        (["--gguf", "q8_0", "--calibration", "missing.txt"], "missing.txt"),
        (["--gguf", "q8_0", "--eval-data", "missing.txt"], "missing.txt"),
        (["--gguf", "q8_0", "--calibration", "SHORT"], "fewer than --seq-len 512"),
        (["--gguf", "q8_0", "--calibration", "SHORT", "--samples", "0"], "--samples 0 must be an integer >= 1"),
    ],
)
def test_bad_requests_are_one_line_exit_2_nothing_written(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short.txt").write_text("Too short to calibrate on.\n", encoding="utf-8")
    args = [str(tmp_path / "short.txt") if arg == "SHORT" else arg for arg in args]
    before = sorted(tmp_path.iterdir())
    code, _, stderr = _quantize(capsys, str(tiny_checkpoints["llama"]), tmp_path / "out.gguf", *args)
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert sorted(tmp_path.iterdir()) == before


def test_the_output_must_be_a_gguf_file(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = _quantize(capsys, str(tiny_checkpoints["llama"]), tmp_path / "out", "--gguf", "q8_0")
    assert code == 2 and "-o must name a .gguf file, e.g. -o model-Q8_0.gguf" in stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("gguf_type", "verdict"), [("q5_0", "keeps"), ("q4_1", "does not keep")])
def test_a_pruned_model_hears_whether_the_type_keeps_its_zeros(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], gguf_type: str, verdict: str
) -> None:
    from entrenar.prune.run import run_prune
    from entrenar.prune.spec import make_spec

    pruned = tmp_path / "pruned"
    run_prune(tiny_checkpoints["llama"], pruned, make_spec("magnitude", sparsity=0.5), log=lambda line: None)
    code, stdout, stderr = _quantize(capsys, str(pruned), tmp_path / "p.gguf", "--gguf", gguf_type)
    assert code == 0, stderr
    # Q5_0 stores zero exactly ((16 - 16) * d); Q4_1's per-block minimum does not (d * q + m)
    (line,) = [line for line in stdout.splitlines() if " is pruned (" in line]
    assert line.startswith(
        f"{pruned} is pruned (Magnitude, 50% unstructured); the GGUF file ({gguf_type.upper()}) {verdict}"
    )
