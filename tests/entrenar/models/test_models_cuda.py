"""On a CUDA GPU: bf16 forward (fused SDPA kernels) against the fp32 CPU model, loading to the GPU, decoding.

Skipped without a GPU (see tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from entrenar.models import from_pretrained

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("padded", [False, True])
def test_bfloat16_on_cuda_matches_float32_on_cpu(tiny_checkpoint: tuple[str, Path], padded: bool, oracle: Any) -> None:
    _, folder = tiny_checkpoint
    cpu = from_pretrained(folder, dtype="float32")
    gpu = from_pretrained(folder, dtype="bfloat16", device="cuda")
    assert {p.device.type for p in gpu.parameters()} == {"cuda"}
    ids = oracle.random_ids(3, 40, seed=20)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :9] = 0
        mask[2, -5:] = 0
    with torch.no_grad():
        expected = cpu(ids, attention_mask=mask)
        logits = gpu(ids.cuda(), attention_mask=mask.cuda()).float().cpu()
    real = mask.bool()
    # bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%); a few roundings per layer stay under 2%.
    assert oracle.relative_error(logits[real], expected[real]) <= 2e-2
    assert (logits - expected)[real].abs().max().item() <= 0.15


def test_training_step_and_decoding_on_cuda(tiny_checkpoints: dict[str, Path], oracle: Any) -> None:
    model = from_pretrained(tiny_checkpoints["mistral"], dtype="bfloat16", device="cuda").train()
    model.set_gradient_checkpointing(True)
    ids = oracle.random_ids(2, 24, seed=21).cuda()
    model(ids).float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        full = model(ids).float()
        cache = model.new_kv_cache()
        steps = [model(ids[:, :20], kv_cache=cache)] + [model(ids[:, t : t + 1], kv_cache=cache) for t in range(20, 24)]
    incremental = torch.cat(steps, dim=1).float()
    assert oracle.relative_error(incremental, full) <= 2e-2
