"""Smoke test of benchmarks/train_throughput.py on a tiny checkpoint, so the script cannot rot.

The script's measuring functions run for one or two steps of the tiny random Llama; the checks are the
ones the real benchmark relies on: both sides see the same data (equal untrained loss on the fixed set,
equal real tokens over one epoch of the variable set), padding is counted, and the report's ratios.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = "train_throughput.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)


@pytest.fixture(scope="module")
def workloads(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return bench.write_workloads(tmp_path_factory.mktemp("bench-data"), variable_samples=10, fixed_batches=2)


def _config(bench: ModuleType, folder: Path, data: Path, method: str, tmp_path: Path) -> object:
    return bench.bench_config(folder, data, method, output_dir=tmp_path / "out")


def _worker(bench: ModuleType, capsys: pytest.CaptureFixture[str], job: dict[str, str], **spec: object) -> dict:
    """Run the ``--worker`` entry point in this process and return the measurement it prints."""
    bench.main(["--worker", json.dumps({"job": job, **spec})])
    result: dict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result


def test_workers_see_the_same_samples_over_one_epoch(
    bench: ModuleType,
    workloads: dict[str, Path],
    tiny_checkpoints: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = {
        "model_dir": str(tiny_checkpoints["llama"]),
        "data": {name: str(path) for name, path in workloads.items()},
        "warmup": 0,
        "fixed_steps": 1,
        "threads": 1,
    }
    ours = _worker(bench, capsys, {"side": "entrenar", "method": "qlora", "workload": "variable"}, **spec)
    # transformers + peft + bitsandbytes' NF4 on the CPU.
    theirs = _worker(bench, capsys, {"side": "transformers", "method": "qlora", "workload": "variable"}, **spec)
    # One epoch each without warm-up: all 10 samples, whatever the batching, so the real tokens agree.
    assert ours["tokens"] == theirs["tokens"] > 0
    assert theirs["steps"] == 3  # ceil(10 samples / batch of 4)
    assert ours["steps"] < theirs["steps"]  # packing puts several samples in a row
    assert theirs["slots"] > theirs["tokens"]  # padding to the longest sample of each batch
    assert ours["peak_rss_mib"] >= ours["setup_rss_mib"] > 0 and ours["wall"] > 0 and ours["cpu"] > 0


def test_sft_records_are_deterministic_and_long_tailed(bench: ModuleType) -> None:
    first, again = bench.sft_records(200, 7), bench.sft_records(200, 7)
    assert first == again and first != bench.sft_records(200, 8)
    words = sorted(len(record["messages"][2]["content"].split()) for record in first)
    # Log-normal lengths: the longest reply is several times the median one.
    assert words[-1] > 3 * words[len(words) // 2]


def test_report_ratios(bench: ModuleType) -> None:
    def measurement(tokens: int, wall: float, peak: float) -> object:
        return bench.Measurement(2, tokens, tokens * 2, wall, wall * 2, 1.0, 100.0, peak)

    results = {
        bench.Job("entrenar", "lora", "fixed"): [measurement(1000, 2.0, 300.0), measurement(1000, 4.0, 300.0)],
        bench.Job("transformers", "lora", "fixed"): [measurement(1000, 5.0, 400.0)],
        bench.Job("entrenar", "qlora", "fixed"): [measurement(1000, 4.0, 200.0)],
        bench.Job("transformers", "qlora", "fixed"): [measurement(1000, 8.0, 500.0)],
    }
    table = bench.report(results)
    # Ours: median of 500 and 250 tokens/s = 375; reference 200 tokens/s -> 1.88x; RSS 300 / 400 = 0.75x.
    assert "| fixed | entrenar | lora | 2 | 1000 | 50% | 375 (250-500) |" in table
    assert "| fixed | lora | 1.88x | 1.88x | 0.75x |" in table
    # Each method against the same method of the reference: 250 / 125 tokens/s, 200 / 500 MiB.
    assert "| fixed | qlora | 2.00x | 2.00x | 0.40x |" in table


def test_main_runs_every_measurement_in_worker_processes(
    bench: ModuleType,
    bench_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--quick", "--methods", "lora", "--threads", "1", "--samples", "8", "--warmup", "0", "--fixed-steps", "1"]
    bench.main([*flags, "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "variable-length set: 8 samples" in out
    assert "round 1: fixed/transformers/lora" in out and "round 1: variable/entrenar/lora" in out
    ratios = [line for line in out.splitlines() if line.startswith(("| fixed | lora |", "| variable | lora |"))]
    assert len(ratios) == 2 and all(line.count("x |") == 3 for line in ratios)
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| fixed |") and "| 100% |" in line]
    # Every fixed document is cut to SEQ_LEN tokens: one step is BATCH_SIZE full rows on both sides ...
    assert [row[5].strip() for row in rows] == [str(bench.BATCH_SIZE * bench.SEQ_LEN)] * 2
    # ... and LoRA B starts at zero, so the first loss is the base model's on the same batch on both sides.
    assert rows[0][-2].strip() == rows[1][-2].strip()
    with pytest.raises(SystemExit, match="--methods"):
        bench.main(["--methods", "dora", "--cache", str(tmp_path)])


def test_too_many_steps_for_the_data_is_refused(
    bench: ModuleType, workloads: dict[str, Path], tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(bench, tiny_checkpoints["llama"], workloads["fixed"], "lora", tmp_path)
    with pytest.raises(SystemExit, match="exceed the run's 6"):  # 3 epochs of 2 batches
        bench.measure_ours(cfg, warmup=2, steps=5)


def test_rounds_alternate_the_order(bench: ModuleType) -> None:
    calls: list[str] = []

    def fake(job: object) -> object:
        calls.append(job.label)  # type: ignore[attr-defined]
        return bench.Measurement(1, 100, 100, 1.0, 1.0, 1.0, 10.0, 20.0)

    jobs = bench.jobs_for(["lora"])[:2]
    results = bench.measure_all(jobs, 3, fake)
    first, second = jobs[0].label, jobs[1].label
    assert calls == [first, second, second, first, first, second]
    assert [len(found) for found in results.values()] == [3, 3]


def test_jobs_and_arguments(bench: ModuleType) -> None:
    labels = [job.label for job in bench.jobs_for(["lora", "qlora"])]
    assert labels == [
        "fixed/entrenar/lora",
        "fixed/transformers/lora",
        "fixed/entrenar/qlora",
        "fixed/transformers/qlora",
        "variable/entrenar/lora",
        "variable/transformers/lora",
        "variable/entrenar/qlora",
        "variable/transformers/qlora",
    ]
    args = bench.parse_args(["--quick"])
    assert (args.repeats, args.warmup, args.fixed_steps, args.samples) == (1, 1, 2, 24)
    args = bench.parse_args(["--quick", "--samples", "8"])  # explicit flags win over --quick
    assert (args.repeats, args.samples) == (1, 8)
    assert bench.parse_args([]).samples == 96
