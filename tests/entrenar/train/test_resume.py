"""Exact resume: a run SIGKILLed mid-way (or mid-write) and resumed equals an uninterrupted run, bit for bit.

Every run is a child process with one torch thread. The config exercises what resume must restore: LoRA
dropout (torch RNG), gradient accumulation across epoch boundaries with a checkpoint mid-epoch (data
position), AdamW moments (optimizer), a linear schedule with warmup (scheduler), evaluations and log lines
written after the checkpoint (``metrics.jsonl`` must drop them).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from entrenar.train import latest_checkpoint, load_checkpoint

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

# 8 records, val_split 0.25 -> 6 training samples; batch 2 -> 3 micro-batches per epoch; grad_accum 2 -> a
# step spans epochs; the step-5 checkpoint sits at micro-batch 10 = epoch 3, batch 1 (mid-epoch).
SECTIONS: dict[str, Any] = {
    "data": {"batch_size": 2, "val_split": 0.25},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.1},
    "optimizer": {"lr": 5.0e-3, "weight_decay": 0.01},
    "scheduler": {"name": "linear", "warmup_steps": 2},
    "training": {"max_steps": 12, "grad_accum": 2, "save_every": 5, "keep_checkpoints": 2, "eval_every": 4},
}

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rich.console import Console
    from aprender.atomic import atomic_write
    from entrenar.config import load_config
    from entrenar.lora import peft_io
    from entrenar.train import Callback, run_training
    from entrenar.train import callbacks as metrics_cb
    from entrenar.train import checkpoint as ckpt

    config, mode, step, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

    def hang():
        marker.write_text("ready")
        while True:
            time.sleep(1)

    class HangAfterStep(Callback):
        def on_step_end(self, trainer):
            if trainer.state.step == step:
                hang()

    real_save = ckpt._torch_save

    def save_then_hang(obj, path):  # hang inside the step's checkpoint, its optimizer file half-way on disk
        real_save(obj, path)
        if path.name == "optimizer.pt" and path.parent.name.startswith(f".tmp-step-{step}-"):
            hang()

    def half_written_adapter(tensors, path, metadata=None):  # hang with the adapter's temp file half-way on disk
        atomic_write(path, lambda stream: (stream.write(b"half"), stream.flush(), hang()))

    def half_written_text(real, when):  # hang inside the atomic text write `when` picks, half-way on disk
        def write(path, text, *args, **kwargs):
            if when(Path(path), text):
                half = text[: len(text) // 2].encode()
                atomic_write(path, lambda stream: (stream.write(half), stream.flush(), hang()))
            return real(path, text, *args, **kwargs)

        return write

    if mode == "save":
        ckpt._torch_save = save_then_hang
    if mode == "adapter":
        peft_io.save_file = half_written_adapter
    if mode == "pointer":  # the `latest` pointer's write for the step's checkpoint
        ckpt.atomic_write_text = half_written_text(ckpt.atomic_write_text, lambda p, t: t == f"step-{step}\\n")
    if mode == "metrics":  # a resumed run's rewrite of metrics.jsonl (the records up to its checkpoint)
        metrics_cb.atomic_write_text = half_written_text(
            metrics_cb.atomic_write_text, lambda p, t: p.name == "metrics.jsonl" and bool(t)
        )
    callbacks = [HangAfterStep()] if mode == "step" else []
    run_training(load_config(config), callbacks=callbacks, console=Console(file=sys.stderr))
    """
)


def _kill_when_ready(folder: Path, config: Path, mode: str, step: int) -> None:
    """Run the child until it reports it is hanging at `step`, then SIGKILL it."""
    script, marker = folder / "child.py", folder / f"ready-{mode}-{step}"
    script.write_text(_CHILD)
    args = [sys.executable, str(script), str(config), mode, str(step), str(marker)]
    child = subprocess.Popen(args, env=runs.subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the child exited with {child.returncode}: {child.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the child never reached the kill point"
        time.sleep(0.05)
    child.kill()  # SIGKILL: no handler, no cleanup
    assert child.wait(timeout=30) == -9
    child.stderr.close()  # type: ignore[union-attr]


def _train(config: Path) -> subprocess.CompletedProcess[str]:
    done = runs.run_cli("train", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in records]


def _assert_same_run(a: Path, b: Path) -> None:
    for kind in ("train", "eval"):
        assert _comparable(runs.read_metrics(a, kind)) == _comparable(runs.read_metrics(b, kind)), kind
    for name in ("adapter_model.safetensors", "checkpoints/step-10/trainable.safetensors"):
        left, right = load_file(a / name), load_file(b / name)
        assert left.keys() == right.keys()
        for key in left:
            assert left[key].equal(right[key]), (name, key)  # bit for bit


@pytest.fixture(scope="module")
def straight(memorizable_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the uninterrupted 12-step run."""
    folder = tmp_path_factory.mktemp("straight")
    _train(runs.write_config(folder, memorizable_checkpoints["qwen2"], **SECTIONS))
    return folder / "out"


def test_straight_run_logs_what_the_comparison_needs(straight: Path) -> None:
    assert [r["step"] for r in runs.read_metrics(straight)] == list(range(1, 13))
    assert [r["step"] for r in runs.read_metrics(straight, "eval")] == [0, 4, 8, 12]
    assert [p.name for p in sorted((straight / "checkpoints").glob("step-*"))] == ["step-10", "step-5"]


def test_sigkill_after_a_checkpoint_then_resume_equals_the_straight_run(
    straight: Path, memorizable_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    config = runs.write_config(tmp_path, memorizable_checkpoints["qwen2"], **SECTIONS)
    _kill_when_ready(tmp_path, config, "step", 7)
    out = tmp_path / "out"
    assert latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "step-5"
    assert [r["step"] for r in runs.read_metrics(out)] == list(range(1, 8))  # steps 6-7 logged after the checkpoint
    resumed = _train(config)
    assert "resuming from" in resumed.stdout and "(step 5)" in resumed.stdout
    assert [r["step"] for r in runs.read_metrics(out)] == list(range(1, 13))  # 6 and 7 once, not twice
    _assert_same_run(straight, out)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(
    straight: Path, memorizable_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    config = runs.write_config(tmp_path, memorizable_checkpoints["qwen2"], **SECTIONS)
    _kill_when_ready(tmp_path, config, "save", 10)
    root = tmp_path / "out" / "checkpoints"
    assert latest_checkpoint(root) == root / "step-5"
    assert load_checkpoint(root / "step-5").step == 5  # complete and verified
    assert [p.name for p in root.glob(".tmp-step-10-*")], "the half-written checkpoint is where the kill left it"
    _train(config)
    assert not list(root.glob(".tmp-*"))
    _assert_same_run(straight, tmp_path / "out")


def test_sigkill_during_the_adapter_write_leaves_a_temp_file_the_next_run_removes(
    straight: Path, memorizable_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    config = runs.write_config(tmp_path, memorizable_checkpoints["qwen2"], **SECTIONS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.tmp").write_text("mine")
    _kill_when_ready(tmp_path, config, "adapter", 12)
    assert len(list(out.glob(".adapter_model.safetensors.*.tmp"))) == 1, "the kill left the adapter's temp file"
    assert not (out / "adapter_model.safetensors").exists()
    resumed = _train(config)
    assert "(step 10)" in resumed.stdout
    assert [p.name for p in out.glob("*.tmp")] == ["notes.tmp"]  # pathlib's * matches dot files too
    _assert_same_run(straight, out)


def _assert_no_temp_files(out: Path) -> None:
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.tmp")] == []  # every temp file, every folder


def test_sigkill_during_the_latest_pointer_write_then_resume_leaves_no_temp_file(
    straight: Path, memorizable_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    config = runs.write_config(tmp_path, memorizable_checkpoints["qwen2"], **SECTIONS)
    _kill_when_ready(tmp_path, config, "pointer", 10)
    out = tmp_path / "out"
    assert len(list(out.glob("checkpoints/.latest.*.tmp"))) == 1, "the kill left the pointer's temp file"
    assert (out / "checkpoints" / "latest").read_text() == "step-5\n"  # the old pointer is intact
    _train(config)
    _assert_no_temp_files(out)
    _assert_same_run(straight, out)


def test_sigkill_during_the_metrics_rewrite_of_a_resumed_run_leaves_no_temp_file(
    straight: Path, memorizable_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    config = runs.write_config(tmp_path, memorizable_checkpoints["qwen2"], **SECTIONS)
    _kill_when_ready(tmp_path, config, "step", 7)
    _kill_when_ready(tmp_path, config, "metrics", 0)  # the resumed run dies rewriting metrics.jsonl
    out = tmp_path / "out"
    assert len(list(out.glob(".metrics.jsonl.*.tmp"))) == 1, "the kill left the metrics' temp file"
    resumed = _train(config)
    assert "(step 5)" in resumed.stdout
    _assert_no_temp_files(out)
    _assert_same_run(straight, out)


# Each variant changes what a checkpoint must restore: NF4 base + adapters (QLoRA), every weight (full), the
# block-wise 8-bit optimizer states (adamw8bit), packed sequences (the data position counts packs).
VARIANTS: dict[str, dict[str, Any]] = {
    "qlora": {"quantize": {"bits": 4}},
    "full": {"lora": None, "optimizer": {"lr": 1.0e-3}},
    "adamw8bit": {"optimizer": {"name": "adamw8bit"}},
    "packing": {"data": {"packing": True, "batch_size": 1}},
}


def _variant_config(folder: Path, model: Path, variant: str) -> Path:
    sections: dict[str, Any] = {name: dict(values) for name, values in SECTIONS.items()}
    for name, values in VARIANTS[variant].items():
        sections[name] = None if values is None else sections.get(name, {}) | values
    return runs.write_config(folder, model, **sections)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_resumes_bit_for_bit_after_sigkill(
    memorizable_checkpoints: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    """With gradient accumulation 2 and a validation split, as `SECTIONS`; weights of every kind compared."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(_variant_config(straight, memorizable_checkpoints["qwen2"], variant))
    config = _variant_config(killed, memorizable_checkpoints["qwen2"], variant)
    _kill_when_ready(killed, config, "step", 7)
    assert "(step 5)" in _train(config).stdout
    a, b = straight / "out", killed / "out"
    for kind in ("train", "eval"):
        assert _comparable(runs.read_metrics(a, kind)) == _comparable(runs.read_metrics(b, kind)), kind
    weights = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.safetensors"))
    assert weights == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.safetensors"))
    assert any(not name.startswith("checkpoints/") for name in weights)  # the final weights are compared too
    for name in weights:
        left, right = load_file(a / name), load_file(b / name)
        assert left.keys() == right.keys()
        for key in left:
            assert left[key].equal(right[key]), (variant, name, key)  # bit for bit
    optimizer = "checkpoints/step-10/optimizer.pt"
    assert (a / optimizer).read_bytes() == (b / optimizer).read_bytes()  # moments (8-bit blocks) included
