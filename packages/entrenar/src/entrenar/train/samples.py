"""Greedy answers to ``training.sample_prompts`` during training (`sample_answers`).

Each prompt is encoded as the training data presents a prompt (`prompt_ids`): for conversation formats
(messages, ShareGPT, prompt/completion, alpaca) and a tokenizer with a chat template, one user turn rendered with
the template and the assistant turn opened (``add_generation_prompt``); otherwise ``[BOS] + tokens(prompt)``, as
`entrenar.data.encode` starts a plain sample. The model answers greedily (`entrenar.generation.generate`, KV
cache) under the run's precision, in eval mode (no dropout), until an end-of-sequence token or
``training.sample_max_new_tokens``; the answer is decoded without special tokens. Greedy decoding draws no random
numbers, so samples do not change the training run (a resumed run stays bit-identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from aprender.text import Tokenizer, encode_chat
from entrenar.generation import generate
from entrenar.generation.generate import default_eos_token_ids

if TYPE_CHECKING:
    from entrenar.train.build import TrainingRun

__all__ = ["prompt_ids", "sample_answers"]


def prompt_ids(tokenizer: Tokenizer, prompt: str, chat: bool) -> list[int]:
    """The ids the model continues for `prompt` (module docstring); `chat`: as a user turn of the chat template."""
    if chat:
        return list(encode_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True).ids)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    bos = tokenizer.bos_token_id if tokenizer.add_bos_token else None
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def sample_answers(run: TrainingRun, prompts: Sequence[str]) -> list[str]:
    """The model's greedy answer to each prompt (module docstring); the model's train/eval mode is restored."""
    model, tokenizer = run.model, run.tokenizer
    max_new_tokens = run.config.training.sample_max_new_tokens
    assert max_new_tokens is not None  # the config loader sets it with the prompts
    chat = run.train_data.stats.format != "text" and tokenizer.chat_template is not None
    ids = [prompt_ids(tokenizer, prompt, chat) for prompt in prompts]
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), run.precision.autocast():
            outputs = generate(
                model,
                ids,
                max_new_tokens=max_new_tokens,
                eos_token_ids=default_eos_token_ids(model, tokenizer),
            )
    finally:
        model.train(training)
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in outputs]
