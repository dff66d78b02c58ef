"""What a command that takes a MODEL argument works on (``entrenar prune``, ``entrenar quantize``).

MODEL is anything ``model.path`` takes (a model folder, a ``.gguf`` file, a Hub id; `aprender.reference`) or a
training or merge output. `resolve_model_input` finds its weights; a LoRA/QLoRA adapter output is resolved to
its base (downloaded when a Hub id), and `dense_folder` folds the adapter into a copy of it, as ``entrenar
publish`` folds it (re-masked when the adapter was trained on a pruned base, `entrenar.prune.marks`), with the
output's tokenizer and generation config, which win over the base's (training may change the chat template).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aprender.constants import CHAT_TEMPLATE_DIR, GENERATION_CONFIG_NAME, TOKENIZER_FILE, TOKENIZER_FILES
from aprender.errors import InvalidArgumentError
from aprender.reference import ModelReference, classify_model_reference, resolve_model_folder
from entrenar.constants import ADAPTER_CONFIG_NAME

__all__ = ["ModelInput", "copy_model_files", "dense_folder", "resolve_model_input"]


@dataclass(frozen=True)
class ModelInput:
    """A resolved MODEL argument.

    Attributes:
        reference: The reference as classified.
        folder: The folder of the weights (an adapter output's base).
        adapter: The adapter output to fold into `folder`, or None.
        record: The output's ``final_model.json`` (empty for a plain model).
        techniques: What made it (``final_model.json``'s ``techniques``), empty for a plain model.
        base: The ``base_model`` a new ``final_model.json`` names: a training output's own base, else the
            model itself.
    """

    reference: ModelReference
    folder: Path
    adapter: Path | None
    record: dict[str, Any]
    techniques: tuple[str, ...]
    base: dict[str, Any]

    @property
    def tokenizer_folder(self) -> Path:
        """The adapter output's tokenizer when it has one, else the model's."""
        if self.adapter is not None and (self.adapter / TOKENIZER_FILE).is_file():
            return self.adapter
        return self.folder


def resolve_model_input(model: str | os.PathLike[str]) -> ModelInput:
    """Resolve the reference; for an adapter output, resolve its base too (downloaded when a Hub id).

    Raises:
        InvalidArgumentError: An adapter whose config names no base model.
        AprenderError: An unresolvable reference, Hub access, an unreadable record.
    """
    from entrenar.publish.detect import detect_model_folder, read_training_record

    reference = classify_model_reference(model)
    folder = resolve_model_folder(reference)
    record = read_training_record(folder) if reference.kind == "folder" else {}
    if not (folder / ADAPTER_CONFIG_NAME).is_file():
        techniques = detect_model_folder(folder).techniques if record else ()
        base = record.get("base_model") or _base_record(reference, folder, None)
        return ModelInput(reference, folder, None, record, tuple(techniques), base)
    from entrenar.publish.export import resolve_base_model

    detected = detect_model_folder(folder)
    if detected.base_model is None:
        raise InvalidArgumentError(f"{folder}: {ADAPTER_CONFIG_NAME} names no base model; fold the adapter in first")
    base_dir = resolve_base_model(detected.base_model, detected.base_revision, offline=False)
    base_reference = classify_model_reference(detected.base_model)
    base = record.get("base_model") or _base_record(base_reference, base_dir, detected.base_revision)
    return ModelInput(reference, base_dir, folder, record, tuple(detected.techniques), base)


def _base_record(reference: ModelReference, folder: Path, revision: str | None) -> dict[str, Any]:
    """``final_model.json``'s ``base_model`` for a model reference resolved to `folder`."""
    hub = reference.kind == "hub"
    return {
        "path": reference.location if hub else str(Path(reference.location).absolute()),
        "source": "hub" if hub else "local",
        "revision": revision if hub else None,
        "resolved_revision": folder.name if hub else None,
    }


def dense_folder(source: ModelInput, work: Path) -> Path:
    """The model's folder: as it is, or with the adapter folded into a copy in `work` (module docstring)."""
    if source.adapter is None:
        return source.folder
    from entrenar.lora.merge import merge_adapter_into_checkpoint
    from entrenar.prune.marks import adapter_masks

    merge_adapter_into_checkpoint(source.folder, source.adapter, work, masks=adapter_masks(source.adapter))
    copy_model_files(source.adapter, work, (GENERATION_CONFIG_NAME, *TOKENIZER_FILES))
    return work


def copy_model_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy the named files that `source` has, and its chat template folder, into `target`."""
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    if (source / CHAT_TEMPLATE_DIR).is_dir():
        shutil.copytree(source / CHAT_TEMPLATE_DIR, target / CHAT_TEMPLATE_DIR, dirs_exist_ok=True)
