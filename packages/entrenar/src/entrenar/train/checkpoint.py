"""Training checkpoints: atomic, verified, the newest K kept, and everything an exact resume needs.

Layout under ``<output_dir>/checkpoints/``::

    latest                      "step-N": the pointer; a checkpoint exists only once it is named here
    step-N/trainable.safetensors   the trainable parameters, by name
    step-N/optimizer.pt            optimizer.state_dict()
    step-N/state.pt                scheduler and loss-scaler state, RNG states (python, numpy, torch, CUDA),
                                   the callbacks' own states
    step-N/trainer_state.json      step, data position, the loop's own state, sha256 of the files above

Saving (`save_checkpoint`) writes every file into a hidden temporary folder, fsyncs the files and the
folder, renames it to ``step-N`` and fsyncs ``checkpoints/``; only then does ``latest`` move (an atomic
file replace). A process killed at any moment therefore leaves ``latest`` naming a complete checkpoint
(or no pointer at all before the first save); the half-written folder is removed by the next save, and
by `remove_interrupted_saves` (with the temp file of a killed ``latest`` write) when a run starts.
`load_checkpoint` re-hashes every file against ``trainer_state.json`` before trusting it.

RNG states are those of python's `random`, NumPy's legacy global generator, torch's CPU generator and
every CUDA device's; dropout draws from torch's, so restoring them makes a resumed run draw the same
masks as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from aprender.atomic import atomic_write_text, remove_temp_files
from aprender.errors import FormatError
from aprender.format.safetensors import load_file, save_file
from entrenar.constants import TRAINER_STATE_NAME
from entrenar.errors import CheckpointError

__all__ = [
    "LATEST_FILENAME",
    "Checkpoint",
    "capture_rng_state",
    "checkpoint_steps",
    "file_sha256",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_checkpoints",
    "remove_interrupted_saves",
    "restore_rng_state",
    "save_checkpoint",
]

LATEST_FILENAME = "latest"
WEIGHTS_FILENAME = "trainable.safetensors"
OPTIMIZER_FILENAME = "optimizer.pt"
STATE_FILENAME = "state.pt"
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP_STEP_PREFIX = ".tmp-step-"  # a checkpoint being written: ``.tmp-step-N-<uuid4 hex>``
_HASH_CHUNK = 1 << 20


@dataclass
class Checkpoint:
    """Everything saved at one optimizer step.

    Attributes:
        step: Optimizer steps taken.
        weights: Trainable parameters by name (``model.named_parameters()``), on the CPU when loaded.
        optimizer: ``optimizer.state_dict()``.
        scheduler: ``scheduler.state_dict()``.
        scaler: ``LossScaler.state_dict()`` (empty without float16 loss scaling).
        rng: `capture_rng_state` output.
        data: ``DataLoader.state_dict()``: where the next batch starts.
        trainer: The loop's own state, JSON-serialisable (counters, metrics so far, early stopping, config).
        callbacks: Each stateful callback's ``state_dict()`` by its key (tensors allowed).
    """

    step: int
    weights: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    data: dict[str, int]
    trainer: dict[str, Any]
    callbacks: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator training may draw from.

    Returns:
        ``{"python", "numpy", "torch", "cuda"}``; loadable by ``torch.load(weights_only=True)``.
    """
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = numpy_state
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put the generators back as `capture_rng_state` found them (CUDA states only where devices exist).

    Args:
        state: A `capture_rng_state` result.
    """
    random.setstate(state["python"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# ---------------------------------------------------------------------------------------------- save


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(obj: Any, path: Path) -> None:
    with path.open("xb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())


def _write_files(folder: Path, checkpoint: Checkpoint) -> None:
    """All files of one checkpoint into `folder`, the trainer state (with the file hashes) last."""
    weights = {name: tensor.detach() for name, tensor in checkpoint.weights.items()}
    save_file(weights, folder / WEIGHTS_FILENAME, metadata={"format": "pt", "step": str(checkpoint.step)})
    _torch_save(checkpoint.optimizer, folder / OPTIMIZER_FILENAME)
    _torch_save(
        {
            "scheduler": checkpoint.scheduler,
            "scaler": checkpoint.scaler,
            "rng": checkpoint.rng,
            "callbacks": checkpoint.callbacks,
        },
        folder / STATE_FILENAME,
    )
    hashes = {name: file_sha256(folder / name) for name in (WEIGHTS_FILENAME, OPTIMIZER_FILENAME, STATE_FILENAME)}
    content = {"step": checkpoint.step, "data": checkpoint.data, "trainer": checkpoint.trainer, "files": hashes}
    atomic_write_text(folder / TRAINER_STATE_NAME, json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    _fsync_dir(folder)


def save_checkpoint(root: str | os.PathLike[str], checkpoint: Checkpoint, *, keep: int) -> Path:
    """Write ``root/step-N`` atomically, point ``root/latest`` at it, and keep only the newest `keep`.

    Checkpoint folders newer than this step (left by a run that was resumed from an earlier step) are
    removed with the old ones, as are temporary folders of interrupted saves. Saving the step that
    ``latest`` already names is a no-op (nothing has changed since).

    Args:
        root: The ``checkpoints`` folder (created if missing).
        checkpoint: What to save.
        keep: How many checkpoints to keep, >= 1.

    Returns:
        The checkpoint's folder.

    Raises:
        CheckpointError: `keep` below 1.
        OSError: The disk is full or not writable (the previous checkpoint stays intact).
    """
    if keep < 1:
        raise CheckpointError(f"keep={keep}: at least one checkpoint must be kept")
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{checkpoint.step}"
    if latest_checkpoint(folder) == final:
        return final
    tmp = folder / f"{_TMP_STEP_PREFIX}{checkpoint.step}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_files(tmp, checkpoint)
        if final.exists():  # a stale folder from a run abandoned beyond this step; latest never names it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder)
    atomic_write_text(folder / LATEST_FILENAME, f"{final.name}\n")
    _fsync_dir(folder)
    _prune(folder, checkpoint.step, keep)
    return final


def _prune(folder: Path, current: int, keep: int) -> None:
    """Remove checkpoints beyond the newest `keep` up to `current`, newer ones, and leftovers of saves."""
    kept = [step for step in checkpoint_steps(folder) if step <= current][-keep:]
    for entry in folder.iterdir():
        match = _STEP_DIR.fullmatch(entry.name)
        stale = match is not None and int(match.group(1)) not in kept
        if stale or _is_unfinished_save(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _is_unfinished_save(entry: Path) -> bool:
    return entry.name.startswith(_TMP_STEP_PREFIX) and entry.is_dir()


def remove_interrupted_saves(root: str | os.PathLike[str]) -> None:
    """Remove what killed saves left in the ``checkpoints`` folder; no-op when it does not exist.

    That is unfinished checkpoint folders and the temp files of atomic writes (``latest``'s, and any inside
    ``step-N``), never other files.

    Args:
        root: The ``checkpoints`` folder.
    """
    folder = Path(root)
    if not folder.is_dir():
        return
    remove_temp_files(folder)
    for entry in folder.iterdir():
        if _is_unfinished_save(entry):
            shutil.rmtree(entry, ignore_errors=True)
        elif _STEP_DIR.fullmatch(entry.name) and entry.is_dir():
            remove_temp_files(entry)


# ---------------------------------------------------------------------------------------------- load


def checkpoint_steps(root: str | os.PathLike[str]) -> list[int]:
    """Steps of the ``step-N`` folders under `root`, ascending (none when `root` does not exist)."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    steps = [_STEP_DIR.fullmatch(entry.name) for entry in folder.iterdir() if entry.is_dir()]
    return sorted(int(match.group(1)) for match in steps if match is not None)


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``root/latest`` names.

    Args:
        root: The ``checkpoints`` folder.

    Returns:
        Its folder, or None when there is no pointer (no checkpoint was completed).

    Raises:
        CheckpointError: The pointer is unreadable or names a folder that does not exist.
    """
    pointer = Path(root) / LATEST_FILENAME
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{pointer}: cannot be read ({exc}); pass --no-resume to start over") from exc
    target = Path(root) / name
    if _STEP_DIR.fullmatch(name) is None or not target.is_dir():
        raise CheckpointError(
            f"{pointer} names {name!r}, which is not a checkpoint folder; pass --no-resume to start over"
        )
    return target


def _read_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / TRAINER_STATE_NAME
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc}); the checkpoint is damaged") from exc
    if not isinstance(content, dict) or not {"step", "data", "trainer", "files"} <= content.keys():
        raise CheckpointError(f"{path}: not a trainer state written by entrenar; the checkpoint is damaged")
    return content


def _verify(folder: Path, hashes: dict[str, str]) -> None:
    for name in (WEIGHTS_FILENAME, OPTIMIZER_FILENAME, STATE_FILENAME):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint is incomplete")
        if file_sha256(path) != hashes.get(name):
            raise CheckpointError(f"{path}: contents do not match the hash in {TRAINER_STATE_NAME}; it is damaged")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/runtime errors of many kinds for a bad file
        raise CheckpointError(f"{path}: cannot be loaded ({exc}); the checkpoint is damaged") from exc


def load_checkpoint(folder: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint folder written by `save_checkpoint`, verifying every file's sha256.

    Args:
        folder: A ``step-N`` folder (e.g. `latest_checkpoint`'s).

    Returns:
        The checkpoint, tensors on the CPU.

    Raises:
        CheckpointError: A file is missing, damaged or does not match its recorded hash.
    """
    path = Path(folder)
    content = _read_trainer_state(path)
    _verify(path, content["files"])
    try:
        weights = load_file(path / WEIGHTS_FILENAME)
    except FormatError as exc:
        raise CheckpointError(f"{path / WEIGHTS_FILENAME}: {exc}") from exc
    state = _torch_load(path / STATE_FILENAME)
    return Checkpoint(
        step=int(content["step"]),
        weights=weights,
        optimizer=_torch_load(path / OPTIMIZER_FILENAME),
        scheduler=state["scheduler"],
        scaler=state["scaler"],
        rng=state["rng"],
        data=content["data"],
        trainer=content["trainer"],
        callbacks=state.get("callbacks", {}),  # checkpoints from before callbacks had state hold none
    )


def remove_checkpoints(root: str | os.PathLike[str]) -> None:
    """Delete the ``checkpoints`` folder and everything in it (starting a run over); no-op when absent."""
    shutil.rmtree(root, ignore_errors=True)
