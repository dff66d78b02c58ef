"""Helpers shared by the LoRA tests: fresh transformers models of the tiny fixtures, PEFT's selection."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn


@pytest.fixture(scope="session")
def load_hf(tiny_checkpoints: dict[str, Path]) -> Callable[[str], Any]:
    """family -> a freshly loaded transformers model (float32, eval mode)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    def load(family: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(tiny_checkpoints[family]).eval()

    return load


@pytest.fixture(scope="session")
def peft_selection() -> Callable[..., set[str]]:
    """(model, **LoraConfig kwargs) -> the module paths PEFT adapts (relative to the transformers model)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    def select(model: nn.Module, **kwargs: Any) -> set[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, PeftLoraConfig(task_type="CAUSAL_LM", **kwargs))
        inner = peft_model.base_model.model
        return {path for path, module in inner.named_modules() if isinstance(module, LoraLayer)}

    return select
