"""Does quantization-aware training make a SmolLM2-135M fine-tune survive Q4_0 better than quantizing it afterwards?

Method (results in docs/benchmarks.md):

- Base and data: the converted SmolLM2 (``.cache/bench/smollm2``) and the pruning benchmark's split of CPython's
  reference-manual topics (`prune_smollm2.write_data`: ``calibration.txt`` to train on, every fifth topic held out
  in ``eval.txt``).
- Fine-tunes: the pruning benchmark's LoRA recipe (`prune_smollm2.recovery_config`: r 16, alpha 32, all-linear,
  AdamW 5e-4, cosine, `STEPS` steps of 4 x 512 tokens), once plain (the run `prune_smollm2.py` makes as its
  "dense + LoRA" line, reused when it is there) and once with ``qat: {format: q4_0}`` from the first step.
  Each adapter is folded into the base as ``entrenar publish`` folds it.
- Quantization and score: ``entrenar quantize``'s own function (`entrenar.quant.run.run_quantize`) writes each
  folded model (and the base) as Q4_0 without calibration (the quantizer QAT trained for) and compares the file,
  dequantized, with its float model over every token of ``eval.txt``: the perplexity of both, the mean KL.
- Verdict: the share of the loss that quantizing the plain fine-tune lost which QAT recovers,
  ``(loss(plain, Q4_0) - loss(QAT, Q4_0)) / (loss(plain, Q4_0) - loss(plain, float))`` (losses are log
  perplexities); the issue's goal is at least 30% (what torchao and torchtune report for int4 QAT).

Runs are reused while what they were made from is unchanged (a ``benchmark_run.json`` beside each), so a rerun
only prints; every number is written to ``qat-smollm2/results.json`` under ``--cache``.

Run: ``nice -n 10 .venv/bin/python benchmarks/qat_smollm2.py [--threads 2]`` (on the 2 shared cores of our VM:
each fine-tune 10-20 minutes, QAT's rounding adds about 4 s a step; each comparison 3-4 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
FORMAT = "q4_0"
"""What QAT trains for and every model is quantized to."""
GOAL = 0.3
"""The share of the post-training quantization loss QAT should recover."""


@dataclass(frozen=True)
class Row:
    """One model, in float and as Q4_0, on ``eval.txt``."""

    model: str
    float_perplexity: float
    quantized_perplexity: float
    kl_mean: float
    same_top: float
    tokens: int
    train_seconds: float | None


def quantized(name: str, folder: Path, out: Path, eval_data: Path, key: dict[str, Any]) -> dict[str, Any]:
    """`folder` as a `FORMAT` GGUF file in `out`, compared with its float model on `eval_data` (reused)."""
    from prune_smollm2 import reuse_or_make

    from entrenar.quant.run import run_quantize

    def make() -> dict[str, Any]:
        lines: list[str] = []
        result = run_quantize(folder, out / f"{name}.gguf", FORMAT, eval_data=eval_data, log=lines.append)
        assert result.quality is not None
        print(f"{name}: " + "\n  ".join(lines), flush=True)
        return asdict(result.quality) | {"log": lines}

    return reuse_or_make(out, key | {"format": FORMAT}, make)


def fine_tune(
    name: str, base: Path, folder: Path, data: tuple[Path, Path], key: dict[str, Any], steps: int, qat: bool
) -> tuple[Path, float]:
    """The pruning benchmark's LoRA recipe on `base` (with ``qat:`` when `qat`), folded: its folder, train seconds."""
    from prune_smollm2 import recover

    sections = {"qat": {"format": FORMAT}} if qat else None
    recover(name, base, None, folder, data, key, steps, sections)
    record = json.loads((folder / "benchmark_run.json").read_text(encoding="utf-8"))
    return folder / "folded", float(record["values"]["seconds"])


def recovered_share(rows: dict[str, Row]) -> float:
    """``(loss(plain, Q) - loss(QAT, Q)) / (loss(plain, Q) - loss(plain, float))`` (module docstring)."""
    plain, qat = rows["LoRA"], rows["LoRA + QAT"]
    lost = math.log(plain.quantized_perplexity) - math.log(plain.float_perplexity)
    return (math.log(plain.quantized_perplexity) - math.log(qat.quantized_perplexity)) / lost


def report(rows: Sequence[Row]) -> str:
    """The markdown table."""
    lines = [
        f"| model | perplexity float | perplexity {FORMAT.upper()} | mean KL float -> {FORMAT.upper()} "
        "| same top token | train s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = "" if row.train_seconds is None else f"{row.train_seconds:.0f}"
        lines.append(
            f"| {row.model} | {row.float_perplexity:.3f} | {row.quantized_perplexity:.3f} | {row.kl_mean:.5f} "
            f"| {100 * row.same_top:.2f}% | {seconds} |"
        )
    return "\n".join(lines)


def verdict(share: float) -> str:
    """The share against `GOAL`."""
    met = "met" if share >= GOAL else "NOT met"
    return (
        f"QAT recovers {100 * share:.1f}% of the loss quantizing the plain fine-tune lost (goal >= {GOAL:.0%}: {met})"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    from prune_smollm2 import RECOVERY_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=RECOVERY_STEPS, help="LoRA steps of each fine-tune")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and experiment folder")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Fine-tune without and with QAT, quantize both and the base to Q4_0, compare each with its float model."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    from pydoc_data.topics import topics

    from forward_backward import smollm2_folder
    from prune_smollm2 import sha256, write_data

    base = smollm2_folder(args.cache / "smollm2")
    prune_root, root = args.cache / "prune-smollm2", args.cache / "qat-smollm2"
    data = write_data(prune_root / "data", topics)  # the pruning benchmark's files, so its plain run is reused
    key = {"base": sha256(base / "model.safetensors"), "eval": sha256(data[1])}
    plain, plain_seconds = fine_tune(
        "dense + LoRA", base, prune_root / "recovery" / "dense", data, key, args.steps, False
    )
    qat, qat_seconds = fine_tune("dense + LoRA + QAT", base, root / "qat", data, key, args.steps, True)
    rows = {}
    for name, folder, seconds in (
        ("base", base, None),
        ("LoRA", plain, plain_seconds),
        ("LoRA + QAT", qat, qat_seconds),
    ):
        values = quantized(name, folder, root / "quantized" / name.replace(" + ", "-"), data[1],
                           key | {"model": sha256(folder / "model.safetensors")})  # fmt: skip
        rows[name] = Row(
            name,
            values["original_perplexity"],
            values["quantized_perplexity"],
            values["kl_mean"],
            values["same_top"],
            values["tokens"],
            seconds,
        )
    share = recovered_share(rows)
    tables = [report(list(rows.values())), verdict(share)]
    results = {
        "settings": {"steps": args.steps, "threads": args.threads, "format": FORMAT},
        "rows": [asdict(row) for row in rows.values()],
        "recovered_share": share,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\n\n" + "\n\n".join(tables))
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
