"""entrenar.train.checkpoint: round trip, keep-last-K, the latest pointer, atomicity, damage detection, RNG."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from entrenar.errors import CheckpointError
from entrenar.optim import AdamW
from entrenar.train import checkpoint as ckpt
from entrenar.train.checkpoint import (
    Checkpoint,
    capture_rng_state,
    checkpoint_steps,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    restore_rng_state,
    save_checkpoint,
)


def _checkpoint(step: int) -> Checkpoint:
    torch.manual_seed(step)
    layer = nn.Linear(4, 3)
    optimizer = AdamW(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return Checkpoint(
        step=step,
        weights=dict(layer.named_parameters()),
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": step, "base_lrs": [0.1]},
        scaler={},
        rng=capture_rng_state(),
        data={"epoch": 1, "batch_index": step, "num_batches": 10, "seed": 0},
        trainer={"state": {"step": step}, "config": {"model": {"path": "x"}}},
    )


def test_round_trip(tmp_path: Path) -> None:
    original = _checkpoint(3)
    folder = save_checkpoint(tmp_path, original, keep=2)
    assert folder == tmp_path / "step-3"
    assert (tmp_path / "latest").read_text() == "step-3\n"
    loaded = load_checkpoint(latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    assert loaded.step == 3
    assert loaded.weights.keys() == {"weight", "bias"}
    for name, tensor in original.weights.items():
        assert torch.equal(loaded.weights[name], tensor.detach())
    exp_avg = original.optimizer["state"][0]["exp_avg"]
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], exp_avg)
    assert loaded.optimizer["param_groups"] == original.optimizer["param_groups"]
    assert (loaded.scheduler, loaded.scaler, loaded.data, loaded.trainer) == (
        original.scheduler,
        original.scaler,
        original.data,
        original.trainer,
    )
    assert torch.equal(loaded.rng["torch"], original.rng["torch"])


def test_keeps_the_newest_k_and_moves_latest(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, _checkpoint(step), keep=2)
    assert checkpoint_steps(tmp_path) == [4, 5]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-5"


def test_a_resumed_run_removes_checkpoints_beyond_its_step_and_leftover_temp_folders(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, _checkpoint(step), keep=5)
    (tmp_path / "latest").write_text("step-2\n")  # as if resumed from step 2 (e.g. after --resume of an old run)
    leftover = tmp_path / ".tmp-step-3-abc"  # what a kill during a save leaves behind
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, _checkpoint(4), keep=5)
    assert checkpoint_steps(tmp_path) == [2, 4]
    assert not leftover.exists()
    assert load_checkpoint(tmp_path / "step-4").step == 4


def test_saving_the_latest_step_again_is_a_no_op(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path, _checkpoint(7), keep=1)
    before = (folder / "trainer_state.json").stat().st_mtime_ns
    assert save_checkpoint(tmp_path, _checkpoint(7), keep=1) == folder
    assert (folder / "trainer_state.json").stat().st_mtime_ns == before


def test_an_interrupted_save_leaves_the_previous_checkpoint_as_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, _checkpoint(1), keep=2)
    real = ckpt._torch_save

    def dying(obj: object, path: Path) -> None:
        if path.name == "state.pt":
            path.write_bytes(b"partial")
            raise KeyboardInterrupt
        real(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save", dying)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _checkpoint(2), keep=2)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-1"]
    assert load_checkpoint(tmp_path / "step-1").step == 1


def test_a_stale_folder_of_the_same_step_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "step-5"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("old")
    save_checkpoint(tmp_path, _checkpoint(5), keep=1)
    assert not (stale / "junk").exists()
    assert load_checkpoint(stale).step == 5


def _rehash(folder: Path, name: str) -> None:
    state_path = folder / "trainer_state.json"
    content = json.loads(state_path.read_text())
    content["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    state_path.write_text(json.dumps(content))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "optimizer.pt").write_bytes(b"x" + (f / "optimizer.pt").read_bytes()[1:]), "do not match"),
        (lambda f: (f / "state.pt").unlink(), r"state\.pt: missing"),
        (lambda f: (f / "trainer_state.json").write_text("{"), "cannot be read"),
        (lambda f: (f / "trainer_state.json").write_text("[1]"), "not a trainer state"),
        (
            lambda f: ((f / "trainable.safetensors").write_bytes(b"\x00" * 16), _rehash(f, "trainable.safetensors")),
            r"trainable\.safetensors",
        ),
        (lambda f: ((f / "optimizer.pt").write_bytes(b"junk"), _rehash(f, "optimizer.pt")), "cannot be loaded"),
    ],
)
def test_damage_is_detected(tmp_path: Path, damage: object, message: str) -> None:
    folder = save_checkpoint(tmp_path, _checkpoint(2), keep=1)
    damage(folder)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_latest_pointer(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None  # nothing saved yet
    assert checkpoint_steps(tmp_path / "missing") == []
    (tmp_path / "latest").write_text("step-9\n")
    with pytest.raises(CheckpointError, match=r"names 'step-9', which is not a checkpoint folder"):
        latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="cannot be read"):
        latest_checkpoint(tmp_path)


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="keep=0"):
        save_checkpoint(tmp_path, _checkpoint(1), keep=0)


def test_remove_checkpoints(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoints", _checkpoint(1), keep=1)
    remove_checkpoints(tmp_path / "checkpoints")
    assert not (tmp_path / "checkpoints").exists()
    remove_checkpoints(tmp_path / "checkpoints")  # absent: no error


def test_rng_states_are_restored() -> None:
    # Draw from every generator after capturing, restore, draw again: the same numbers.
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3), np.random.randn())
    restore_rng_state(state)
    second = (random.random(), np.random.rand(3).tolist(), torch.rand(3), np.random.randn())
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
    assert first[3] == second[3]


def test_rng_state_survives_a_weights_only_round_trip(tmp_path: Path) -> None:
    # The legacy Box-Muller generator caches its second Gaussian; the cache must come back too.
    np.random.seed(5)
    np.random.randn()
    checkpoint = _checkpoint(1)
    checkpoint.rng = capture_rng_state()
    expected = np.random.randn()
    save_checkpoint(tmp_path, checkpoint, keep=1)
    restore_rng_state(load_checkpoint(tmp_path / "step-1").rng)
    assert np.random.randn() == expected
