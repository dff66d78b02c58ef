"""Language-model metrics: perplexity from token log-probabilities, and token accuracy.

Both accept numpy arrays, python lists or torch tensors. Tensors are reduced where they live (for
example on the GPU) and only the sums cross to python, so the streaming accumulators in
:mod:`aprender.metrics.streaming` can share these reductions.
"""

from __future__ import annotations

import math

from aprender.errors import MetricInputError
from aprender.metrics._arrays import ArrayLike, as_backend_array, dtype_kind, match_backend, to_float64

LOG_PROB_TOLERANCE = 1e-6
"""Largest accepted log-probability: log-softmax output can exceed 0 by rounding, never by more."""


def perplexity(log_probs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Perplexity ``exp(-mean(log p))`` over the counted tokens (natural log).

    Reference: Jelinek et al., "Perplexity — a measure of the difficulty of speech recognition
    tasks", JASA 62(S1), 1977, https://doi.org/10.1121/1.2016299. Equal to
    ``exp(torch.nn.functional.cross_entropy(logits, labels, ignore_index=...))`` when ``log_probs``
    are the log-softmax values of the labels and ``mask`` is ``labels != ignore_index``.

    Args:
        log_probs: log-probability of each target token, any shape ``S`` (e.g. ``(B, T)``), <= 0.
        mask: which tokens count, shape ``S`` (nonzero/True = counted); None counts all. Masked-out
            positions are never read, so they may hold padding garbage.

    Returns:
        The perplexity (>= 1; ``inf`` if the mean NLL overflows ``exp``).

    Raises:
        MetricInputError: no counted token, a NaN/infinite or positive counted log-prob (pass
            log-probabilities, not NLL), a mask of another shape, or non-real values.
    """
    nll_sum, n_tokens = nll_totals(log_probs, mask)
    if n_tokens == 0:
        raise MetricInputError("perplexity: no token is counted (empty log_probs or all masked); pass some tokens")
    return exp_mean_nll(nll_sum, n_tokens)


def token_accuracy(predictions: ArrayLike, labels: ArrayLike, *, ignore_index: int = -100) -> float:
    """Fraction of counted tokens whose prediction equals the label.

    The caller aligns predictions and labels (for a causal LM, logits at position ``t`` predict the
    label at ``t + 1``: shift before calling).

    Args:
        predictions: predicted token ids, shape ``S`` (e.g. ``(B, T)``), or logits of shape ``S + (V,)``
            (the arg-max is taken).
        labels: integer token ids, shape ``S``.
        ignore_index: label value of tokens that do not count (padding, prompt).

    Returns:
        The accuracy in [0, 1].

    Raises:
        MetricInputError: no counted token, non-integer labels, or shapes that do not match.
    """
    correct, total = match_totals(predictions, labels, ignore_index)
    if total == 0:
        raise MetricInputError(
            f"token_accuracy: every label equals ignore_index={ignore_index} (or labels is empty); pass some tokens"
        )
    return correct / total


def exp_mean_nll(nll_sum: float, n_tokens: int) -> float:
    """``exp(nll_sum / n_tokens)``, saturating to ``inf`` past the float range."""
    try:
        return math.exp(nll_sum / n_tokens)
    except OverflowError:
        return math.inf


def nll_totals(log_probs: ArrayLike, mask: ArrayLike | None) -> tuple[float, int]:
    """Sum of ``-log p`` over counted tokens and their number (tensors are reduced on their device).

    Raises:
        MetricInputError: as :func:`perplexity`, except that zero counted tokens return ``(0.0, 0)``.
    """
    values = as_backend_array(log_probs, "log_probs")
    if dtype_kind(values) not in "iuf":
        raise MetricInputError(f"log_probs: expected real numbers, got dtype {values.dtype}")
    if mask is None:
        picked = values.reshape(-1)
    else:
        counted = match_backend(values, mask, "mask") != 0
        if tuple(counted.shape) != tuple(values.shape):
            raise MetricInputError(
                f"mask has shape {tuple(counted.shape)} but log_probs has {tuple(values.shape)}; "
                "pass one flag per token"
            )
        picked = values[counted]
    n_tokens = len(picked)
    if n_tokens == 0:
        return 0.0, 0
    picked = to_float64(picked)
    total, largest = float(picked.sum()), float(picked.max())
    if not math.isfinite(total):
        raise MetricInputError("log_probs: NaN or infinity among counted tokens; mask them out or fix the model output")
    if largest > LOG_PROB_TOLERANCE:
        raise MetricInputError(
            f"log_probs: holds {largest:.4g} > 0; pass log-probabilities (<= 0), not negative log-likelihoods"
        )
    return -total, n_tokens


def match_totals(predictions: ArrayLike, labels: ArrayLike, ignore_index: int) -> tuple[int, int]:
    """Number of correct counted tokens and of counted tokens (tensors are reduced on their device).

    Raises:
        MetricInputError: as :func:`token_accuracy`, except that zero counted tokens return ``(0, 0)``.
    """
    pred = as_backend_array(predictions, "predictions")
    truth = match_backend(pred, labels, "labels")
    if dtype_kind(truth) not in "iu":
        raise MetricInputError(f"labels: expected integer token ids, got dtype {truth.dtype}")
    if pred.ndim == truth.ndim + 1:
        pred = pred.argmax(-1)
    if tuple(pred.shape) != tuple(truth.shape):
        raise MetricInputError(
            f"predictions have shape {tuple(pred.shape)} but labels {tuple(truth.shape)}; pass ids of the labels' "
            "shape or logits with one extra (vocabulary) dimension"
        )
    counted = truth != ignore_index
    return int(((pred == truth) & counted).sum()), int(counted.sum())
