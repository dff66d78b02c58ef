"""aprender.metrics.language: perplexity and token accuracy against hand-computed values and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.errors import MetricInputError
from aprender.metrics import perplexity, token_accuracy
from aprender.metrics.language import exp_mean_nll

FAST = settings(max_examples=60, deadline=None)


def test_hand_computed_perplexity() -> None:
    # Probabilities 1/2, 1/4, 1/8 -> mean NLL = (ln 2 + ln 4 + ln 8) / 3 = 2 ln 2 -> perplexity 4.
    log_probs = [math.log(0.5), math.log(0.25), math.log(0.125)]
    assert perplexity(log_probs) == pytest.approx(4.0)
    # Masking out the 1/8 token: mean NLL = 1.5 ln 2 -> perplexity 2^1.5.
    assert perplexity(log_probs, mask=[True, True, False]) == pytest.approx(2**1.5)
    assert perplexity(np.array(log_probs), mask=np.array([1, 1, 0])) == pytest.approx(2**1.5)


@FAST
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 12),
    vocab=st.integers(2, 20),
    seed=st.integers(0, 2**16),
    ignored=st.floats(0.0, 0.7),
)
def test_perplexity_equals_exp_cross_entropy(batch, length, vocab, seed, ignored) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[torch.rand(batch, length, generator=generator) < ignored] = -100
    labels[0, 0] = max(int(labels[0, 0]), 0)  # at least one counted token
    expected = math.exp(F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100).item())
    log_probs = logits.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    assert perplexity(log_probs, mask=labels != -100) == pytest.approx(expected, rel=1e-5)
    # Masked-out positions are never read: NaN there changes nothing.
    poisoned = log_probs.masked_fill(labels == -100, math.nan)
    assert perplexity(poisoned.numpy(), mask=(labels != -100).numpy()) == pytest.approx(expected, rel=1e-5)


def test_perplexity_of_bfloat16_and_overflow() -> None:
    assert perplexity(torch.full((4,), -1.0, dtype=torch.bfloat16)) == pytest.approx(math.e)
    assert perplexity([-800.0]) == math.inf  # exp(800) overflows a double
    assert exp_mean_nll(3.0, 3) == pytest.approx(math.e)


def test_token_accuracy_from_ids_and_logits() -> None:
    labels = torch.tensor([[1, 2, -100], [0, 0, 3]])
    predictions = torch.tensor([[1, 0, 5], [0, 2, 3]])
    # Counted: 5 tokens (one ignored); correct: (0,0), (1,0), (1,2) -> 3/5.
    assert token_accuracy(predictions, labels) == pytest.approx(0.6)
    logits = F.one_hot(predictions.clamp_min(0), num_classes=6).float()
    assert token_accuracy(logits, labels) == pytest.approx(0.6)
    assert token_accuracy(predictions.numpy(), labels.tolist()) == pytest.approx(0.6)
    # A custom ignore_index: label 0 no longer counts; counted 1, 2, -100, 3 -> correct 1 and 3 -> 2/4.
    assert token_accuracy(predictions, labels, ignore_index=0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: perplexity([]), "no token is counted"),
        (lambda: perplexity([-1.0, -2.0], mask=[False, False]), "no token is counted"),
        (lambda: perplexity([-1.0, math.nan]), "NaN or infinity among counted tokens"),
        (lambda: perplexity(torch.tensor([-math.inf])), "NaN or infinity among counted tokens"),
        (lambda: perplexity([0.5, -1.0]), "not negative log-likelihoods"),
        (lambda: perplexity([-1.0, -2.0], mask=[True]), r"mask has shape \(1,\) but log_probs has \(2,\)"),
        (lambda: perplexity(torch.tensor([-1.0]), mask=torch.tensor([True, True])), "mask has shape"),
        (lambda: perplexity(torch.tensor([True])), "expected real numbers"),
        (lambda: perplexity(["a"]), "expected real numbers"),
        (lambda: token_accuracy([1, 2], [-100, -100]), "every label equals ignore_index=-100"),
        (lambda: token_accuracy([1, 2], [1.0, 2.0]), "expected integer token ids"),
        (lambda: token_accuracy(torch.tensor([1]), torch.tensor([1.0])), "expected integer token ids"),
        (lambda: token_accuracy([1, 2, 3], [1, 2]), r"predictions have shape \(3,\) but labels \(2,\)"),
    ],
)
def test_errors_name_the_problem(call, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()
