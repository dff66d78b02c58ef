"""Logits processors against transformers' classes on random logits, and `TokenSampler`'s rules.

Oracles: transformers' `RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`
and `TopPLogitsWarper` (min_tokens_to_keep=1), called directly on the same scores; their chain in
transformers' order (`LogitsProcessorList`) for `TokenSampler.process`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from entrenar.errors import GenerationError
from entrenar.generation import (
    TokenSampler,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    token_presence,
)

EXAMPLES = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**31 - 1)
batches = st.integers(1, 4)
vocabs = st.integers(1, 60)


def _scores(seed: int, batch: int, vocab: int, *, integer: bool = False) -> torch.Tensor:
    """Random logits; `integer` rounds them so that ties occur."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, vocab, generator=generator) * 3
    return scores.round() if integer else scores


def _ids(seed: int, batch: int, vocab: int, length: int) -> Any:
    """Random token ids (B, T), typed loosely: transformers' processors annotate them as `LongTensor`."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed + 1))


@EXAMPLES
@given(seeds, batches, vocabs, st.integers(1, 12), st.floats(0.05, 5.0))
def test_repetition_penalty_equals_transformers(seed: int, batch: int, vocab: int, length: int, penalty: float) -> None:
    scores, ids = _scores(seed, batch, vocab), _ids(seed, batch, vocab, length)
    ours = apply_repetition_penalty(scores, token_presence(ids.tolist(), vocab), penalty)
    assert torch.equal(ours, RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


def test_repetition_penalty_by_hand() -> None:
    # Seen tokens 0 and 2: 2.0 / 2 = 1.0 and -1.0 * 2 = -2.0; token 1 unseen stays 3.0.
    scores = torch.tensor([[2.0, 3.0, -1.0]])
    seen = token_presence([[0, 2, 2]], 3)
    assert seen.tolist() == [[True, False, True]]
    assert apply_repetition_penalty(scores, seen, 2.0).tolist() == [[1.0, 3.0, -2.0]]


@EXAMPLES
@given(seeds, batches, vocabs, st.floats(0.05, 10.0))
def test_temperature_equals_transformers(seed: int, batch: int, vocab: int, temperature: float) -> None:
    scores = _scores(seed, batch, vocab)
    expected = TemperatureLogitsWarper(temperature)(_ids(seed, batch, vocab, 1), scores.clone())
    assert torch.equal(apply_temperature(scores, temperature), expected)


@EXAMPLES
@given(seeds, batches, vocabs, st.integers(1, 70), st.booleans())
def test_top_k_equals_transformers(seed: int, batch: int, vocab: int, k: int, ties: bool) -> None:
    scores = _scores(seed, batch, vocab, integer=ties)
    expected = TopKLogitsWarper(k)(_ids(seed, batch, vocab, 1), scores.clone())
    assert torch.equal(apply_top_k(scores, k), expected)


@EXAMPLES
@given(seeds, batches, vocabs, st.floats(0.0, 1.0), st.booleans())
def test_top_p_equals_transformers(seed: int, batch: int, vocab: int, top_p: float, ties: bool) -> None:
    scores = _scores(seed, batch, vocab, integer=ties)
    expected = TopPLogitsWarper(top_p)(_ids(seed, batch, vocab, 1), scores.clone())
    assert torch.equal(apply_top_p(scores, top_p), expected)


def test_top_k_and_top_p_by_hand() -> None:
    scores = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    inf = -math.inf
    assert apply_top_k(scores, 2)[0, 2] == inf and apply_top_k(scores, 9).isfinite().all()
    # Probabilities 0.5, 0.3, 0.2: 0.5 alone reaches top_p 0.5; 0.5 + 0.3 is needed for 0.6.
    assert apply_top_p(scores, 0.5).isfinite().tolist() == [[True, False, False]]
    assert apply_top_p(scores, 0.6).isfinite().tolist() == [[True, True, False]]
    assert apply_top_p(scores, 0.0).isfinite().tolist() == [[True, False, False]]  # the likeliest always stays
    assert apply_top_p(scores, 1.0).isfinite().all()


@EXAMPLES
@given(
    seeds,
    batches,
    st.integers(2, 60),
    st.sampled_from([0.5, 1.0, 1.7]),
    st.sampled_from([0, 1, 5]),
    st.sampled_from([1.0, 0.8, 0.2]),
    st.sampled_from([1.0, 1.3, 0.6]),
)
def test_sampler_chain_equals_transformers_order(
    seed: int, batch: int, vocab: int, temperature: float, top_k: int, top_p: float, penalty: float
) -> None:
    scores, ids = _scores(seed, batch, vocab), _ids(seed, batch, vocab, 6)
    chain = LogitsProcessorList()  # transformers' order: penalty, then temperature, top-k, top-p (sampling only)
    if penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(penalty))
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    sampler = TokenSampler(True, temperature, top_k, top_p, penalty)
    seen = token_presence(ids.tolist(), vocab) if sampler.uses_seen_tokens else None
    assert torch.equal(sampler.process(scores, seen), chain(ids, scores.clone()))
    greedy = TokenSampler(repetition_penalty=penalty)
    expected_greedy = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()) if penalty != 1.0 else scores
    assert torch.equal(greedy.process(scores, seen), expected_greedy)
    assert torch.equal(greedy.choose(scores, seen), expected_greedy.argmax(-1))


def test_sampling_draws_from_the_processed_distribution() -> None:
    # Logits log(0.6), log(0.4), -inf: 20000 draws with a seeded generator hit token 0 about 60% of the time.
    scores = torch.tensor([[math.log(0.6), math.log(0.4), -math.inf]]).expand(20000, 3)
    sampler = TokenSampler(do_sample=True)
    tokens = sampler.choose(scores, None, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}
    assert abs(float((tokens == 0).double().mean()) - 0.6) < 0.02
    again = sampler.choose(scores, None, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature=0.0 must be a finite number above 0"),
        ({"do_sample": True, "temperature": math.inf}, "temperature=inf"),
        ({"do_sample": True, "top_k": -1}, "top_k=-1 must be a whole number"),
        ({"do_sample": True, "top_k": True}, "top_k=True"),
        ({"do_sample": True, "top_p": -0.1}, "top_p=-0.1 must be between 0 and 1"),
        ({"do_sample": True, "top_p": math.nan}, "top_p=nan"),
        ({"repetition_penalty": -1.0}, "repetition_penalty=-1.0"),
        ({"temperature": 2.0}, "temperature=2.0 only applies when sampling"),
        ({"top_p": 0.9}, "top_p=0.9 only applies when sampling"),
        ({"top_k": 3, "temperature": 0.5}, "temperature=0.5, top_k=3 only apply when sampling"),
    ],
)
def test_invalid_sampler_settings_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(GenerationError, match=message.replace(".", r"\.")):
        TokenSampler(**kwargs)  # type: ignore[arg-type]
