"""aprender.metrics.streaming: chunked updates equal the one-shot metric, merge equals one stream."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import MetricInputError
from aprender.metrics import (
    MeanAccumulator,
    PerplexityAccumulator,
    TokenAccuracyAccumulator,
    perplexity,
    token_accuracy,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def chunked(draw: st.DrawFn, n: int) -> list[slice]:
    """Random cut points splitting range(n) into contiguous chunks (some may be empty)."""
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    bounds = [0, *cuts, n]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _as(kind: str, array: np.ndarray) -> object:
    return torch.from_numpy(array) if kind == "torch" else array


@FAST
@given(data=st.data(), n=st.integers(1, 40), kind=st.sampled_from(["numpy", "torch"]))
def test_mean_accumulator_equals_weighted_mean(data, n, kind) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    values, weights = rng.normal(size=n), rng.integers(1, 5, size=n).astype(float)
    chunks = data.draw(chunked(n))
    accumulator, left, right = MeanAccumulator(), MeanAccumulator(), MeanAccumulator()
    for index, part in enumerate(chunks):
        accumulator.update(_as(kind, values[part]), _as(kind, weights[part]))
        (left if index % 2 else right).update(values[part], weights[part])
    expected = np.average(values, weights=weights)
    assert accumulator.compute() == pytest.approx(expected)
    assert left.merge(right).compute() == pytest.approx(expected)


def test_mean_accumulator_scalar_weights_and_reset() -> None:
    accumulator = MeanAccumulator()
    accumulator.update(torch.tensor(2.0), weight=3)  # a batch mean loss of 2.0 over 3 samples
    accumulator.update(np.array([1.0, 5.0]), weight=0.5)  # two values weighted 0.5 each
    # (2*3 + 1*0.5 + 5*0.5) / (3 + 0.5 + 0.5) = 9 / 4
    assert accumulator.compute() == pytest.approx(2.25)
    accumulator.reset()
    assert accumulator == MeanAccumulator()


@FAST
@given(data=st.data(), n=st.integers(1, 60), kind=st.sampled_from(["numpy", "torch"]))
def test_perplexity_accumulator_equals_one_shot(data, n, kind) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    log_probs = -rng.exponential(2.0, size=n)
    mask = rng.random(n) < 0.7
    mask[0] = True
    chunks = data.draw(chunked(n))
    accumulator, left, right = PerplexityAccumulator(), PerplexityAccumulator(), PerplexityAccumulator()
    for index, part in enumerate(chunks):
        accumulator.update(_as(kind, log_probs[part]), mask=_as(kind, mask[part]))
        (left if index % 2 else right).update(log_probs[part], mask=mask[part])
    expected = perplexity(log_probs, mask=mask)
    assert accumulator.n_tokens == int(mask.sum())
    assert accumulator.compute() == pytest.approx(expected)
    assert left.merge(right).compute() == pytest.approx(expected)


def test_perplexity_accumulator_add_nll_from_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(10, 7, generator=generator), torch.randint(0, 7, (10,), generator=generator)
    accumulator = PerplexityAccumulator()
    for part in (slice(0, 4), slice(4, 10)):
        nll = torch.nn.functional.cross_entropy(logits[part], labels[part], reduction="sum")
        accumulator.add_nll(nll, torch.tensor(part.stop - part.start))
    expected = math.exp(torch.nn.functional.cross_entropy(logits, labels).item())
    assert accumulator.compute() == pytest.approx(expected, rel=1e-6)
    accumulator.reset()
    assert (accumulator.nll_sum, accumulator.n_tokens) == (0.0, 0)


@FAST
@given(data=st.data(), n=st.integers(1, 50), kind=st.sampled_from(["numpy", "torch"]), logits=st.booleans())
def test_token_accuracy_accumulator_equals_one_shot(data, n, kind, logits) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    labels = rng.integers(0, 4, size=n)
    labels[rng.random(n) < 0.3] = -1
    labels[0] = 2
    predictions = rng.normal(size=(n, 4)) if logits else rng.integers(0, 4, size=n)
    chunks = data.draw(chunked(n))
    accumulator = TokenAccuracyAccumulator(ignore_index=-1)
    left, right = TokenAccuracyAccumulator(ignore_index=-1), TokenAccuracyAccumulator(ignore_index=-1)
    for index, part in enumerate(chunks):
        accumulator.update(_as(kind, predictions[part]), _as(kind, labels[part]))
        (left if index % 2 else right).update(predictions[part], labels[part])
    expected = token_accuracy(predictions, labels, ignore_index=-1)
    assert accumulator.compute() == pytest.approx(expected)
    assert left.merge(right).compute() == pytest.approx(expected)
    accumulator.reset()
    assert accumulator == TokenAccuracyAccumulator(ignore_index=-1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MeanAccumulator().compute(), "total weight is 0"),
        (lambda: MeanAccumulator().update(torch.tensor([1j])), "expected real numbers"),
        (lambda: MeanAccumulator().update(["a"]), "expected real numbers"),
        (lambda: MeanAccumulator().update([1.0, math.nan]), "NaN, infinity or a negative weight"),
        (lambda: MeanAccumulator().update(torch.tensor([1.0, 2.0]), [1.0, -1.0]), "negative weight"),
        (lambda: MeanAccumulator().update([1.0, 2.0], weight=-1.0), "negative weight"),
        (lambda: MeanAccumulator().update([1.0, 2.0], weight=[1.0, 1.0, 1.0]), r"weight has shape \(3,\)"),
        (lambda: PerplexityAccumulator().compute(), "no token counted"),
        (lambda: PerplexityAccumulator().update([0.7]), "not negative log-likelihoods"),
        (lambda: PerplexityAccumulator().add_nll(-1.0, 2), "nll_sum=-1.0 must be finite and >= 0"),
        (lambda: PerplexityAccumulator().add_nll(math.nan, 2), "nll_sum=nan"),
        (lambda: PerplexityAccumulator().add_nll(1.0, 2.5), "n_tokens=2.5 must be a whole number"),
        (lambda: PerplexityAccumulator().add_nll(1.0, -1), "n_tokens=-1.0"),
        (lambda: TokenAccuracyAccumulator().compute(), "no token counted"),
        (lambda: TokenAccuracyAccumulator().merge(TokenAccuracyAccumulator(ignore_index=0)), "ignore_index is 0"),
        (lambda: MeanAccumulator().merge(PerplexityAccumulator()), "cannot merge PerplexityAccumulator"),  # type: ignore[arg-type]
    ],
)
def test_errors_name_the_problem(call, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()


def test_zero_token_updates_are_allowed() -> None:
    accumulator = PerplexityAccumulator()
    accumulator.update([-1.0], mask=[False])  # a fully padded batch adds nothing
    accumulator.update([-2.0])
    assert accumulator.compute() == pytest.approx(math.exp(2.0))
