"""``entrenar init`` through `entrenar.cli.main`: output, exit codes, nothing written on errors, --force."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from aprender.hub import upload_folder
from entrenar.cli import main
from entrenar.cli.init import METHODS as METHOD_CHOICES
from entrenar.cli.init import OPTIMIZER_TITLES, _count
from entrenar.config import load_config
from entrenar.config.schema import OPTIMIZER_NAMES
from entrenar.init import METHODS


def _chat_file(path: Path, n: int = 20) -> Path:
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "yes " * (i + 1)}]}
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _run(args: list[str]) -> int:
    """Exit code of `main(args)` (0 when it returns)."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _chat_file(tmp_path / "data" / "train.jsonl")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (494_032_768, "494,032,768 (494.0M)"),
        (7_615_616_512, "7,615,616,512 (7.6B)"),
        (2544, "2,544 (2.5K)"),
        (999, "999"),
    ],
)
def test_parameter_counts_are_readable(n: int, text: str) -> None:
    assert _count(n) == text


def test_method_choices_are_the_methods() -> None:
    assert METHOD_CHOICES == METHODS


def test_init_writes_config_and_prints_summary(
    project: Path, tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_checkpoints["qwen3"]
    assert _run(["init", "--base", str(base), "--method", "qlora", "--data", "data/train.jsonl"]) == 0
    out = capsys.readouterr().out.splitlines()
    cfg = load_config(project / "config.yaml")
    assert cfg.method == "qlora" and cfg.lora is not None and (cfg.lora.rank, cfg.lora.alpha) == (64, 16.0)
    # 20 samples of 37..76 tokens (p95 74 -> seq_len 128) pack into 10 rows: 2 batches of 8 an epoch, 6 steps
    # in 3 epochs; the warmup is capped at a tenth of them.
    assert cfg.scheduler.warmup_steps == 0
    # The spec's summary, line for line (qwen3 fixture: hidden 64, 2 layers):
    assert [line for line in out if not line.startswith("    ")] == [
        "Created config.yaml with:",
        f"  Model: {base} (64 hidden, 2 layers)",
        "  Method: QLoRA (rank=64, alpha=16, 4-bit base)",
        "  Data: ./data/train.jsonl (20 samples detected)",
        "  Optimizer: AdamW (lr=2e-4, warmup=0 steps)",
        "  Training: 3 epochs, 6 optimizer steps",
        "  Output: ./output/",
        "Next: entrenar train config.yaml",
    ]
    # The details under Model and Data. qwen3 fixture: V=1024, H=64, I=128, 2 layers, 4 heads / 2 KV of dim 32,
    # q/k norms, tied: 65,536 + 2 * (8,192 + 2 * 4,096 + 8,192 + 24,576 + 128 + 64) + 64 = 164,288.
    assert out[2] == "    qwen3 (local): 4 heads (kv 2, dim 32), MLP 128, vocab 1024, context 512"
    assert out[3] == "    parameters 164,288 (164.3K), tied embeddings"
    assert out[6].startswith("    format messages, 1 file(s); tokens per sample: min ")
    seq_len = f"    seq_len {cfg.data.seq_len} (p95 rounded up to a multiple of 64); 0 sample(s) longer will be cut"
    assert out[7] == seq_len


def test_the_summary_names_lora_full_and_the_warmup(
    project: Path, tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _chat_file(project / "data" / "train.jsonl", n=400)  # up to 817 tokens a sample: cut to 512, packed
    assert _run(["init", "--base", str(tiny_checkpoints["llama"]), "--method", "lora", "--data", "data"]) == 0
    out = capsys.readouterr().out
    assert "\n  Method: LoRA (rank=64, alpha=16)\n" in out
    assert "\n  Training: 3 epochs, 108 optimizer steps\n" in out  # 36 batches of 8 rows an epoch
    assert "\n  Optimizer: AdamW (lr=2e-4, warmup=10 steps)\n" in out  # a tenth of 108, below 100
    assert load_config(project / "config.yaml").scheduler.warmup_steps == 10
    args = ["init", "--base", str(tiny_checkpoints["llama"]), "--method", "full", "--data", "data", "-o", "full.yaml"]
    assert _run(args) == 0
    out = capsys.readouterr().out
    assert "\n  Method: Full fine-tune (every parameter trains)\n" in out
    assert "\n  Optimizer: AdamW (lr=2e-5, warmup=10 steps)\n" in out


def test_optimizer_titles_cover_the_schemas_optimizers() -> None:
    assert set(OPTIMIZER_TITLES) == set(OPTIMIZER_NAMES)


def test_output_option_force_and_quoting(
    project: Path, tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target = project / "my runs" / "full.yaml"
    args = ["init", "--base", str(tiny_checkpoints["mistral"]), "--method", "full", "--data", "data", "-o", str(target)]
    assert _run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Created {target} with:"
    assert out[-2:] == ["  Output: ./my runs/output/", f"Next: entrenar train '{target}'"]
    assert load_config(target).method == "full"
    target.write_text("mine\n")
    assert _run(args) == 2
    assert (
        capsys.readouterr().err
        == f"error: -o {target}: already exists; pass --force to replace it or choose another file with -o\n"
    )
    assert target.read_text() == "mine\n"
    assert _run([*args, "--force"]) == 0
    assert load_config(target).method == "full"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unsupported", "model_type 'gpt2' is not supported"),
        ("missing data", "no such file or directory; check the data path"),
        ("bad record", "train.jsonl:2: invalid JSON"),
        ("no tokenizer", "needs tokenizer.json"),
        ("not a base", "not a Hub repo id like"),
    ],
)
def test_errors_exit_2_before_anything_is_written(
    case: str, message: str, project: Path, tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, data = str(tiny_checkpoints["llama"]), "data/train.jsonl"
    if case == "unsupported":
        (project / "gpt2").mkdir()
        (project / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
        base = "gpt2"
    elif case == "missing data":
        data = "data/nope.jsonl"
    elif case == "bad record":
        (project / "data" / "train.jsonl").write_text('{"text": "fine"}\n{broken\n')
    elif case == "no tokenizer":
        (project / "bare").mkdir()
        (project / "bare" / "config.json").write_bytes((tiny_checkpoints["llama"] / "config.json").read_bytes())
        base = "bare"
    else:
        base = "./no-such-folder"
    code = _run(["init", "--base", base, "--method", "qlora", "--data", data])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (project / "config.yaml").exists()


def test_bad_method_is_a_usage_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["init", "--base", "x/y", "--method", "dora", "--data", "data"]) == 2
    assert "'dora' is not one of 'lora', 'qlora', 'full'" in capsys.readouterr().err
    assert not (project / "config.yaml").exists()


def test_init_with_a_hub_id_fetches_no_weights(
    project: Path,
    local_hub: Any,
    tiny_checkpoints: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload_folder("alice/tiny-qwen2", tiny_checkpoints["qwen2"], token=local_hub.tokens["alice"])
    caplog.set_level(logging.INFO, logger="aprender.hub.server")
    caplog.clear()
    assert _run(["init", "--base", "alice/tiny-qwen2", "--method", "qlora", "--data", "data/train.jsonl"]) == 0
    assert capsys.readouterr().out.startswith(
        "Created config.yaml with:\n  Model: alice/tiny-qwen2 (64 hidden, 2 layers)\n    qwen2 (hub): "
    )
    cfg = load_config(project / "config.yaml")
    assert (cfg.model.path, cfg.model.source, cfg.method) == ("alice/tiny-qwen2", "hub", "qlora")
    requested = " ".join(r.getMessage() for r in caplog.records if r.name == "aprender.hub.server")
    assert "/resolve/main/config.json" in requested and "/tokenizer.json" in requested
    assert "safetensors" not in requested


def test_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["init", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--method [lora|qlora|full]" in out and "[default: config.yaml]" in out
    assert "Reads only config.json and the tokenizer of the base model (never its weights)" in " ".join(out.split())
