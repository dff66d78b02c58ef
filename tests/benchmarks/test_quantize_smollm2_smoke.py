"""Smoke test of benchmarks/quantize_smollm2.py on the tiny Llama, so the experiment cannot rot.

The tables and the verdicts are checked on hand-made rows; one run of `main` quantizes the tiny Llama (standing in
for SmolLM2) as Q8_0, Q4_K_M and Q3_K_M without and with calibration, compares each file with the original on the
held-out text, times our Q4_K_M export against llama-quantize's once (when llama-cpp-python is installed), then
reruns reusing every run but timing the quantizers again. The speed rows' skip is checked on its own.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = "quantize_smollm2.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)


def _row(bench: ModuleType, gguf_type: str, calibrated: bool, kl_mean: float) -> object:
    return bench.Row(gguf_type, calibrated, 3 * 2**20, 12.4, 30.6, 1000, 20.0, 21.5, kl_mean, 0.5, 2.0, 0.875)


def test_report_and_verdict(bench: ModuleType) -> None:
    rows = [
        _row(bench, "q4_k_m", False, 0.04),
        _row(bench, "q4_k_m", True, 0.03),
        _row(bench, "q3_k_m", False, 0.1),
        _row(bench, "q3_k_m", True, 0.125),
    ]
    table = bench.report(rows)
    assert "| Q4_K_M | imatrix | 3.0 | 12 | 31 | 20.000 | 21.500 | 0.03000 | 0.5000 | 2.000 | 87.50% |" in table
    assert bench.verdict(rows) == (
        "calibration lowers the mean KL against the original on eval.txt: "
        "Q4_K_M yes (0.04000 -> 0.03000, -25.0%); Q3_K_M NO (0.10000 -> 0.12500, +25.0%)"
    )


def test_speed_report(bench: ModuleType) -> None:
    # medians 12.0 and 3.0 (of 3 repeats): ours / llama.cpp = 4.00x
    ours = bench.SpeedRow("ours: export_gguf from F32", 1, (12.0, 11.5, 13.0), 12.0, 11.5, 105453952)
    theirs = bench.SpeedRow("llama.cpp: llama_model_quantize from F16", 2, (3.25, 3.0, 2.5), 3.0, 2.5, 105453952)
    table = bench.speed_report([ours, theirs])
    assert "| ours: export_gguf from F32 | 1 | 12.000 | 11.500 | 105453952 |" in table
    assert "| llama.cpp: llama_model_quantize from F16 | 2 | 3.000 | 2.500 | 105453952 |" in table
    assert "Q4_K_M speed, ours / llama.cpp (medians of 3): 4.00x; goal <= 3x: NOT met" in table
    assert "Q4_K_M file bytes: ours 105453952, llama.cpp 105453952: the same" in table
    faster = bench.SpeedRow("ours: export_gguf from F32", 1, (9.0, 9.0, 9.0), 9.0, 9.0, 105453953)
    table = bench.speed_report([faster, theirs])  # exactly 3x
    assert "(medians of 3): 3.00x; goal <= 3x: met" in table and ": DIFFERENT" in table


def test_speed_skipped_without_llama_cpp_or_with_no_speed(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = bench.parse_args(["--cache", str(tmp_path)])
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    reason = "llama-cpp-python is not importable; `make llama-cpp` builds it"
    assert bench.speed_section(tmp_path, tmp_path / "speed", "key", args) == (
        f"speed: skipped ({reason})",
        {"skipped": reason},
    )
    args = bench.parse_args(["--no-speed", "--cache", str(tmp_path)])
    assert bench.speed_section(tmp_path, tmp_path / "speed", "key", args) == (
        "speed: skipped (--no-speed)",
        {"skipped": "--no-speed"},
    )
    assert not (tmp_path / "speed").exists()


def _assert_speed(speed: dict[str, Any], root: Path, out: str) -> None:
    """The speed rows of one run of `main` with ``--threads 1 --speed-repeats 1``: real times, the ratio of
    their medians, the sizes of the files they made."""
    ours, theirs = speed["rows"]
    assert (ours["quantizer"], ours["threads"]) == ("ours: export_gguf from F32", 1)
    assert (theirs["quantizer"], theirs["threads"]) == ("llama.cpp: llama_model_quantize from F16", 1)
    for row in (ours, theirs):
        (seconds,) = row["seconds"]  # one repeat: it is the median and the min
        assert seconds > 0 and row["median_seconds"] == row["min_seconds"] == seconds
    assert speed["ratio"] == ours["median_seconds"] / theirs["median_seconds"]
    assert speed["goal"] == 3.0 and speed["met"] == (speed["ratio"] <= 3.0)
    assert ours["file_bytes"] == (root / "speed" / "ours-q4_k_m.gguf").stat().st_size
    assert theirs["file_bytes"] == (root / "speed" / "llama-quantize-q4_k_m.gguf").stat().st_size
    # the same tensor types (the tiny Llama's rows fall back to Q5_0 and Q8_0 alike) and metadata: the same size
    assert speed["same_size"] and ours["file_bytes"] == theirs["file_bytes"]
    verdict = f"Q4_K_M speed, ours / llama.cpp (medians of 1): {speed['ratio']:.2f}x; goal <= 3x: "
    assert verdict + ("met" if speed["met"] else "NOT met") in out
    assert "| quantizer | threads | median s | min s | file bytes |" in out


def test_main_quantizes_compares_and_reuses(
    bench: ModuleType, bench_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--threads", "1", "--samples", "4", "--seq-len", "32", "--speed-repeats", "1", "--cache", str(bench_cache)]
    bench.main(args)
    out = capsys.readouterr().out
    root = bench_cache / "quantize-smollm2"
    results = json.loads((root / "results.json").read_text())
    rows = {(row["gguf_type"], row["calibrated"]): row for row in results["rows"]}
    assert list(rows) == [(t, c) for t in ("q8_0", "q4_k_m", "q3_k_m") for c in (False, True)]
    files = {key: bench.run_file(root / "runs", *key) for key in rows}
    for key, row in rows.items():
        assert row["file_bytes"] == files[key].stat().st_size
        assert row["quantize_seconds"] > 0 and row["compare_seconds"] > 0
        assert 0 < row["kl_mean"] < row["kl_p99"] < row["kl_max"] and 0.5 < row["same_top"] <= 1
        # the same original on the same text in every run
        assert row["tokens"] == rows["q8_0", False]["tokens"] > 1000
        assert row["original_perplexity"] == pytest.approx(rows["q8_0", False]["original_perplexity"], rel=1e-9)
    for calibrated in (False, True):  # fewer bits, further from the original
        kl = [rows[t, calibrated]["kl_mean"] for t in ("q8_0", "q4_k_m", "q3_k_m")]
        assert kl == sorted(kl)
    for gguf_type in ("q4_k_m", "q3_k_m"):  # the importance matrix changed the quantized weights
        assert files[gguf_type, False].read_bytes() != files[gguf_type, True].read_bytes()
    # llama.cpp's Q8_0 quantizer takes no importance matrix
    assert results["unchanged_by_calibration"] == ["q8_0"] and "same file without and with calibration: q8_0" in out
    assert "calibration lowers the mean KL against the original on eval.txt: Q4_K_M " in out
    assert "| Q3_K_M | imatrix |" in out and "calibration: 4 windows of 32 tokens" in out
    timed = importlib.util.find_spec("llama_cpp") is not None  # without llama-cpp-python the speed rows skip
    if timed:
        _assert_speed(results["speed"], root, out)
    else:
        assert "speed: skipped (llama-cpp-python is not importable" in out and list(results["speed"]) == ["skipped"]

    bench.main(args)  # every run reused (the F16 file of the speed rows too), the quantizers timed again
    out = capsys.readouterr().out
    assert out.count("reusing ") == 6 + int(timed) and "quantizing" not in out
    rerun = json.loads((root / "results.json").read_text())
    assert rerun["rows"] == results["rows"]
    if timed:
        _assert_speed(rerun["speed"], root, out)
        timings = [[row["seconds"] for row in run["speed"]["rows"]] for run in (results, rerun)]
        assert timings[0] != timings[1]  # timed again, not reused
