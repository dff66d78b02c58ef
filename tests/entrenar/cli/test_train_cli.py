"""``entrenar train``: a whole run, automatic resume, --resume/--no-resume, --dry-run, and Ctrl-C/SIGTERM (exit 130)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from importlib import import_module
from pathlib import Path

import pytest

from entrenar.display import human_size
from entrenar.errors import TrainingInterrupted
from entrenar.train import latest_checkpoint
from fixtures.cli import run_cli

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


def test_train_resume_and_start_over(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], training={"save_every": 4, "max_steps": 6})
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "train", str(config), "training.log_every=2")
    assert code == 0
    assert re.search(
        r"^step 2/6 \| epoch \d\.\d\d \| loss \d+\.\d{4} \(smoothed \d+\.\d{4}\) \| lr 1\.000e-02 \| ", stdout, re.M
    )
    assert re.search(r"^Trained 6 steps in \d+\.\ds$", stdout, re.M)
    assert f"Saved: {out / 'adapter_model.safetensors'} (" in stdout  # outside the working directory: absolute
    assert {p.name for p in out.iterdir()} >= {
        "adapter_model.safetensors",
        "final_model.json",
        "metrics.jsonl",
        "config.yaml",
    }
    assert [r["step"] for r in runs.read_metrics(out)] == [2, 4, 6]

    # Again with a longer run: resumes from the step-4 checkpoint (the newest; step 6 was not a multiple of 4).
    code, stdout, _ = run_cli(capsys, "train", str(config), "training.log_every=2", "training.max_steps=8")
    assert code == 0
    assert f"resuming from {out / 'checkpoints' / 'step-4'} (step 4); pass --no-resume to start over" in stdout
    assert [r["step"] for r in runs.read_metrics(out)] == [2, 4, 6, 8]  # step 6 logged once
    assert json.loads((out / "final_model.json").read_text())["steps"] == 8

    code, stdout, _ = run_cli(capsys, "train", str(config), "--no-resume", "training.max_steps=2")
    assert code == 0 and "resuming" not in stdout
    assert [r["step"] for r in runs.read_metrics(out)] == [1, 2]
    assert latest_checkpoint(out / "checkpoints") is None  # old checkpoints deleted, none due in 2 steps

    code, _, err = run_cli(capsys, "train", str(config), "--resume")
    assert code == 2 and err.startswith("error: --resume: no checkpoint in ")


def test_a_run_tells_its_story(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = tiny_checkpoints["llama"]
    runs.write_config(tmp_path, base, quantize={"bits": 4}, training={"max_steps": 5})
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "train", "config.yaml")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[:4] == [
        f"Model: {base} (local folder)",
        "Loading model weights (SafeTensors)...",
        "Applying QLoRA adapters (rank=8)...",
        lines[3],  # the run's summary
    ]
    assert lines[3].startswith(f"qlora fine-tune of {base} on cpu: ")
    assert [line[:14] for line in lines[4:8]] == [
        "  techniques  ",
        "  schedule    ",
        "  device      ",
        "  memory      ",
    ]
    # 8 training records in batches of 4: 2 steps an epoch; max_steps=5 stops half-way through the third epoch.
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [re.sub(r"loss=\d+\.\d{3}, ", "", line) for line in epochs] == [
        "Epoch 1/3: lr=1.0e-2",
        "Epoch 2/3: lr=1.0e-2",
        "Epoch 3/3: lr=1.0e-2 (stopped after 50% of the epoch)",
    ]
    assert lines.index(epochs[0]) == lines.index(next(line for line in lines if line.startswith("step 2/5 "))) + 1
    saved = lines[lines.index(next(line for line in lines if line.startswith("Trained 5 steps in "))) + 1 :]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert sorted(saved) == sorted(f"Saved: ./out/{name} ({human_size((out / name).stat().st_size)})" for name in files)
    assert files == sorted(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "config.yaml",
            "final_model.json",
            "generation_config.json",
            "metrics.jsonl",
            "run_state.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )


def test_dry_run_writes_nothing(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"])
    code, stdout, _ = run_cli(capsys, "train", str(config), "--dry-run")
    assert code == 0
    assert re.search(r"dry run: one step took loss \d+\.\d{4}; nothing was written", stdout)
    assert not (tmp_path / "out").exists()


def test_a_run_removes_the_temp_files_killed_writes_left(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], training={"save_every": 1, "max_steps": 2})
    out, root = tmp_path / "out", tmp_path / "out" / "checkpoints"
    assert run_cli(capsys, "train", str(config))[0] == 0
    # What a SIGKILL mid-write leaves: `aprender.atomic`'s temp names (.<name>.<uuid4 hex>.tmp), a checkpoint folder.
    stale = [
        out / f".adapter_model.safetensors.{uuid.uuid4().hex}.tmp",
        out / f".metrics.jsonl.{uuid.uuid4().hex}.tmp",
        root / f".latest.{uuid.uuid4().hex}.tmp",
        root / "step-2" / f".trainer_state.json.{uuid.uuid4().hex}.tmp",
        root / f".tmp-step-3-{uuid.uuid4().hex}" / "optimizer.pt",
    ]
    mine = [out / "notes.tmp", out / ".adapter_model.safetensors.tmp", root / "notes.tmp", root / "step-2" / "x.tmp"]
    for path in stale + mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine" if path in mine else "half")

    code, stdout, _ = run_cli(capsys, "train", str(config), "training.max_steps=3", "training.save_every=10")
    assert code == 0 and "(step 2)" in stdout
    assert [path for path in stale if path.exists()] == [] and not list(root.glob(".tmp-step-*"))
    assert [path.read_text() for path in mine] == ["mine"] * len(mine)


def test_whole_run_in_a_child_process(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], quantize={"bits": 4}, training={"max_steps": 3})
    done = runs.run_cli("train", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "qlora fine-tune of" in done.stdout and "step 3/3" in done.stdout
    assert json.loads((tmp_path / "out" / "final_model.json").read_text())["techniques"] == ["qlora"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_130(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, signum: int
) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], training={"max_steps": 100000})
    child = subprocess.Popen(
        [*runs.CLI, "train", str(config), "training.save_every=100000"],
        env=runs.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert child.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    name = signal.Signals(signum).name
    match = re.fullmatch(
        rf"stopped by {name} after step (\d+); checkpoint saved to (\S+); "
        rf"run `entrenar train {re.escape(str(config))} training\.save_every=100000` to resume\n",
        stderr,
    )
    assert match, stderr
    step, folder = int(match.group(1)), Path(match.group(2))
    assert folder == tmp_path / "out" / "checkpoints" / f"step-{step}"
    assert latest_checkpoint(folder.parent) == folder
    assert [r["step"] for r in runs.read_metrics(tmp_path / "out")] == list(range(1, step + 1))
    assert not (tmp_path / "out" / "final_model.json").exists()
    if signum == signal.SIGINT:  # and the run continues from there
        resumed = runs.run_cli("train", str(config), "--resume", f"training.max_steps={step + 2}")
        assert resumed.returncode == 0, resumed.stderr
        assert f"(step {step})" in resumed.stdout
        assert [r["step"] for r in runs.read_metrics(tmp_path / "out")] == list(range(1, step + 3))


def test_the_interrupt_message_quotes_the_command_to_resume(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import entrenar.train

    def interrupted(cfg: object, resume: bool | None) -> None:
        raise TrainingInterrupted(
            "stopped by SIGINT after step 3; checkpoint saved to ck", step=3, checkpoint=Path("ck")
        )

    monkeypatch.setattr(entrenar.train, "run_training", interrupted)
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"])
    code, _, err = run_cli(capsys, "train", str(config), "lora.target_modules=[q_proj, v_proj]")
    assert code == 130
    assert err == (
        "stopped by SIGINT after step 3; checkpoint saved to ck; "
        f"run `entrenar train {config} 'lora.target_modules=[q_proj, v_proj]'` to resume\n"
    )
