"""Streaming accumulators for evaluation loops: weighted mean, perplexity and token accuracy.

Each keeps only running sums, so ``compute()`` after any number of ``update`` calls equals the
one-shot metric on the concatenated inputs, and ``a.merge(b)`` (for example across data-parallel
workers) equals one accumulator fed both streams. Tensors are reduced on their own device; only a
few scalars per update reach python.

Example::

    ppl = PerplexityAccumulator()
    for batch in loader:
        log_probs = logits.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
        ppl.update(log_probs, mask=labels != -100)
    print(ppl.compute())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from aprender.errors import MetricInputError
from aprender.metrics._arrays import ArrayLike, as_backend_array, dtype_kind, match_backend, to_float64
from aprender.metrics.language import exp_mean_nll, match_totals, nll_totals

_Acc = TypeVar("_Acc", bound="_Accumulator")


@dataclass
class _Accumulator:
    """Shared ``reset`` and ``merge`` over the dataclass fields listed in ``_SUMS``."""

    _SUMS: ClassVar[tuple[str, ...]] = ()

    def reset(self) -> None:
        """Forget everything accumulated (options such as ``ignore_index`` are kept)."""
        for field in fields(self):
            if field.name in self._SUMS:
                setattr(self, field.name, field.default)

    def merge(self: _Acc, other: _Acc) -> _Acc:
        """Add ``other``'s sums into this accumulator (in place) and return it.

        Raises:
            MetricInputError: ``other`` is another kind of accumulator or has other options.
        """
        if type(other) is not type(self):
            raise MetricInputError(f"cannot merge {type(other).__name__} into {type(self).__name__}; merge like kinds")
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name in self._SUMS:
                setattr(self, field.name, mine + theirs)
            elif mine != theirs:
                raise MetricInputError(f"cannot merge: {field.name} is {theirs!r} there but {mine!r} here")
        return self


@dataclass
class MeanAccumulator(_Accumulator):
    """Weighted running mean ``sum(w * x) / sum(w)``, e.g. of per-batch losses weighted by batch size."""

    _SUMS = ("weighted_sum", "total_weight")
    weighted_sum: float = 0.0
    total_weight: float = 0.0

    def update(self, value: ArrayLike, weight: ArrayLike = 1.0) -> None:
        """Add values with a weight each.

        Args:
            value: a scalar or an array/tensor of any shape ``S`` (empty adds nothing).
            weight: a scalar applied to every value, or non-negative weights of shape ``S``.

        Raises:
            MetricInputError: non-finite or non-real values, negative or non-finite weights,
                or weights of another shape.
        """
        values = as_backend_array(value, "value")
        if dtype_kind(values) not in "biuf":
            raise MetricInputError(f"value: expected real numbers, got dtype {values.dtype}")
        weights = to_float64(match_backend(values, weight, "weight"))
        values, count = to_float64(values), math.prod(values.shape)
        if weights.ndim == 0:
            added, mass, lightest = float(values.sum() * weights), float(weights) * count, float(weights)
        elif tuple(weights.shape) == tuple(values.shape):
            added, mass = float((values * weights).sum()), float(weights.sum())
            lightest = float(weights.min()) if count else 0.0
        else:
            raise MetricInputError(
                f"weight has shape {tuple(weights.shape)} but value has {tuple(values.shape)}; "
                "pass a scalar or one weight per value"
            )
        if not (math.isfinite(added) and math.isfinite(mass)) or lightest < 0:
            raise MetricInputError("value/weight: NaN, infinity or a negative weight; pass finite values, weights >= 0")
        self.weighted_sum += added
        self.total_weight += mass

    def compute(self) -> float:
        """The weighted mean so far.

        Raises:
            MetricInputError: nothing (or only zero weight) was accumulated.
        """
        if self.total_weight == 0:
            raise MetricInputError("MeanAccumulator: total weight is 0; call update() with positive weight first")
        return self.weighted_sum / self.total_weight


@dataclass
class PerplexityAccumulator(_Accumulator):
    """Running sum of token NLL and token count; ``compute()`` is ``exp(nll_sum / n_tokens)``."""

    _SUMS = ("nll_sum", "n_tokens")
    nll_sum: float = 0.0
    n_tokens: int = 0

    def update(self, log_probs: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add token log-probabilities, as :func:`aprender.metrics.perplexity` takes them.

        Raises:
            MetricInputError: as :func:`aprender.metrics.perplexity` (zero counted tokens are allowed).
        """
        nll_sum, n_tokens = nll_totals(log_probs, mask)
        self.nll_sum += nll_sum
        self.n_tokens += n_tokens

    def add_nll(self, nll_sum: Any, n_tokens: Any) -> None:
        """Add a summed NLL, e.g. ``F.cross_entropy(..., reduction="sum")``, over ``n_tokens`` tokens.

        Args:
            nll_sum: sum of ``-log p`` over the tokens (float or 1-element tensor), >= 0.
            n_tokens: how many tokens the sum covers (int or 1-element tensor), >= 0.

        Raises:
            MetricInputError: a negative or non-finite sum, or a negative or non-integer count.
        """
        total, count = float(nll_sum), float(n_tokens)
        if not math.isfinite(total) or total < 0:
            raise MetricInputError(f"nll_sum={total!r} must be finite and >= 0 (a sum of negative log-probs)")
        if not count.is_integer() or count < 0:
            raise MetricInputError(f"n_tokens={count!r} must be a whole number >= 0")
        self.nll_sum += total
        self.n_tokens += int(count)

    def compute(self) -> float:
        """The perplexity so far.

        Raises:
            MetricInputError: no token was counted.
        """
        if self.n_tokens == 0:
            raise MetricInputError("PerplexityAccumulator: no token counted; call update() with some tokens first")
        return exp_mean_nll(self.nll_sum, self.n_tokens)


@dataclass
class TokenAccuracyAccumulator(_Accumulator):
    """Running count of correct and counted tokens (labels equal to ``ignore_index`` do not count)."""

    _SUMS = ("correct", "total")
    ignore_index: int = -100
    correct: int = 0
    total: int = 0

    def update(self, predictions: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch, as :func:`aprender.metrics.token_accuracy` takes it (ids or logits).

        Raises:
            MetricInputError: as :func:`aprender.metrics.token_accuracy` (zero counted tokens are allowed).
        """
        correct, total = match_totals(predictions, labels, self.ignore_index)
        self.correct += correct
        self.total += total

    def compute(self) -> float:
        """The token accuracy so far.

        Raises:
            MetricInputError: no token was counted.
        """
        if self.total == 0:
            raise MetricInputError("TokenAccuracyAccumulator: no token counted; call update() with some labels first")
        return self.correct / self.total
