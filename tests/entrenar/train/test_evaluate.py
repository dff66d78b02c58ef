"""entrenar.train.evaluate: pooled loss, perplexity and token accuracy against full-logit oracles."""

from __future__ import annotations

import math
from importlib import import_module
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from entrenar.config import load_config
from entrenar.data import DataLoader
from entrenar.train import build_run, evaluate

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


@pytest.mark.parametrize("packing", [False, True])
def test_metrics_match_full_logits(tiny_checkpoints: dict[str, Path], tmp_path: Path, packing: bool) -> None:
    # Oracle: torch's summed cross-entropy and arg-max over the model's full (B, T, V) logits, pooled by hand.
    overrides = ["data.val_split=0.5", "data.seq_len=128", f"data.packing={str(packing).lower()}"]
    run = build_run(load_config(runs.write_config(tmp_path, tiny_checkpoints["mistral"]), overrides))
    assert run.val_data is not None
    run.model.train()
    metrics = evaluate(run.loss, run.val_data, batch_size=3, device=run.device, precision=run.precision)
    assert run.model.training  # the mode is restored
    nll, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in DataLoader(run.val_data, batch_size=2, shuffle=False).batches(0):
            extra = {k: batch[k] for k in ("position_ids", "seq_ids") if k in batch}
            logits = run.model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
            labels = batch["labels"]
            nll += F.cross_entropy(logits.transpose(1, 2), labels, reduction="sum").item()
            kept = labels != -100
            correct += int((logits.argmax(-1)[kept] == labels[kept]).sum())
            count += int(kept.sum())
    assert metrics.tokens == count == run.val_data.n_target_tokens
    assert metrics.loss == pytest.approx(nll / count, rel=1e-5)
    assert metrics.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert metrics.token_accuracy == correct / count
