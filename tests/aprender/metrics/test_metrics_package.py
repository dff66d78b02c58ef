"""aprender.metrics as a package: the curated API, a torch-free import, and GPU tensors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import aprender.metrics as metrics


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(metrics) if not name.startswith("_") and callable(getattr(metrics, name))}
    assert set(metrics.__all__) == public
    assert sorted(metrics.__all__) == metrics.__all__


def test_import_does_not_load_torch() -> None:
    code = "import sys, aprender.metrics; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_metrics_work_without_torch_loaded() -> None:
    # A fresh interpreter with no torch: lists and arrays go through the numpy path.
    code = (
        "import sys, aprender.metrics as m; "
        "print(m.perplexity([-1.0, -1.0]), m.token_accuracy([1, 2], [1, 3]), m.f1_score([0, 1], [0, 1]), "
        "'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["2.718281828459045", "0.5", "1.0", "False"]


@pytest.mark.cuda
def test_accumulators_reduce_cuda_tensors_on_the_device() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 16, 50, generator=generator)
    labels = torch.randint(0, 50, (4, 16), generator=generator)
    labels[:, :3] = -100
    log_probs = logits.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    on_cpu, on_gpu = metrics.PerplexityAccumulator(), metrics.PerplexityAccumulator()
    on_cpu.update(log_probs, mask=labels != -100)
    on_gpu.update(log_probs.cuda(), mask=(labels != -100).cuda())
    assert on_gpu.compute() == pytest.approx(on_cpu.compute(), rel=1e-6)
    accuracy = metrics.TokenAccuracyAccumulator()
    accuracy.update(logits.cuda(), labels.numpy())  # numpy labels are moved to the logits' device
    assert accuracy.compute() == pytest.approx(metrics.token_accuracy(logits, labels))
    mean = metrics.MeanAccumulator()
    mean.update(log_probs.cuda(), weight=torch.ones_like(log_probs).cuda())
    assert mean.compute() == pytest.approx(log_probs.double().mean().item())
