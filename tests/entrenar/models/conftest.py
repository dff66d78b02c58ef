"""Helpers for the entrenar.models tests: two CPU threads, transformers as the oracle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fixtures.threads import torch_threads


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    """The machine is shared: keep torch to two threads in these tests."""
    with torch_threads(2):
        yield


def load_reference(folder: Path, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> Any:
    """transformers' own model for `folder`, in eval mode (the oracle)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn)
    return model.eval()


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = 1024) -> torch.Tensor:
    """Token ids in [7, vocab): above the tiny tokenizer's special tokens, so no pad id sneaks in."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(7, vocab, (batch, length), generator=generator)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``||ours - reference|| / ||reference||`` in float64."""
    diff = (ours.double() - reference.double()).norm()
    return float(diff / reference.double().norm().clamp_min(1e-30))


class Oracle:
    """The helpers above, handed to tests as the `oracle` fixture."""

    load_reference = staticmethod(load_reference)
    random_ids = staticmethod(random_ids)
    relative_error = staticmethod(relative_error)


@pytest.fixture
def oracle() -> type[Oracle]:
    """transformers loading and comparison helpers."""
    return Oracle
