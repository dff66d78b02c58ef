"""Autoregressive generation with a KV cache: batched, left-padded prompts, greedy or sampled tokens.

The loop (as transformers' ``GenerationMixin._sample``): prompts of different lengths are padded on
the left, with an attention mask hiding the padding and position ids counting real tokens only
(``cumsum(mask) - 1``), so each row decodes exactly as it would alone. The first step runs the whole
prompt and fills a `KVCache`; each later step feeds one token per row. The last position's logits,
in float32, go through `TokenSampler` (repetition penalty, temperature, top-k, top-p) to pick the next
token. A row stops at one of `eos_token_ids` (kept in its output) or at the token completing a stop
string; finished rows keep being fed padding until every row is done or `max_new_tokens` is reached.

Without a cache (``use_cache=False``) every step reruns the full sequence: slower, same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entrenar.errors import GenerationError
from entrenar.generation.detokenize import TokenDecoder
from entrenar.generation.sampling import TokenSampler, token_presence
from entrenar.generation.stopping import StopStrings
from entrenar.models import CausalLM, KVCache

__all__ = ["Streamer", "default_eos_token_ids", "generate"]

Streamer = Callable[[int, list[int]], None]
"""Called as ``streamer(row, new_tokens)`` each time row `row` gains tokens."""

# Input id at padding positions; any valid id works, the attention mask hides it.
_INPUT_PAD_ID = 0


def generate(
    model: CausalLM,
    input_ids: Sequence[Sequence[int]] | Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    eos_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] | None = None,
    tokenizer: TokenDecoder | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    streamer: Streamer | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens.

    Args:
        model: The language model (put it in eval mode first).
        input_ids: B prompts as lists of ids (any lengths), or an int tensor (B, T) of equal-length prompts.
        max_new_tokens: Most tokens to add per prompt, at least 1.
        do_sample: Sample from the processed distribution instead of taking the argmax.
        temperature: Divides the scores (sampling only).
        top_k: Sample among the k most likely tokens; 0 disables (sampling only).
        top_p: Sample within the nucleus of this probability mass; 1 disables (sampling only).
        repetition_penalty: CTRL penalty on tokens already in the prompt or output; 1 disables.
        eos_token_ids: Ids that end a sequence (the id is kept as its last token).
        stop_strings: Texts that end a sequence at the token completing them; needs `tokenizer`.
        tokenizer: Decodes tokens for `stop_strings`.
        pad_token_id: When given, rows are padded with it to one length, as transformers returns them
            (after EOS or a stop string: padding); None returns each row as long as it grew.
        use_cache: Decode with a KV cache (one new token per step) instead of rerunning the sequence.
        generator: Random source for sampling (seed it for reproducible output); None uses torch's global one.
        streamer: Called with each row's new tokens as soon as they are chosen.

    Returns:
        The new tokens of each prompt (B lists), without the prompt.

    Raises:
        GenerationError: Empty prompts, ids outside the vocabulary, bad sampling values, sampling options
            without ``do_sample``, or stop strings without a tokenizer.
    """
    vocab_size = model.config.vocab_size
    prompts = _prompts(input_ids, vocab_size)
    _check_options(max_new_tokens, eos_token_ids, pad_token_id, vocab_size, do_sample, generator)
    sampler = TokenSampler(do_sample, temperature, top_k, top_p, repetition_penalty)
    stops = _stop_strings(stop_strings, tokenizer)
    device = next(model.parameters()).device
    state = _DecodeState.start(prompts, device, vocab_size if sampler.uses_seen_tokens else None)
    cache = model.new_kv_cache() if use_cache else None
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            scores = _next_token_scores(model, state, cache)
            tokens = sampler.choose(scores, state.seen, generator).tolist()
            state.append(tokens, eos_token_ids, stops, streamer)
            if not state.active:
                break
    return state.outputs(pad_token_id)


def default_eos_token_ids(model: CausalLM, tokenizer: Any = None) -> list[int]:
    """The ids that end a reply: the model's ``generation_config.json`` and ``config.json`` EOS, and the tokenizer's.

    Args:
        model: A model from `entrenar.models.from_pretrained`.
        tokenizer: Optional object with an ``eos_token_id`` attribute (e.g. `aprender.text.Tokenizer`).

    Returns:
        Distinct ids, in that order (empty when none is known).
    """
    found: list[int] = []
    candidates = (
        model.generation_config.get("eos_token_id"),
        model.config.eos_token_id,
        getattr(tokenizer, "eos_token_id", None),
    )
    for value in candidates:
        found.extend([value] if isinstance(value, int) else list(value or ()))
    return list(dict.fromkeys(found))


# ----------------------------------------------------------------------------------------- state


@dataclass
class _DecodeState:
    """The padded batch being decoded and what each row has produced."""

    ids: Tensor  # (B, T_prompt + steps), left-padded
    mask: Tensor  # (B, T_prompt + steps), 1 = real token
    positions: Tensor  # (B, T_prompt + steps)
    seen: Tensor | None  # (B, V) tokens seen, for the repetition penalty
    generated: list[list[int]]
    active: list[int]  # rows still growing
    fed: int = 0  # columns already in the KV cache

    @classmethod
    def start(cls, prompts: list[list[int]], device: torch.device, vocab_size: int | None) -> _DecodeState:
        width = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), width), _INPUT_PAD_ID, dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        seen = None if vocab_size is None else token_presence(prompts, vocab_size, device)
        return cls(ids, mask, positions, seen, [[] for _ in prompts], list(range(len(prompts))))

    def append(
        self, tokens: list[int], eos_token_ids: Sequence[int], stops: StopStrings | None, streamer: Streamer | None
    ) -> None:
        """Record one chosen token per row (finished rows get padding) and retire rows that ended."""
        column = [token if row in self.active else _INPUT_PAD_ID for row, token in enumerate(tokens)]
        new = torch.tensor(column, dtype=torch.long, device=self.ids.device)[:, None]
        self.ids = torch.cat((self.ids, new), dim=1)
        self.mask = torch.cat((self.mask, torch.ones_like(new)), dim=1)
        self.positions = torch.cat((self.positions, self.positions[:, -1:] + 1), dim=1)
        still: list[int] = []
        for row in self.active:
            token = tokens[row]
            self.generated[row].append(token)
            if self.seen is not None:
                self.seen[row, token] = True
            if streamer is not None:
                streamer(row, [token])
            ended = token in eos_token_ids or (stops is not None and stops.completed_by_last(self.generated[row]))
            if not ended:
                still.append(row)
        self.active = still

    def model_inputs(self, cached: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(ids, attention mask, position ids) for the next forward call; with a cache only the unfed columns."""
        start = self.fed if cached else 0
        self.fed = self.ids.shape[1]
        return self.ids[:, start:], self.mask, self.positions[:, start:]

    def outputs(self, pad_token_id: int | None) -> list[list[int]]:
        if pad_token_id is None:
            return [list(row) for row in self.generated]
        width = max(len(row) for row in self.generated)
        return [row + [pad_token_id] * (width - len(row)) for row in self.generated]


def _next_token_scores(model: CausalLM, state: _DecodeState, cache: KVCache | None) -> Tensor:
    """Float32 logits of the next token for every row, shape (B, V)."""
    ids, mask, positions = state.model_inputs(cached=cache is not None)
    hidden = model.forward_hidden(ids, attention_mask=mask, position_ids=positions, kv_cache=cache)
    return model.logits(hidden[:, -1]).float()


# ----------------------------------------------------------------------------------------- checks


def _prompts(input_ids: Sequence[Sequence[int]] | Tensor, vocab_size: int) -> list[list[int]]:
    if isinstance(input_ids, Tensor):
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            shape = tuple(input_ids.shape)
            raise GenerationError(
                f"input_ids tensor must hold integer ids of shape (B, T), got {shape} {input_ids.dtype}"
            )
        input_ids = input_ids.tolist()
    prompts = [list(prompt) for prompt in input_ids]
    if not prompts:
        raise GenerationError("input_ids holds no prompt; pass at least one list of token ids")
    for row, prompt in enumerate(prompts):
        if not prompt:
            raise GenerationError(f"prompt {row} is empty; give it at least one token (e.g. the BOS id)")
        bad = _first_invalid_id(prompt, vocab_size)
        if bad is not None:
            raise GenerationError(
                f"prompt {row} holds {bad!r}, not a token id in [0, {vocab_size}); use the model's tokenizer"
            )
    return prompts


def _first_invalid_id(ids: Sequence[object], vocab_size: int) -> object | None:
    """The first entry that is not an int in ``[0, vocab_size)``, or None."""
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            return token
    return None


def _check_options(
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int | None,
    vocab_size: int,
    do_sample: bool,
    generator: torch.Generator | None,
) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens!r} must be a whole number >= 1")
    for name, ids in (
        ("eos_token_ids", eos_token_ids),
        ("pad_token_id", [] if pad_token_id is None else [pad_token_id]),
    ):
        bad = _first_invalid_id(ids, vocab_size)
        if bad is not None:
            raise GenerationError(f"{name} holds {bad!r}, not a token id in [0, {vocab_size})")
    if generator is not None and not do_sample:
        raise GenerationError("a generator only drives sampling; pass do_sample=True or drop it")


def _stop_strings(stop_strings: Sequence[str] | None, tokenizer: TokenDecoder | None) -> StopStrings | None:
    if stop_strings is None:
        return None
    if tokenizer is None:
        raise GenerationError("stop_strings need a tokenizer to decode the generated tokens; pass tokenizer=...")
    return StopStrings(stop_strings, tokenizer)
