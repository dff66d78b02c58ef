"""What ``entrenar prune`` is asked to do: a method, a sparsity or an N:M pattern, and layers to skip.

Methods (a registry, as mergekit lists its merge methods):

| method | importance of weight (i, j) | comparison group (unstructured) | calibration |
|---|---|---|---|
| ``magnitude`` | ``|W_ij|`` (Han et al. 2015) | the whole weight matrix of a layer | none |
| ``wanda`` | ``|W_ij| · ‖X_j‖₂`` (Sun et al. 2023) | each output row (every row loses as many) | needed |
| ``sparsegpt`` | ``w²/[H⁻¹]_qq`` + OBS updates (Frantar & Alistarh 2023) | the layer, per 128-column block | needed |

With an N:M pattern every method keeps the N most important of each group of M consecutive input weights
of a row instead (2:4 is what NVIDIA sparse tensor cores accelerate). These are the choices of the WANDA
and SparseGPT reference code (https://github.com/locuslab/wanda, https://github.com/IST-DASLab/sparsegpt).

Every linear layer inside the decoder layers is pruned (attention q/k/v/o and the MLP's gate/up/down);
the embeddings and the LM head are left dense, as the papers do. ``--skip`` patterns (shell globs matched
against module paths such as ``model.layers.0.mlp.down_proj``) keep more layers dense.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from aprender.errors import PruningError

__all__ = ["DEFAULT_SAMPLES", "MAX_DEFAULT_SEQ_LEN", "METHODS", "PATTERNS", "PruneMethod", "PruneSpec", "make_spec"]

DEFAULT_SAMPLES = 128
"""Calibration windows by default: the WANDA and SparseGPT papers' 128."""
MAX_DEFAULT_SEQ_LEN = 2048
"""Without ``--seq-len``: the model's context length, at most this (the papers' 2048)."""


@dataclass(frozen=True)
class PruneMethod:
    """A registered pruning method.

    Attributes:
        name: The ``--method`` value.
        title: A human name (reports, model cards).
        reference: The paper it comes from.
        needs_calibration: Whether it reads calibration activations.
        group: The comparison group of unstructured sparsity, in words.
    """

    name: str
    title: str
    reference: str
    needs_calibration: bool
    group: str


METHODS: dict[str, PruneMethod] = {
    method.name: method
    for method in (
        PruneMethod("magnitude", "Magnitude", "https://arxiv.org/abs/1506.02626", False, "layer"),
        PruneMethod("wanda", "WANDA", "https://arxiv.org/abs/2306.11695", True, "output row"),
        PruneMethod("sparsegpt", "SparseGPT", "https://arxiv.org/abs/2301.00774", True, "128-column block of a layer"),
    )
}
"""``--method`` name -> method."""

PATTERNS: dict[str, tuple[int, int]] = {"2:4": (2, 4), "4:8": (4, 8)}
"""``--pattern`` -> (N kept, of M consecutive input weights)."""


@dataclass(frozen=True)
class PruneSpec:
    """A validated request.

    Attributes:
        method: The method.
        sparsity: Fraction of each layer's weights to prune, in [0, 1); None with a pattern.
        pattern: ``"2:4"`` or ``"4:8"``; None with a sparsity.
        skip: Glob patterns of module paths to keep dense.
    """

    method: PruneMethod
    sparsity: float | None = None
    pattern: str | None = None
    skip: tuple[str, ...] = ()

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of the pattern, or None for unstructured sparsity."""
        return None if self.pattern is None else PATTERNS[self.pattern]

    @property
    def target(self) -> float:
        """The fraction of each pruned layer's weights that becomes zero."""
        if self.nm is not None:
            return 1 - self.nm[0] / self.nm[1]
        assert self.sparsity is not None
        return self.sparsity

    @property
    def group(self) -> str:
        """The comparison group in words."""
        return self.method.group if self.nm is None else f"each group of {self.nm[1]} input weights"

    def describe(self) -> str:
        """E.g. ``WANDA, 50% unstructured (per output row)`` or ``SparseGPT, 2:4``."""
        if self.pattern is not None:
            return f"{self.method.title}, {self.pattern}"
        return f"{self.method.title}, {100 * self.target:.4g}% unstructured (per {self.method.group})"

    def skips(self, module: str) -> bool:
        """Whether `module` (a path such as ``model.layers.0.mlp.down_proj``) is kept dense."""
        return any(fnmatch.fnmatchcase(module, pattern) for pattern in self.skip)


def make_spec(
    method: str, *, sparsity: float | None = None, pattern: str | None = None, skip: Sequence[str] = ()
) -> PruneSpec:
    """Check a request once, at the edge.

    Args:
        method: ``magnitude``, ``wanda`` or ``sparsegpt``.
        sparsity: Fraction to prune, in [0, 1); exclusive with `pattern`.
        pattern: ``2:4`` or ``4:8``; exclusive with `sparsity`.
        skip: Glob patterns of module paths to keep dense.

    Returns:
        The spec.

    Raises:
        PruningError: An unknown method or pattern, both or neither of sparsity and pattern, a sparsity
            outside [0, 1), or an empty skip pattern.
    """
    if method not in METHODS:
        raise PruningError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if (sparsity is None) == (pattern is None):
        raise PruningError("pass exactly one of --sparsity (e.g. 0.5) and --pattern (2:4 or 4:8)")
    if pattern is not None and pattern not in PATTERNS:
        raise PruningError(f"pattern {pattern!r} is unknown; use one of {', '.join(PATTERNS)}")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:  # NaN fails too
        raise PruningError(f"sparsity {sparsity!r} is outside [0, 1); pass a fraction such as 0.5")
    if any(not text.strip() for text in skip):
        raise PruningError("--skip got an empty pattern; pass a module path glob such as '*.down_proj'")
    return PruneSpec(METHODS[method], sparsity, pattern, tuple(skip))
