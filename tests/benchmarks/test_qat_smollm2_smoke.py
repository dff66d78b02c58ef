"""Smoke test of benchmarks/qat_smollm2.py on the tiny Llama, so the experiment cannot rot.

The share and the verdict are checked on hand-made rows; one run of `main` fine-tunes the tiny Llama (standing in
for SmolLM2) without and with QAT for Q4_0, quantizes both and the base, compares each with its float model, then
reruns reusing every run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = "qat_smollm2.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)


def test_recovered_share_and_verdict(bench: ModuleType) -> None:
    rows = {
        "LoRA": bench.Row("LoRA", 20.0, 20.0 * math.e**0.5, 0.1, 0.8, 100, 1.0),  # quantizing loses 0.5 nats
        "LoRA + QAT": bench.Row("LoRA + QAT", 21.0, 20.0 * math.e**0.3, 0.05, 0.9, 100, 2.0),  # loses 0.3
    }
    share = bench.recovered_share(rows)
    assert share == pytest.approx(0.4)
    assert bench.verdict(share) == (
        "QAT recovers 40.0% of the loss quantizing the plain fine-tune lost (goal >= 30%: met)"
    )
    assert bench.verdict(0.25).endswith("(goal >= 30%: NOT met)")
    table = bench.report(list(rows.values()))
    assert "| LoRA + QAT | 21.000 | 26.997 | 0.05000 | 90.00% | 2 |" in table


def test_main_fine_tunes_quantizes_and_reuses(
    bench: ModuleType, bench_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--threads", "1", "--steps", "3", "--cache", str(bench_cache)]
    bench.main(args)
    out = capsys.readouterr().out
    results = json.loads((bench_cache / "qat-smollm2" / "results.json").read_text())
    rows = {row["model"]: row for row in results["rows"]}
    assert list(rows) == ["base", "LoRA", "LoRA + QAT"] and rows["base"]["train_seconds"] is None
    for row in rows.values():
        assert row["tokens"] > 1000 and row["kl_mean"] > 0 and 0.5 < row["same_top"] <= 1
    assert rows["LoRA"]["float_perplexity"] != rows["LoRA + QAT"]["float_perplexity"]  # QAT changed the training
    assert rows["LoRA"]["quantized_perplexity"] != rows["LoRA + QAT"]["quantized_perplexity"]
    assert results["recovered_share"] == pytest.approx(
        bench.recovered_share({k: bench.Row(**v) for k, v in rows.items()})
    )
    assert "QAT recovers " in out and "| LoRA + QAT |" in out
    # the QAT output is marked, and quantizing it to its format says it keeps the rounding
    assert "qat: Q4_0 stores every weight with the quantizer the model trained with (qat.format q4_0)" not in out
    qat_log = json.loads((bench_cache / "qat-smollm2" / "quantized" / "LoRA-QAT" / "benchmark_run.json").read_text())
    assert qat_log["values"]["log"][0].startswith("writing Q4_0")

    bench.main(args)  # everything reused
    out = capsys.readouterr().out
    assert out.count("reusing ") == 5 and "step 1/3" not in out
