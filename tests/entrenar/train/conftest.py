"""Fixtures of the training tests: one torch thread, tiny configs; helpers live in `_runs.py`."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fixtures.threads import torch_threads


def _load_runs():  # type: ignore[no-untyped-def]
    name = "entrenar_train_test_runs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_runs.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


runs = _load_runs()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: reproducible sums and no spinning threads on a shared 2-core machine."""
    with torch_threads(1):
        yield


HEAD_SCALE = 4.0


@pytest.fixture(scope="session")
def memorizable_checkpoints(
    tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny checkpoints with the LM head (the tied embedding for llama/qwen3) scaled by `HEAD_SCALE`.

    Why: LoRA leaves the head and the final RMSNorm frozen, and RMSNorm fixes the hidden norm at about
    sqrt(64) = 8. With the fixture's head rows of norm 0.1 * sqrt(64) = 0.8 the best logit margin is about
    8 * 0.8 = 6.4 against logsumexp(1023 others) = ln(1023) + ~0.3 = 7.2, so no adapter can push the loss of
    a memorised token below ~1.2 nats (measured: LoRA plateaus at 1.3-1.4). A 4x head lifts that floor.
    """
    from entrenar.models import from_pretrained, save_pretrained

    root = tmp_path_factory.mktemp("memorizable")
    folders = {}
    for family, source in tiny_checkpoints.items():
        model = from_pretrained(source)
        with torch.no_grad():
            model.lm_head_weight.mul_(HEAD_SCALE)
        save_pretrained(model, root / family)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / name, root / family / name)
        folders[family] = root / family
    return folders


# method -> (fixture family, config sections): one family per method, so the three runs cover tied and
# untied heads, BOS and no BOS, q/k norms and q/k/v biases.
METHOD_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("qwen2", {}),
    "qlora": ("llama", {"quantize": {"bits": 4}}),
    "full": ("qwen3", {"lora": None, "optimizer": {"lr": 3.0e-3}}),
}


@pytest.fixture(scope="session")
def trained(memorizable_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """method -> the `TrainResult` of 30 steps on the memory dataset (trained once per session)."""
    from rich.console import Console

    from entrenar.config import load_config
    from entrenar.train import run_training

    cache: dict[str, Any] = {}

    def get(method: str) -> Any:
        if method not in cache:
            family, sections = METHOD_RUNS[method]
            folder = tmp_path_factory.mktemp(method)
            config = runs.write_config(folder, memorizable_checkpoints[family], **sections)
            with torch_threads(1):
                cfg = load_config(config, ["training.max_steps=30"])
                cache[method] = run_training(cfg, console=Console(file=io.StringIO()))
        return cache[method]

    return get
