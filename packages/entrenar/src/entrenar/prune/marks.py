"""Which models are sparse, and whether what is done to them next keeps their zeros.

A pruned model is marked by the ``prune`` section of its ``final_model.json``: ``entrenar prune`` writes it, and
so does training with ``prune:`` (a full fine-tune's weights hold the zeros; a LoRA output's masks are re-applied
when publishing). The section lists every pruned module and the fraction of their weights that is zero
(`SparsityMark`, `read_mark`).

Everything that may fill those zeros afterwards counts them in what it wrote and says plainly which way it
went (`count_zeros` -> `SparsityCheck`, one line for the log and a dict for the record and the model card):

- training on a pruned base without ``prune: {schedule: keep}`` (said when the run starts: training or merging
  the adapter will fill them);
- ``entrenar publish``: the merged weights (an adapter merged into a pruned base, re-masked or not) and a GGUF
  file's decoded tensors (each GGUF type rounds zero its own way);
- ``entrenar merge``: the merged model, for each pruned input.

An adapter trained on a pruned base carries its masks (``prune.masks`` of its record names the file); every
place that folds an adapter into its base (``entrenar publish``, ``entrenar prune``, ``entrenar merge``'s
``model+adapter``) re-applies them (`adapter_masks`), so folding never silently fills the base's zeros.

"Kept" means the written weights of the pruned modules hold at least as many zeros as the mark records; an
operation that moved zeros around without losing any would pass, which none of ours does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from entrenar.constants import FINAL_MODEL_NAME

__all__ = [
    "SparsityCheck",
    "SparsityMark",
    "adapter_masks",
    "check_folder",
    "check_gguf",
    "count_zeros",
    "mark_of",
    "read_mark",
]


@dataclass(frozen=True)
class SparsityMark:
    """A pruned model's record of its zeros.

    Attributes:
        source: The model, as messages name it.
        description: How it was pruned, e.g. ``WANDA, 50% unstructured``.
        weights: Checkpoint names of the pruned weights (``model.layers.0.mlp.up_proj.weight`` ...).
        zeros: How many of their entries the record says are zero.
        total: How many entries they have.
    """

    source: str
    description: str
    weights: tuple[str, ...]
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        """``zeros / total``."""
        return self.zeros / self.total


def mark_of(record: Mapping[str, Any], source: str) -> SparsityMark | None:
    """The mark in a ``final_model.json`` record, or None when it holds no pruning with recorded zeros."""
    prune = record.get("prune")
    if not isinstance(prune, Mapping):
        return None
    modules, sparsity, total = prune.get("modules"), prune.get("pruned_sparsity"), prune.get("pruned_weights")
    if not (isinstance(modules, Mapping) and modules and isinstance(total, int) and isinstance(sparsity, float)):
        return None
    if sparsity <= 0 or total <= 0:
        return None
    return SparsityMark(
        source=source,
        description=_describe(prune),
        weights=tuple(f"{module}.weight" for module in modules),
        zeros=round(sparsity * total),
        total=total,
    )


def _describe(prune: Mapping[str, Any]) -> str:
    """``WANDA, 50% unstructured``, ``SparseGPT, 2:4``, ``magnitude, gradual to 50%``, ``zeros of its base kept``."""
    if prune.get("schedule") == "keep":
        return "trained keeping its base's zeros"
    title = prune.get("title") or prune.get("method")
    if prune.get("pattern"):
        amount = str(prune["pattern"])
    else:
        amount = f"{100 * float(prune.get('sparsity') or 0):.4g}% unstructured"
    schedule = ", gradual" if prune.get("schedule") == "gradual" else ""
    return f"{title}, {amount}{schedule}"


def read_mark(folder: Path) -> SparsityMark | None:
    """The mark of a full model folder (its weights hold the zeros), or None: no record, not pruned, an adapter."""
    path = folder / FINAL_MODEL_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # an unreadable record marks nothing; the commands that need it report it themselves
    if not isinstance(record, dict) or record.get("output") != "full":
        return None
    return mark_of(record, str(folder))


@dataclass(frozen=True)
class SparsityCheck:
    """The zeros of a pruned model counted again in something made from it.

    Attributes:
        mark: The pruned model's mark.
        what: What was counted, e.g. ``the merged model`` or ``the GGUF file (Q8_0)``.
        zeros: Zeros now among the pruned weights present in it.
        total: Their entries (fewer than the mark's when some weights are absent, e.g. layers sliced away).
        expected: The zeros the mark records for those weights.
    """

    mark: SparsityMark
    what: str
    zeros: int
    total: int
    expected: int

    @property
    def kept(self) -> bool:
        """Whether at least the recorded zeros are there."""
        return self.zeros >= self.expected

    def line(self) -> str:
        """One line for the log and the model card."""
        now = 100 * self.zeros / self.total if self.total else 0.0
        before = 100 * self.expected / self.total if self.total else 0.0
        verdict = "keeps" if self.kept else "does not keep"
        return (
            f"{self.mark.source} is pruned ({self.mark.description}); {self.what} {verdict} its zeros: {now:.2f}% of "
            f"the pruned layers' weights are zero ({before:.2f}% before)"
        )

    def record(self) -> dict[str, Any]:
        """For ``final_model.json`` and the card."""
        return {
            "model": self.mark.source,
            "pruning": self.mark.description,
            "what": self.what,
            "kept": self.kept,
            "sparsity_before": self.expected / self.total if self.total else 0.0,
            "sparsity_after": self.zeros / self.total if self.total else 0.0,
            "line": self.line(),
        }


def count_zeros(mark: SparsityMark, what: str, tensor: Callable[[str], torch.Tensor | None]) -> SparsityCheck:
    """Count the zeros of the mark's weights in something made from the model.

    Args:
        mark: The pruned model's mark.
        what: What is counted, for the line.
        tensor: A weight by checkpoint name, or None when that weight is not there.

    Returns:
        The check; the expected zeros are the mark's, scaled to the weights present.
    """
    zeros = total = 0
    for name in mark.weights:
        weight = tensor(name)
        if weight is None:
            continue
        zeros += int((weight == 0).sum())
        total += weight.numel()
    expected = mark.zeros if total == mark.total else round(mark.sparsity * total)
    return SparsityCheck(mark, what, zeros, total, expected)


def check_folder(mark: SparsityMark, what: str, folder: Path) -> SparsityCheck:
    """`count_zeros` over a safetensors model folder."""
    from aprender.format.safetensors import open_checkpoint

    with open_checkpoint(folder) as reader:
        return count_zeros(mark, what, lambda name: reader.get_tensor(name) if name in reader else None)


def check_gguf(mark: SparsityMark, what: str, path: Path) -> SparsityCheck:
    """`count_zeros` over a GGUF file, each weight decoded as llama.cpp decodes it (the name mapping permutes
    no more than the rows of a weight, which leaves its zeros as many)."""
    from aprender.format.gguf import read_gguf
    from aprender.format.gguf_export import gguf_tensor_name

    with read_gguf(path) as gguf:

        def tensor(name: str) -> torch.Tensor | None:
            gguf_name = gguf_tensor_name(name)
            return gguf.load_tensor(gguf_name) if gguf_name in gguf.tensors else None

        return count_zeros(mark, what, tensor)


def adapter_masks(adapter_dir: Path) -> dict[str, torch.Tensor] | None:
    """The masks of an adapter trained on a pruned base (``prune.masks`` of its ``final_model.json``), or None.

    Raises:
        PruningError: The record names a masks file that is not there.
    """
    from safetensors.torch import load_file

    from aprender.errors import PruningError

    path = adapter_dir / FINAL_MODEL_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the commands that read the record report it themselves
    prune = record.get("prune") if isinstance(record, dict) else None
    name = prune.get("masks") if isinstance(prune, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if not (adapter_dir / name).is_file():
        raise PruningError(f"{adapter_dir}: final_model.json names pruning masks {name} that are missing; restore it")
    return load_file(adapter_dir / name)
