"""``entrenar prune`` end to end on the tiny models: the output folder, its record and card, transformers loading
it, `entrenar publish --dry-run` accepting it, adapters folded in first, Hub ids, dtypes, and one-line refusals
that leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from aprender.format.safetensors import load
from aprender.hub import upload_folder
from aprender.text import Tokenizer
from entrenar.models import from_pretrained, save_pretrained
from entrenar.prune.calibration import load_calibration
from entrenar.prune.oneshot import prune_model
from entrenar.prune.spec import METHODS, PATTERNS, make_spec
from fixtures.cli import run_cli
from fixtures.finetuned import finetuned_copy

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.txt"
CALIBRATION = ["--calibration", str(CORPUS), "--samples", "8", "--seq-len", "32", "--seed", "1"]


@pytest.fixture(scope="module")
def wanda_output(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny Qwen2 (untied head, q/k/v biases) pruned by WANDA at 50%, scored on the corpus; and stdout."""
    out = tmp_path_factory.mktemp("wanda") / "out"
    capsys = _Capture()
    from entrenar.cli import main

    with capsys:
        main(["prune", str(tiny_checkpoints["qwen2"]), "-o", str(out), "--method", "wanda", "--sparsity", "0.5",
              *CALIBRATION, "--eval-data", str(CORPUS)])  # fmt: skip
    return out, capsys.text


class _Capture:
    """stdout of a block (module fixtures cannot use capsys)."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buffer)
        self._redirect.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._redirect.__exit__(*exc)  # type: ignore[arg-type]
        self.text = self._buffer.getvalue()


def test_report_lines(wanda_output: tuple[Path, str]) -> None:
    out, text = wanda_output
    lines = text.splitlines()
    assert lines[0] == "calibration: 8 windows of 32 tokens from 11761 tokens"
    assert lines[1] == "pruning: WANDA, 50% unstructured (per output row)"
    assert lines[2:4] == [f"layer {i}/2: 50.00% of 36864 weights zero (7 linears)" for i in (1, 2)]
    assert lines[4].startswith("pruned 14 linear layers (WANDA, 50% unstructured (per output row)): 50.00% of 73728")
    assert lines[5].startswith(f"perplexity on {CORPUS}: dense ")
    assert lines[6] == f"pruned model written to {out}"


def test_transformers_loads_it_with_our_logits(
    wanda_output: tuple[Path, str], tiny_checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    out, _ = wanda_output
    folder = tiny_checkpoints["qwen2"]
    ours = from_pretrained(folder, dtype="float32")
    windows = load_calibration(CORPUS, Tokenizer.from_dir(folder), samples=8, seq_len=32, seed=1).windows
    prune_model(ours, make_spec("wanda", sparsity=0.5), windows)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(0, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(ids)
        assert isinstance(expected, torch.Tensor)
        torch.testing.assert_close(theirs(ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_pretrained(out)(ids), expected, rtol=0, atol=0)
    written = load(out)
    assert written["model.layers.1.mlp.down_proj.weight"].eq(0).float().mean() == 0.5


def test_folder_and_record(wanda_output: tuple[Path, str], tiny_checkpoints: dict[str, Path]) -> None:
    out, _ = wanda_output
    source = tiny_checkpoints["qwen2"]
    names = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    assert {p.name for p in out.iterdir()} == names | {"model.safetensors", "final_model.json", "README.md"}
    assert all((out / name).read_bytes() == (source / name).read_bytes() for name in names)
    assert not list(out.parent.glob(".out-prune-*"))  # the work folder is gone
    record = json.loads((out / "final_model.json").read_text())
    assert (record["output"], record["techniques"]) == ("full", ["prune"])
    assert record["base_model"] == {"path": str(source), "source": "local", "revision": None, "resolved_revision": None}
    prune = record["prune"]
    assert {k: prune[k] for k in ("method", "sparsity", "pattern", "comparison_group", "skip")} == {
        "method": "wanda",
        "sparsity": 0.5,
        "pattern": None,
        "comparison_group": "output row",
        "skip": [],
    }
    assert prune["calibration"] == {
        "path": str(CORPUS),
        "files": {str(CORPUS): hashlib.sha256(CORPUS.read_bytes()).hexdigest()},
        "tokens": 11761,
        "samples": 8,
        "seq_len": 32,
        "seed": 1,
    }
    assert prune["pruned_sparsity"] == 0.5 and prune["pruned_weights"] == 73728
    assert [layer["sparsity"] for layer in prune["layers"]] == [0.5, 0.5]
    assert len(prune["modules"]) == 14 and set(prune["modules"].values()) == {0.5}
    written = load(out).values()  # the embedding's padding row is zero too
    assert prune["model_sparsity"] == sum(int((t == 0).sum()) for t in written) / sum(t.numel() for t in written)
    assert [s["model"] for s in prune["perplexity"]] == ["dense", "pruned"]
    assert all(s["perplexity"] > 1 and s["tokens"] > 0 for s in prune["perplexity"])


def test_model_card(wanda_output: tuple[Path, str]) -> None:
    out, _ = wanda_output
    card = (out / "README.md").read_text()
    assert "- prune\n" in card and "| Method | pruning |" in card
    assert "This model was pruned from a base model using entrenar" in card
    assert (
        "Method: [WANDA](https://arxiv.org/abs/2306.11695), 50% unstructured sparsity (compared within: output row)"
        in card
    )
    assert f"Calibration: 8 windows of 32 tokens from `{CORPUS}` (seed 1; sha256 `" in card
    assert "| 0 | 50.00% |\n| 1 | 50.00% |" in card
    assert "| dense |" in card and "| pruned |" in card


def test_publish_dry_run_accepts_it(wanda_output: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = wanda_output
    code, stdout, stderr = run_cli(capsys, "publish", str(out), "--repo", "me/pruned", "--dry-run")
    assert code == 0, stderr
    assert "model.safetensors" in stdout and "README.md" in stdout


def _prune(capsys: pytest.CaptureFixture[str], model: str, out: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "prune", model, "-o", str(out), *args)


def test_adapter_output_is_folded_into_its_base_first(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from entrenar.lora.extract import extract_lora
    from entrenar.lora.merge import merge_adapter_into_checkpoint

    base = tiny_checkpoints["llama"]
    tensors = load(base)
    generator = torch.Generator().manual_seed(7)
    deltas = {n: 0.05 * torch.randn(t.shape, generator=generator) for n, t in tensors.items() if "proj" in n}
    adapter = extract_lora(finetuned_copy(base, tmp_path / "ft", deltas), base, tmp_path / "adapter", rank=4).out_dir
    folded = tmp_path / "folded"
    merge_adapter_into_checkpoint(base, adapter, folded)
    shutil.copy(base / "tokenizer.json", folded)
    shutil.copy(base / "tokenizer_config.json", folded)
    args = ("--method", "sparsegpt", "--pattern", "2:4", *CALIBRATION)
    assert _prune(capsys, str(adapter), tmp_path / "from-adapter", *args)[0] == 0
    assert _prune(capsys, str(folded), tmp_path / "from-folded", *args)[0] == 0
    ours, expected = load(tmp_path / "from-adapter"), load(tmp_path / "from-folded")
    assert all(torch.equal(ours[name], expected[name]) for name in expected)
    record = json.loads((tmp_path / "from-adapter" / "final_model.json").read_text())
    assert record["techniques"] == ["extract-lora", "prune"]
    assert record["base_model"]["path"] == str(base)
    assert record["prune"]["model"] == str(adapter)
    # Without final_model.json the adapter config names the base; without that, nothing does.
    (adapter / "final_model.json").unlink()
    assert _prune(capsys, str(adapter), tmp_path / "bare", "--method", "magnitude", "--sparsity", "0.5")[0] == 0
    record = json.loads((tmp_path / "bare" / "final_model.json").read_text())
    assert record["techniques"] == ["lora", "prune"]
    assert record["base_model"] == {"path": str(base), "source": "local", "revision": None, "resolved_revision": None}
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    code, _, stderr = _prune(capsys, str(adapter), tmp_path / "none", "--method", "magnitude", "--sparsity", "0.5")
    assert code == 2 and "adapter_config.json names no base model" in stderr


def test_hub_id_and_stored_dtype(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, local_hub: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    half = tmp_path / "bf16"
    save_pretrained(from_pretrained(tiny_checkpoints["llama"], dtype="bfloat16"), half)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoints["llama"] / name, half)
    upload_folder("alice/tiny-bf16", half, token=local_hub.tokens["alice"])
    args = ("--method", "magnitude", "--sparsity", "0.3", "--skip", "*.o_proj")
    code, stdout, stderr = _prune(capsys, "alice/tiny-bf16", tmp_path / "out", *args)
    assert code == 0, stderr
    assert "kept dense by --skip: 2 linear layers" in stdout
    weights = load(tmp_path / "out")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert int((q == 0).sum()) == int(0.3 * q.numel())
    record = json.loads((tmp_path / "out" / "final_model.json").read_text())
    assert record["base_model"]["path"] == "alice/tiny-bf16" and record["base_model"]["source"] == "hub"
    assert len(record["base_model"]["resolved_revision"]) == 40
    assert record["prune"]["calibration"] is None
    assert record["prune"]["skipped_modules"] == [f"model.layers.{i}.self_attn.o_proj" for i in (0, 1)]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: alice/tiny-bf16" in card and "pruned from [alice/tiny-bf16]" in card


def test_an_empty_output_folder_is_used(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    code, _, _ = _prune(
        capsys, str(tiny_checkpoints["llama"]), tmp_path / "out", "--method", "magnitude", "--pattern", "4:8"
    )
    assert code == 0 and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "wanda", "--sparsity", "1.0", *CALIBRATION], "sparsity 1.0 is outside [0, 1)"),
        (["--method", "wanda", "--sparsity", "-0.5", *CALIBRATION], "sparsity -0.5 is outside [0, 1)"),
        (["--method", "wanda", "--pattern", "1:4", *CALIBRATION], "pattern '1:4' is unknown; use one of 2:4, 4:8"),
        (["--method", "obs", "--sparsity", "0.5"], "method 'obs' is unknown; use one of magnitude, wanda, sparsegpt"),
        (["--method", "wanda", "--sparsity", "0.5", "--pattern", "2:4"], "pass exactly one of --sparsity"),
        (["--method", "magnitude"], "pass exactly one of --sparsity"),
        (["--method", "wanda", "--sparsity", "0.5"], "wanda needs calibration data; pass --calibration"),
        (["--method", "magnitude", "--sparsity", "0.5", *CALIBRATION], "magnitude uses no calibration data"),
        (["--method", "wanda", "--sparsity", "0.5", "--calibration", "missing.txt"], "missing.txt: no such file"),
        (["--method", "magnitude", "--sparsity", "0.5", "--eval-data", "gone.txt"], "gone.txt: no such file"),
        (["--method", "sparsegpt", "--sparsity", "0.5", "--calibration", "SHORT"], "fewer than --seq-len 512"),
        (["--method", "magnitude", "--sparsity", "0.5", "--skip", "*.lm_head"], "--skip '*.lm_head' matches no"),
        (["--method", "wanda", "--sparsity", "0.5", *CALIBRATION[:2], "--samples", "0"], "--samples 0 must be"),
    ],
)
def test_bad_inputs_are_one_line_exit_2_nothing_written(
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
    code, _, stderr = _prune(capsys, str(tiny_checkpoints["llama"]), tmp_path / "out", *args)
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert sorted(tmp_path.iterdir()) == before  # no output, no work folder


def test_a_folder_with_files_is_refused(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, stderr = _prune(
        capsys, str(tiny_checkpoints["llama"]), tmp_path / "out", "--method", "magnitude", "--sparsity", "0.5"
    )
    assert code == 2 and "exists and is not an empty folder" in stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_debug_shows_the_traceback(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from aprender.errors import PruningError
    from entrenar.cli import main

    with pytest.raises(PruningError):
        main(
            [
                "prune",
                str(tiny_checkpoints["llama"]),
                "-o",
                str(tmp_path / "o"),
                "--method",
                "x",
                "--sparsity",
                "0.5",
                "--debug",
            ]
        )


def test_help_lists_every_method_and_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capsys, "prune", "--help")
    assert code == 0
    help_text = " ".join(stdout.split())
    assert all(name in help_text for name in METHODS) and all(pattern in help_text for pattern in PATTERNS)


@pytest.mark.cuda
def test_gpu_prunes_as_the_cpu_does(tiny_checkpoints: dict[str, Path]) -> None:
    folder = tiny_checkpoints["qwen2"]
    windows = load_calibration(CORPUS, Tokenizer.from_dir(folder), samples=8, seq_len=32, seed=1).windows
    results = []
    for device in ("cpu", "cuda"):
        model = from_pretrained(folder, dtype="float32", device=device)
        prune_model(model, make_spec("sparsegpt", pattern="2:4"), windows)
        results.append({n: p.detach().cpu() for n, p in model.named_parameters() if p.dim() == 2})
    cpu, gpu = results
    assert all(torch.equal(cpu[n] == 0, gpu[n] == 0) for n in cpu)
    assert max(float((cpu[n] - gpu[n]).abs().max()) for n in cpu) <= 1e-4
