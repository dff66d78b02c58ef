"""Helpers for the entrenar.generation tests: two CPU threads, models loaded once, transformers as the oracle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from entrenar.models import CausalLM, from_pretrained
from fixtures.threads import torch_threads


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    """The machine is shared: keep torch to two threads in these tests."""
    with torch_threads(2):
        yield


@cache
def ours(folder: Path) -> CausalLM:
    """Our model for `folder` (float32, eval mode), loaded once per session."""
    return from_pretrained(folder, dtype="float32")


@cache
def reference(folder: Path) -> Any:
    """transformers' model for `folder` (float32, SDPA, eval mode), loaded once per session: the oracle."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()


def checkpoint_eos_ids(folder: Path) -> list[int]:
    """The EOS ids of the checkpoint's generation_config.json (what transformers' generate stops on)."""
    value = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    return [value] if isinstance(value, int) else list(value)


def random_prompts(lengths: tuple[int, ...], seed: int = 0, vocab: int = 1024) -> list[list[int]]:
    """Prompts of the given lengths, ids in [7, vocab): above the tiny tokenizer's 7 special tokens."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(7, vocab, (n,), generator=generator).tolist() for n in lengths]


def reference_generate(folder: Path, prompts: list[list[int]], pad_token_id: int, **kwargs: Any) -> list[list[int]]:
    """transformers' ``generate`` on left-padded `prompts`; returns the new tokens of each row (padded rectangle)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.no_grad():
        out = reference(folder).generate(ids, attention_mask=mask, pad_token_id=pad_token_id, **kwargs)
    new: list[list[int]] = out[:, width:].tolist()
    return new


class Helpers:
    """The helpers above, handed to tests as the `helpers` fixture."""

    ours = staticmethod(ours)
    reference = staticmethod(reference)
    checkpoint_eos_ids = staticmethod(checkpoint_eos_ids)
    random_prompts = staticmethod(random_prompts)
    reference_generate = staticmethod(reference_generate)


@pytest.fixture
def helpers() -> type[Helpers]:
    """Model loading, prompts and the transformers oracle."""
    return Helpers
