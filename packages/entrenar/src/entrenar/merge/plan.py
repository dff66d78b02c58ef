"""Which input tensors make each output tensor of a merge, as mergekit plans it.

A merge config is a list of output slices, each taking the same number of layers from each of its sources
(``models:`` is one slice over all layers of every model). The output's decoder layers are the slices'
layers in order, renumbered from 0. Tensors outside the layers come from the first slice's sources (the
embedding) or the last slice's (final norm, LM head). Each output tensor carries the layer position ``t``
its gradient parameters are evaluated at: ``index / (layers - 1)`` within its slice (1 for a one-layer
slice), 0 outside the layers (mergekit's ``plan.py``).

Tensor names come from the checkpoints themselves (``model.layers.N.<rest>``), not from a table per
architecture, so every family the loader knows plans the same way; inputs must agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from entrenar.errors import MergeError

__all__ = ["VOCAB_TENSORS", "PlannedTensor", "SliceSpec", "plan_tensors"]

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
"""Tensors with one row per token (mergekit's ``vocabulary_axis: 0``)."""
_PRE = ("model.embed_tokens.",)


@dataclass(frozen=True)
class SliceSpec:
    """One output slice: for each source, its input index and the layers ``[start, end)`` it gives."""

    sources: tuple[tuple[int, int, int], ...]

    @property
    def num_layers(self) -> int:
        """Layers the slice contributes (every source gives as many)."""
        _, start, end = self.sources[0]
        return end - start


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor.

    Attributes:
        name: Its name in the output checkpoint.
        sources: (input index, tensor name in that input) per source, in the slice's order.
        t: The layer position gradients are evaluated at.
        slice_index: The slice it belongs to.
        vocab: Whether its rows are tokens (embedding, LM head).
    """

    name: str
    sources: tuple[tuple[int, str], ...]
    t: float
    slice_index: int
    vocab: bool


def _split(names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(pre, per-layer suffixes in first-layer order, post) of one checkpoint's tensor names."""
    pre: list[str] = []
    post: list[str] = []
    suffixes: list[str] = []
    for name in names:
        match = _LAYER.fullmatch(name)
        if match is None:
            (pre if name.startswith(_PRE) else post).append(name)
        elif match[1] == "0":
            suffixes.append(match[2])
    return pre, suffixes, post


def plan_tensors(
    slices: Sequence[SliceSpec], tensor_names: Mapping[int, Sequence[str]], num_layers: Mapping[int, int]
) -> tuple[list[PlannedTensor], int]:
    """Plan every output tensor.

    Args:
        slices: The output slices, in order.
        tensor_names: Input index -> its checkpoint's tensor names.
        num_layers: Input index -> its decoder layers.

    Returns:
        The planned tensors (embedding first, then the layers in output order, then the rest) and the
        output's number of layers.

    Raises:
        MergeError: A layer range outside an input, slices whose sources give different numbers of layers,
            or inputs whose tensor names differ.
    """
    _check_slices(slices, num_layers)
    first = slices[0].sources[0][0]
    pre, suffixes, post = _split(tensor_names[first])
    layout = tuple(sorted(part) for part in (pre, suffixes, post))
    for index, names in tensor_names.items():
        if tuple(sorted(part) for part in _split(names)) != layout:  # the order of a checkpoint's tensors is free
            raise MergeError(
                f"input {index + 1} has other tensors than input {first + 1} "
                f"(e.g. {_first_difference(tensor_names[first], names)!r}); the architectures disagree"
            )
    planned = [_outside(name, slices[0], 0) for name in pre]
    layer = 0
    for slice_index, spec in enumerate(slices):
        for offset in range(spec.num_layers):
            t = offset / (spec.num_layers - 1) if spec.num_layers > 1 else 1.0
            for suffix in suffixes:
                sources = tuple((i, f"model.layers.{start + offset}.{suffix}") for i, start, _ in spec.sources)
                planned.append(PlannedTensor(f"model.layers.{layer}.{suffix}", sources, t, slice_index, False))
            layer += 1
    planned.extend(_outside(name, slices[-1], len(slices) - 1) for name in post)
    return planned, layer


def _outside(name: str, spec: SliceSpec, slice_index: int) -> PlannedTensor:
    sources = tuple((index, name) for index, _, _ in spec.sources)
    return PlannedTensor(name, sources, 0.0, slice_index, name in VOCAB_TENSORS)


def _check_slices(slices: Sequence[SliceSpec], num_layers: Mapping[int, int]) -> None:
    if not slices:
        raise MergeError("the merge has no slices or models; list the models to merge")
    for number, spec in enumerate(slices, start=1):
        lengths = {end - start for _, start, end in spec.sources}
        if len(lengths) != 1:
            raise MergeError(
                f"slices[{number - 1}]: its sources give {sorted(lengths)} layers; every source of a slice must "
                "give as many layers"
            )
        for index, start, end in spec.sources:
            if not 0 <= start < end <= num_layers[index]:
                raise MergeError(
                    f"slices[{number - 1}]: layer_range [{start}, {end}] is outside input {index + 1}'s "
                    f"{num_layers[index]} layers"
                )


def _first_difference(left: Sequence[str], right: Sequence[str]) -> str:
    return sorted(set(left) ^ set(right))[0] if set(left) != set(right) else "layer layout"
