"""The input models of a merge: resolved to local folders, adapters folded in, architectures checked.

A reference is what `aprender.reference` takes (a folder, a ``.gguf`` file, a Hub id with an optional
revision), optionally with a PEFT adapter to fold into it first (mergekit's ``model+adapter``): the
adapter is merged into a copy of the model in the merge's work folder
(`entrenar.lora.merge_adapter_into_checkpoint`; an adapter trained on a pruned base re-masked with its masks,
`entrenar.prune.marks.adapter_masks`), and that copy is the input.

Inputs must be one architecture: the same model type and the sizes that make tensor shapes (hidden size,
MLP width, heads, head width, key/value heads, tied embeddings). Layer counts may differ (slices pick
layers) and so may vocabularies (`entrenar.merge.vocab`, with a ``tokenizer_source``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aprender.reference import resolve_model_folder
from entrenar.constants import ADAPTER_CONFIG_NAME
from entrenar.errors import MergeError
from entrenar.lora.merge import merge_adapter_into_checkpoint
from entrenar.models import ModelConfig, read_config
from entrenar.prune.marks import adapter_masks

__all__ = ["ARCHITECTURE_FIELDS", "MergeInput", "check_architectures", "resolve_inputs"]

ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "tie_word_embeddings",
)
"""What inputs must agree on (`entrenar.models.ModelConfig` fields)."""


@dataclass(frozen=True)
class MergeInput:
    """One input model.

    Attributes:
        name: How the config names it (messages, model card).
        folder: Its local folder (the adapter already folded in).
        config: Its architecture.
        revision: The Hub revision asked for (None: the default branch, or a local model).
        resolved_revision: The commit the Hub snapshot is (None for a local model).
    """

    name: str
    folder: Path
    config: ModelConfig
    revision: str | None = None
    resolved_revision: str | None = None


def resolve_inputs(references: Sequence[tuple[str, str | None, str | None]], work: Path) -> list[MergeInput]:
    """Local folders for (reference, revision, adapter) triples, adapters folded into copies in `work`.

    Args:
        references: One (model reference, revision, adapter reference or None) per input.
        work: A folder for the folded copies (the caller removes it).

    Returns:
        The inputs, in order.

    Raises:
        ModelReferenceError, HubError, ConversionError: A reference cannot be resolved.
        CheckpointError, ModelConfigError: A folder without a usable ``config.json``.
        LoraError: An adapter that does not fit its model.
    """
    inputs = []
    for number, (reference, revision, adapter) in enumerate(references):
        folder = resolve_model_folder(reference, revision)
        name = reference if revision is None else f"{reference}@{revision}"
        if adapter is not None:
            adapter_dir = resolve_model_folder(adapter, None, tokenizer=False, extra_files=(ADAPTER_CONFIG_NAME,))
            folded = work / f"input-{number}"
            merge_adapter_into_checkpoint(folder, adapter_dir, folded, masks=adapter_masks(adapter_dir))
            folder, name = folded, f"{name}+{adapter}"
        snapshot = folder.name if revision is not None or _in_hub_cache(folder) else None
        inputs.append(MergeInput(name, folder, read_config(folder), revision, snapshot))
    return inputs


def _in_hub_cache(folder: Path) -> bool:
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def check_architectures(inputs: Sequence[MergeInput]) -> None:
    """Refuse inputs of different architectures, naming the first field that differs and both values.

    Raises:
        MergeError: One line.
    """
    first = inputs[0]
    for other in inputs[1:]:
        for name in ARCHITECTURE_FIELDS:
            mine, theirs = getattr(first.config, name), getattr(other.config, name)
            if mine != theirs:
                raise MergeError(
                    f"{other.name} has {name} {theirs!r} but {first.name} has {mine!r}; only models of one "
                    "architecture can merge"
                )
