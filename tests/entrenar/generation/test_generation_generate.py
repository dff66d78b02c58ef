"""`generate` against transformers' ``generate`` on the tiny checkpoints (and SmolLM2, marked slow).

Oracle: ``AutoModelForCausalLM.generate`` on the same prompts, left-padded with an attention mask, with
the same EOS ids; for seeded sampling, transformers draws from torch's global generator seeded with the
same seed (both call ``torch.multinomial`` on the same probabilities). Top-k/top-p are also checked
step by step against the model's own logits, and stop strings against the decoded text.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from aprender.text import Tokenizer, encode_chat
from entrenar.errors import GenerationError
from entrenar.generation import default_eos_token_ids, generate

PAD = 0  # the tiny checkpoints' <|endoftext|>
NEW = 32


def test_greedy_matches_transformers_with_and_without_cache(tiny_checkpoint: tuple[str, Path], helpers: Any) -> None:
    _, folder = tiny_checkpoint
    model, eos = helpers.ours(folder), helpers.checkpoint_eos_ids(folder)
    for prompt in helpers.random_prompts((6, 17), seed=1):  # 17 + 32 tokens exceed mistral's window of 16
        (expected,) = helpers.reference_generate(
            folder, [prompt], PAD, max_new_tokens=NEW, do_sample=False, eos_token_id=eos
        )
        for use_cache in (True, False):
            assert generate(model, [prompt], max_new_tokens=NEW, eos_token_ids=eos, use_cache=use_cache) == [expected]


def test_left_padded_batch_equals_transformers_and_each_prompt_alone(
    tiny_checkpoint: tuple[str, Path], helpers: Any
) -> None:
    _, folder = tiny_checkpoint
    model, eos = helpers.ours(folder), helpers.checkpoint_eos_ids(folder)
    prompts = helpers.random_prompts((3, 12, 7), seed=2)
    batch = generate(model, prompts, max_new_tokens=NEW, eos_token_ids=eos, pad_token_id=PAD)
    expected = helpers.reference_generate(folder, prompts, PAD, max_new_tokens=NEW, do_sample=False, eos_token_id=eos)
    assert batch == expected
    assert generate(model, prompts, max_new_tokens=NEW, eos_token_ids=eos, pad_token_id=PAD, use_cache=False) == batch
    for prompt, row in zip(prompts, batch, strict=True):
        (alone,) = generate(model, [prompt], max_new_tokens=NEW, eos_token_ids=eos)
        assert row[: len(alone)] == alone
        assert row[len(alone) :] == [PAD] * (len(row) - len(alone))


def test_eos_ends_its_row_which_is_then_padded(tiny_checkpoints: dict[str, Path], helpers: Any) -> None:
    folder = tiny_checkpoints["qwen2"]
    model = helpers.ours(folder)
    prompts = helpers.random_prompts((5, 9), seed=3)
    free = generate(model, prompts, max_new_tokens=20)
    stop = free[0][4]  # a token row 0 produces by step 5: make it the EOS
    # Expected by hand: each row cut right after its first `stop`, the EOS kept.
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in free]
    assert generate(model, prompts, max_new_tokens=20, eos_token_ids=[stop]) == expected
    padded = generate(model, prompts, max_new_tokens=20, eos_token_ids=[stop], pad_token_id=PAD)
    width = max(len(row) for row in expected)
    assert padded == [row + [PAD] * (width - len(row)) for row in expected]
    assert padded == helpers.reference_generate(
        folder, prompts, PAD, max_new_tokens=20, do_sample=False, eos_token_id=[stop]
    )


def test_decoding_stops_once_every_row_has_ended(tiny_checkpoints: dict[str, Path], helpers: Any) -> None:
    model = helpers.ours(tiny_checkpoints["llama"])
    (prompt,) = helpers.random_prompts((7,), seed=4)
    (free,) = generate(model, [prompt], max_new_tokens=20)
    end = free.index(free[3]) + 1  # the EOS below first appears at this length (<= 4)
    calls: list[int] = []
    hook = model.model.norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = generate(model, [prompt], max_new_tokens=20, eos_token_ids=[free[3]])
    finally:
        hook.remove()
    assert out == [free[:end]]
    assert len(calls) == end  # one forward pass per token, none after the EOS


def test_tensor_prompts_equal_list_prompts(tiny_checkpoints: dict[str, Path], helpers: Any) -> None:
    model = helpers.ours(tiny_checkpoints["qwen3"])
    prompts = helpers.random_prompts((6, 6), seed=5)
    assert generate(model, torch.tensor(prompts), max_new_tokens=8) == generate(model, prompts, max_new_tokens=8)


def test_streamer_gets_every_token_in_order(tiny_checkpoints: dict[str, Path], helpers: Any) -> None:
    model = helpers.ours(tiny_checkpoints["qwen2"])
    prompts = helpers.random_prompts((4, 10), seed=6)
    free = generate(model, prompts, max_new_tokens=12)
    calls: list[tuple[int, list[int]]] = []
    out = generate(
        model, prompts, max_new_tokens=12, eos_token_ids=[free[0][2]], streamer=lambda r, t: calls.append((r, t))
    )
    assert [[tok for row, toks in calls if row == r for tok in toks] for r in range(2)] == out
    assert calls[:2] == [(0, [out[0][0]]), (1, [out[1][0]])]  # step by step, every row each step
    assert all(len(tokens) == 1 for _, tokens in calls)


# ----------------------------------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible_and_matches_transformers(
    tiny_checkpoints: dict[str, Path], helpers: Any
) -> None:
    folder = tiny_checkpoints["qwen2"]
    model, eos = helpers.ours(folder), helpers.checkpoint_eos_ids(folder)
    prompts = helpers.random_prompts((5, 13, 9), seed=7)
    options: dict[str, Any] = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}

    def sample(seed: int | None) -> list[list[int]]:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return generate(
            model,
            prompts,
            max_new_tokens=24,
            do_sample=True,
            generator=generator,
            eos_token_ids=eos,
            pad_token_id=PAD,
            **options,
        )

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    torch.manual_seed(7)
    assert sample(None) == first  # no generator: torch's global one
    torch.manual_seed(7)
    expected = helpers.reference_generate(
        folder, prompts, PAD, do_sample=True, max_new_tokens=24, eos_token_id=eos, **options
    )
    assert first == expected


def test_repetition_penalty_matches_transformers(tiny_checkpoints: dict[str, Path], helpers: Any) -> None:
    folder = tiny_checkpoints["mistral"]
    model = helpers.ours(folder)
    prompt = helpers.random_prompts((8,), seed=8)
    plain = generate(model, prompt, max_new_tokens=NEW)
    penalised = generate(model, prompt, max_new_tokens=NEW, repetition_penalty=1.8)
    assert penalised != plain
    assert penalised == helpers.reference_generate(
        folder, prompt, PAD, max_new_tokens=NEW, do_sample=False, repetition_penalty=1.8
    )
    sampled = generate(
        model,
        prompt,
        max_new_tokens=NEW,
        repetition_penalty=0.7,
        do_sample=True,
        generator=torch.Generator().manual_seed(1),
    )
    torch.manual_seed(1)
    assert sampled == helpers.reference_generate(
        folder, prompt, PAD, max_new_tokens=NEW, do_sample=True, top_k=0, repetition_penalty=0.7
    )


def _step_scores(model: Any, prompt: list[int], generated: list[int], temperature: float) -> list[torch.Tensor]:
    """The model's next-token scores before each generated token, rerun from scratch, divided by `temperature`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated]))[0].float()
    return [logits[len(prompt) - 1 + i] / temperature for i in range(len(generated))]


def _top_k_set(scores: torch.Tensor, k: int) -> set[int]:
    return set(torch.topk(scores, k).indices.tolist())


def _nucleus(scores: torch.Tensor, top_p: float) -> set[int]:
    """Tokens by descending probability, kept while the mass strictly before them is below `top_p`."""
    probs, order = scores.softmax(-1).sort(descending=True)
    before = probs.cumsum(-1) - probs
    return set(order[before < top_p].tolist())


@pytest.mark.parametrize(
    ("options", "allowed"),
    [({"top_k": 3}, lambda s: _top_k_set(s, 3)), ({"top_p": 0.3}, lambda s: _nucleus(s, 0.3))],
    ids=["top_k", "top_p"],
)
def test_sampling_never_leaves_the_allowed_set(
    tiny_checkpoints: dict[str, Path], helpers: Any, options: dict[str, Any], allowed: Any
) -> None:
    model = helpers.ours(tiny_checkpoints["qwen3"])
    prompts = helpers.random_prompts((5, 11), seed=9)
    temperature = 4.0  # flattens the distribution, so an unrestricted draw often falls outside the set

    def draws(**extra: Any) -> list[list[int]]:
        generator = torch.Generator().manual_seed(3)
        return generate(
            model, prompts, max_new_tokens=40, do_sample=True, temperature=temperature, generator=generator, **extra
        )

    def outside(rows: list[list[int]]) -> int:
        return sum(
            token not in allowed(scores)
            for prompt, row in zip(prompts, rows, strict=True)
            for token, scores in zip(row, _step_scores(model, prompt, row, temperature), strict=True)
        )

    assert outside(draws(**options)) == 0
    assert outside(draws()) > 10  # the same check catches an unrestricted sampler


# ----------------------------------------------------------------------------------------- stop strings


def test_stop_string_ends_at_the_token_completing_it(tiny_checkpoints: dict[str, Path], helpers: Any) -> None:
    from transformers import AutoTokenizer

    folder = tiny_checkpoints["qwen2"]
    model, tokenizer = helpers.ours(folder), Tokenizer.from_dir(folder)
    (prompt,) = helpers.random_prompts((6,), seed=10)
    (free,) = generate(model, [prompt], max_new_tokens=NEW)
    pieces = [tokenizer.decode([token]) for token in free]
    k = next(i for i in range(3, NEW - 1) if len(pieces[i]) >= 2 and pieces[i + 1].isascii() and pieces[i + 1])
    stop = pieces[k][-2:] + pieces[k + 1][:1]  # spans tokens k and k + 1
    # Expected by hand: the first prefix of the output whose text contains the stop string.
    end = next(i + 1 for i in range(NEW) if stop in tokenizer.decode(free[: i + 1]))
    assert end <= k + 2
    (out,) = generate(model, [prompt], max_new_tokens=NEW, stop_strings=[stop], tokenizer=tokenizer)
    assert out == free[:end]
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    (expected,) = helpers.reference_generate(
        folder, [prompt], PAD, max_new_tokens=NEW, do_sample=False, stop_strings=[stop], tokenizer=hf_tokenizer
    )
    assert out == expected
    never = generate(model, [prompt], max_new_tokens=NEW, stop_strings=["\x00never\x00"], tokenizer=tokenizer)
    assert never == [free]


# ----------------------------------------------------------------------------------------- errors and defaults


@pytest.mark.parametrize(
    ("prompts", "options", "message"),
    [
        ([], {}, "holds no prompt"),
        ([[5], []], {}, "prompt 1 is empty"),
        ([[5, 99999]], {}, "prompt 0 holds 99999"),
        ([[5, -1]], {}, "prompt 0 holds -1"),
        ([[5, 2.0]], {}, "prompt 0 holds 2.0"),
        (torch.tensor([[1.0, 2.0]]), {}, "integer ids of shape"),
        (torch.tensor([1, 2]), {}, "integer ids of shape"),
        ([[5]], {"max_new_tokens": 0}, "max_new_tokens=0"),
        ([[5]], {"eos_token_ids": [5000]}, "eos_token_ids holds 5000"),
        ([[5]], {"pad_token_id": -2}, "pad_token_id holds -2"),
        ([[5]], {"temperature": 0.5}, "temperature=0.5 only applies when sampling"),
        ([[5]], {"top_k": 4, "top_p": 0.5}, "top_k=4, top_p=0.5 only apply when sampling"),
        ([[5]], {"generator": torch.Generator()}, "a generator only drives sampling"),
        ([[5]], {"do_sample": True, "temperature": 0.0}, "temperature=0.0 must be"),
        ([[5]], {"do_sample": True, "top_k": -1}, "top_k=-1"),
        ([[5]], {"do_sample": True, "top_p": 1.5}, "top_p=1.5"),
        ([[5]], {"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ([[5]], {"stop_strings": ["x"]}, "need a tokenizer"),
    ],
)
def test_invalid_requests_raise_generation_error(
    tiny_checkpoints: dict[str, Path], helpers: Any, prompts: Any, options: dict[str, Any], message: str
) -> None:
    model = helpers.ours(tiny_checkpoints["llama"])
    kwargs = {"max_new_tokens": 4, **options}
    with pytest.raises(GenerationError, match=re.escape(message)):
        generate(model, prompts, **kwargs)


def test_default_eos_ids_merge_generation_config_config_and_tokenizer(
    tiny_checkpoints: dict[str, Path], helpers: Any
) -> None:
    folder = tiny_checkpoints["qwen2"]
    model, tokenizer = helpers.ours(folder), Tokenizer.from_dir(folder)
    # generation_config.json: [<|im_end|>=2, <|endoftext|>=0]; config.json: 2; tokenizer eos <|im_end|>: 2.
    assert default_eos_token_ids(model, tokenizer) == [2, 0]
    bare: Any = types.SimpleNamespace(generation_config={}, config=types.SimpleNamespace(eos_token_id=(7, 8)))
    assert default_eos_token_ids(bare) == [7, 8]
    bare.config.eos_token_id = None
    assert default_eos_token_ids(bare, types.SimpleNamespace(eos_token_id=3)) == [3]
    assert default_eos_token_ids(bare) == []


# ----------------------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_hf_dir: Path, helpers: Any) -> None:
    tokenizer = Tokenizer.from_dir(smollm2_hf_dir)
    model, eos = helpers.ours(smollm2_hf_dir), helpers.checkpoint_eos_ids(smollm2_hf_dir)
    questions = ("What is the capital of France?", "Write one sentence about the sea and the sky at night.")
    prompts = [
        encode_chat(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True).ids for q in questions
    ]
    alone = []
    for prompt in prompts:
        (expected,) = helpers.reference_generate(
            smollm2_hf_dir, [prompt], 2, max_new_tokens=NEW, do_sample=False, eos_token_id=eos
        )
        for use_cache in (True, False):
            assert generate(model, [prompt], max_new_tokens=NEW, eos_token_ids=eos, use_cache=use_cache) == [expected]
        alone.append(expected)
    assert "Paris" in tokenizer.decode(alone[0])
    assert generate(model, prompts, max_new_tokens=NEW, eos_token_ids=eos) == alone
