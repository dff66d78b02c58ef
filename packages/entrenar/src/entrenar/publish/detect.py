"""What a folder given to ``entrenar publish`` holds: an adapter, a full model, or only a checkpoint.

A finished training run leaves the output folder of DESIGN.md section 4:

- a LoRA/QLoRA run: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT format);
- a full fine-tune: ``config.json`` + ``model.safetensors`` (or shards + ``model.safetensors.index.json``);
- both kinds: tokenizer files, ``generation_config.json``, ``final_model.json`` (the training record),
  ``metrics.jsonl`` (the loss log) and ``checkpoints/step-N/`` (resume state, never published).

A checkpoint (``checkpoints/step-N/`` with ``trainer_state.json``) holds trainable weights and optimizer
state for resuming, not a model others can load: it is refused with a message that names the folder to
publish instead, or says to finish training first. Any PEFT adapter folder or Hugging Face model folder
works too; without ``final_model.json`` the card simply has no training details.

``final_model.json`` says what the folder holds (``output``: adapter or full) and what made it
(``techniques``: any names, e.g. ``["qlora", "distill"]``). Files written before ``techniques`` existed
have a ``method`` (lora, qlora or full) instead, which stands for that one technique.

Example:
    >>> folder = detect_model_folder("output")  # doctest: +SKIP
    >>> folder.kind, folder.techniques, folder.base_model  # doctest: +SKIP
    ('adapter', ('lora',), 'Qwen/Qwen2.5-0.5B')
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aprender.constants import CONFIG_NAME, SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE
from entrenar.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CHECKPOINTS_DIR,
    FINAL_MODEL_NAME,
    METHODS,
    METRICS_NAME,
    OUTPUTS,
    TRAINER_STATE_NAME,
)
from entrenar.errors import LoraError, PublishError
from entrenar.lora.peft_io import read_adapter_config

__all__ = ["ModelFolder", "detect_model_folder", "read_training_record"]

_STEP_DIR = re.compile(r"step-(\d+)")
_WEIGHTS = (SAFETENSORS_SINGLE_FILE, SAFETENSORS_INDEX_FILE)

FolderKind = Literal["adapter", "full"]


@dataclass(frozen=True)
class ModelFolder:
    """A publishable folder.

    Attributes:
        path: The folder.
        kind: ``"adapter"`` (PEFT LoRA adapter) or ``"full"`` (a Hugging Face model).
        techniques: What made it: the record's ``techniques`` (or its older ``method``), else ``("lora",)``
            for an adapter and ``("full",)`` for a model.
        base_model: Hub id or path of the base model (the adapter's ``base_model_name_or_path``, else
            the record's ``base_model.path``); None when neither says.
        base_revision: The base model's revision: the commit the run used (``base_model.resolved_revision``)
            when the record describes this base, else the adapter's ``revision``; None for the default branch.
        record: The parsed ``final_model.json`` (empty without one).
        metrics_path: ``metrics.jsonl`` when present.
    """

    path: Path
    kind: FolderKind
    techniques: tuple[str, ...]
    base_model: str | None
    base_revision: str | None
    record: dict[str, Any] = field(default_factory=dict)
    metrics_path: Path | None = None


def read_training_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``final_model.json`` of a training output folder.

    Args:
        folder: The output folder.

    Returns:
        The JSON object; empty when the folder has no ``final_model.json``.

    Raises:
        PublishError: The file is not a JSON object, ``output`` is not one of `OUTPUTS`, ``techniques`` is
            not a list of names, or an older file's ``method`` is not one of `METHODS`.
    """
    path = Path(folder) / FINAL_MODEL_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PublishError(f"{path}: cannot be read as JSON ({exc}); fix or delete the file") from exc
    if not isinstance(record, dict):
        raise PublishError(f"{path}: holds a JSON {type(record).__name__}, not an object; fix or delete the file")
    method = record.get("method")
    if method is not None and method not in METHODS:
        raise PublishError(f"{path}: method {method!r} is not one of {', '.join(METHODS)}; fix the file")
    output = record.get("output")
    if output is not None and output not in OUTPUTS:
        raise PublishError(f"{path}: output {output!r} is not one of {', '.join(OUTPUTS)}; fix the file")
    techniques = record.get("techniques")
    if techniques is not None and not (
        isinstance(techniques, list) and all(isinstance(t, str) and t.strip() for t in techniques)
    ):
        raise PublishError(f'{path}: techniques must be a list of names such as ["lora"]; fix the file')
    base = record.get("base_model")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("path"), str)):
        raise PublishError(f"{path}: base_model must be an object with a string 'path'; fix the file")
    return record


def _recorded_base(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(path or Hub id, revision) of the record's base model; the revision is the exact commit trained on."""
    base = record.get("base_model")
    if base is None:
        return None, None
    return base["path"], base.get("resolved_revision") or base.get("revision")


def _techniques(record: dict[str, Any], kind: FolderKind) -> tuple[str, ...]:
    """The record's techniques: ``techniques``, else the older ``method``, else what the folder kind implies."""
    if record.get("techniques"):
        return tuple(record["techniques"])
    if record.get("method"):
        return (record["method"],)
    return ("lora",) if kind == "adapter" else ("full",)


def _check_output(folder: Path, record: dict[str, Any], kind: FolderKind) -> None:
    """Refuse a record that says the folder holds the other kind of output."""
    said = record.get("output") or ("full" if record.get("method") == "full" else None)
    if said is not None and said != kind:
        key = f"output {said!r}" if record.get("output") else "method 'full'"
        held = "an adapter" if kind == "adapter" else "a full model"
        raise PublishError(f"{folder}: {FINAL_MODEL_NAME} says {key} but the folder holds {held}; fix the record")


def detect_model_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """Say what `path` holds and gather what publishing needs from it.

    Args:
        path: A training output folder, a PEFT adapter folder or a Hugging Face model folder.

    Returns:
        The `ModelFolder`.

    Raises:
        PublishError: No such folder; a checkpoint (the message names the folder to publish, or says to
            finish training); an adapter config without weights or the reverse; nothing publishable.
        LoraError: ``adapter_config.json`` is invalid or describes an unsupported adapter.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such folder; pass the training output folder (default ./output)")
    _refuse_checkpoint(folder)
    record = read_training_record(folder)
    metrics = folder / METRICS_NAME
    metrics_path = metrics if metrics.is_file() else None
    if (folder / ADAPTER_CONFIG_NAME).is_file() or (folder / ADAPTER_WEIGHTS_NAME).is_file():
        return _adapter_folder(folder, record, metrics_path)
    if (folder / CONFIG_NAME).is_file() and any((folder / name).is_file() for name in _WEIGHTS):
        _check_output(folder, record, "full")
        base, revision = _recorded_base(record)
        return ModelFolder(folder, "full", _techniques(record, "full"), base, revision, record, metrics_path)
    if (folder / CHECKPOINTS_DIR).is_dir():
        raise PublishError(
            f"{folder}: holds checkpoints but no final model, so training did not finish; run "
            f"`entrenar train CONFIG --resume` to the end, then publish {folder}"
        )
    raise PublishError(
        f"{folder}: holds neither an adapter ({ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME}) nor a model "
        "(config.json + model.safetensors); pass the output folder of a finished training run"
    )


def _adapter_folder(folder: Path, record: dict[str, Any], metrics_path: Path | None) -> ModelFolder:
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise PublishError(f"{folder}: has an adapter but no {name}; re-save the adapter or finish training")
    try:
        adapter = read_adapter_config(folder)
    except LoraError as exc:
        raise PublishError(str(exc)) from exc
    _check_output(folder, record, "adapter")
    base, revision = _recorded_base(record)
    if adapter.base_model_name_or_path and adapter.base_model_name_or_path != base:
        base, revision = adapter.base_model_name_or_path, adapter.revision
    return ModelFolder(folder, "adapter", _techniques(record, "adapter"), base, revision, record, metrics_path)


def _refuse_checkpoint(folder: Path) -> None:
    """Raise for ``checkpoints/step-N`` folders and the ``checkpoints`` folder itself."""
    if (folder / TRAINER_STATE_NAME).is_file():
        match = _STEP_DIR.fullmatch(folder.name)
        step = f" (step {match.group(1)})" if match else ""
        output = folder.parent.parent if folder.parent.name == CHECKPOINTS_DIR else None
        hint = (
            f"publish the output folder {output} once training has finished"
            if output is not None
            else "publish the output folder of the finished run"
        )
        raise PublishError(
            f"{folder}: is a training checkpoint{step} holding resume state, not a model; {hint} "
            "(`entrenar train CONFIG --resume` finishes an interrupted run)"
        )
    if folder.name == CHECKPOINTS_DIR and any(_STEP_DIR.fullmatch(p.name) for p in folder.iterdir() if p.is_dir()):
        raise PublishError(
            f"{folder}: is the checkpoints folder of a run; publish its parent {folder.parent} once training "
            "has finished (`entrenar train CONFIG --resume` finishes an interrupted run)"
        )
