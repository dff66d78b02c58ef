"""Smoke test of benchmarks/quantize_smollm2.py on the tiny Llama, so the experiment cannot rot.

The table and the verdict are checked on hand-made rows; one run of `main` quantizes the tiny Llama (standing in
for SmolLM2) as Q8_0, Q4_K_M and Q3_K_M without and with calibration, compares each file with the original on the
held-out text, then reruns reusing every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

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


def test_main_quantizes_compares_and_reuses(
    bench: ModuleType, bench_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--threads", "1", "--samples", "4", "--seq-len", "32", "--cache", str(bench_cache)]
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

    bench.main(args)  # every run reused
    out = capsys.readouterr().out
    assert out.count("reusing ") == 6 and "quantizing" not in out
    assert json.loads((root / "results.json").read_text())["rows"] == results["rows"]
