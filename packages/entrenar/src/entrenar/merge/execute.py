"""Run a planned merge tensor by tensor: at most one tensor per input and one output shard in memory.

For each `PlannedTensor` the executor reads the tensor of that name from every source (float32), lines
up vocabulary rows when the inputs' vocabularies differ (`entrenar.merge.vocab`), resolves the method's
parameters for it, merges and hands the result, in the output dtype, to a streaming
`aprender.format.safetensors.CheckpointWriter`. Inputs are read through memory maps that are reopened
every `REOPEN_BYTES` read, so the pages of tensors already merged leave memory (as
`entrenar.models.loading` does when it loads a model).

Before any tensor is read, `check_shapes` compares the shapes of every planned tensor across its sources
from the checkpoint headers alone: a mismatch is one error naming the tensor and each input's shape, and
nothing has been written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import Tensor

from aprender.format.safetensors import CheckpointReader, CheckpointWriter, open_checkpoint
from entrenar.errors import MergeError
from entrenar.merge.base import MergeMethod, ResolvedParameters, TensorGroup
from entrenar.merge.methods import validate_group
from entrenar.merge.plan import PlannedTensor

__all__ = ["REOPEN_BYTES", "InputReaders", "check_shapes", "run_plan", "tensor_seed"]

REOPEN_BYTES = 64 * 2**20
"""Bytes read from one input before its memory map is closed and reopened."""

ParameterResolver = Callable[[PlannedTensor], ResolvedParameters]
"""The method's parameters for one planned tensor (the config's settings at its name and layer position)."""
RowAligner = Callable[[list[Tensor], list[int], "int | None"], list[Tensor]]
"""``align(tensors, input_indices, base_position)``: the sources' vocabulary rows re-indexed to the output
vocabulary (when the vocabularies differ)."""
BaseOf = Callable[[PlannedTensor], "int | None"]
"""The input index of the base model of a planned tensor's slice, or None."""


class InputReaders:
    """The input checkpoints, opened lazily and reopened every `REOPEN_BYTES` read from each.

    Args:
        folders: One model folder per input, in input order.
    """

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(folders)
        self._stack = ExitStack()
        self._readers: list[CheckpointReader | None] = [None] * len(self.folders)
        self._read = [0] * len(self.folders)

    def reader(self, index: int) -> CheckpointReader:
        """The open reader of input `index`."""
        reader = self._readers[index]
        if reader is None or self._read[index] >= REOPEN_BYTES:
            if reader is not None:
                reader.close()
            reader = open_checkpoint(self.folders[index])
            self._readers[index], self._read[index] = reader, 0
        return reader

    def tensor(self, index: int, name: str) -> Tensor:
        """Tensor `name` of input `index` as float32 (a copy, so the map's pages can go)."""
        tensor = self.reader(index).get_tensor(name)
        self._read[index] += tensor.numel() * tensor.element_size()
        return tensor.to(torch.float32, copy=True)

    def close(self) -> None:
        """Close every reader."""
        for reader in self._readers:
            if reader is not None:
                reader.close()
        self._readers = [None] * len(self.folders)

    def __enter__(self) -> InputReaders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_shapes(plan: Sequence[PlannedTensor], readers: InputReaders, names: Sequence[str], vocab_merge: bool) -> None:
    """Refuse, before anything is written, a planned tensor whose sources differ in shape.

    Args:
        plan: The planned tensors.
        readers: The inputs.
        names: Each input's name for messages (its model reference).
        vocab_merge: The vocabularies are being rebuilt: vocabulary tensors may differ in rows.

    Raises:
        MergeError: One line naming the tensor and every input's shape.
    """
    for planned in plan:
        shapes = []
        for index, name in planned.sources:
            reader = readers.reader(index)
            if name not in reader:
                raise MergeError(f"{names[index]} has no tensor {name!r}; the architectures disagree")
            shapes.append(list(reader.shape(name)))
        compared = [shape[1:] for shape in shapes] if planned.vocab and vocab_merge else shapes
        if any(shape != compared[0] for shape in compared):
            described = ", ".join(f"{names[i]}: {shape}" for (i, _), shape in zip(planned.sources, shapes, strict=True))
            raise MergeError(f"tensor {planned.name!r} has different shapes ({described}); these models cannot merge")


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one tensor: the same config seed and name give the same random draws."""
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:16], 16) >> 1


def run_plan(
    plan: Sequence[PlannedTensor],
    readers: InputReaders,
    method: MergeMethod,
    parameters: ParameterResolver,
    *,
    base_of: BaseOf,
    out_dir: str | os.PathLike[str],
    out_dtype: torch.dtype,
    seed: int,
    align_rows: RowAligner | None = None,
    max_shard_size: int | str = "5GB",
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Merge every planned tensor and write the output checkpoint.

    Args:
        plan: The planned tensors.
        readers: The inputs.
        method: The merge method.
        parameters: Resolves the method's parameters for a tensor.
        base_of: The input index of a tensor's base model (its slice's), None without one.
        out_dir: Where the checkpoint is written (shards + index when large).
        out_dtype: The dtype written.
        seed: The seed of random methods.
        align_rows: Lines up vocabulary rows when the vocabularies differ; None when they are the same.
        max_shard_size: Largest output shard.
        progress: Called as ``progress(done, total)`` after each tensor.

    Returns:
        The weight files written.
    """
    with CheckpointWriter(out_dir, max_shard_size=max_shard_size) as writer:
        for done, planned in enumerate(plan, start=1):
            tensors = [readers.tensor(index, name) for index, name in planned.sources]
            inputs = [index for index, _ in planned.sources]
            base = base_of(planned)
            position = inputs.index(base) if base in inputs else None
            if planned.vocab and align_rows is not None:
                tensors = align_rows(tensors, inputs, position)
            group = TensorGroup(planned.name, tuple(tensors), position)
            validate_group(method, group)
            generator = torch.Generator().manual_seed(tensor_seed(seed, planned.name)) if method.random else None
            merged = method.merge(group, parameters(planned), generator)
            writer.save_tensor(planned.name, merged.to(out_dtype))
            del tensors, group, merged
            if progress is not None:
                progress(done, len(plan))
        return writer.finalize()
