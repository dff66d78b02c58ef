"""Smoke test of benchmarks/merge.py on the tiny Llama, so the script cannot rot.

The base is the tiny random Llama instead of SmolLM2; the checks are the ones the real benchmark relies on:
the variants differ from the base by the intended noise, both tools' workers merge the same config into
outputs equal within the tolerance, and the report's medians and ratios.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from aprender.format.safetensors import load

SCRIPT = "merge.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)


@pytest.fixture(scope="module")
def config(bench: ModuleType, tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = bench.prepare(tmp_path_factory.mktemp("merge-bench"), tiny_checkpoints["llama"])
    return path


def test_variants_are_the_base_plus_relative_noise(
    bench: ModuleType, config: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    base = load(tiny_checkpoints["llama"])
    variants = [load(config.parent / f"variant{i}") for i in (1, 2, 3)]
    name = max(base, key=lambda key: base[key].numel())  # the embedding: enough values for a std
    ratios = [float((v[name] - base[name]).std() / base[name].std()) for v in variants]
    # Gaussian noise of NOISE x the tensor's std, a different draw per variant.
    assert all(0.9 * bench.NOISE < ratio < 1.1 * bench.NOISE for ratio in ratios), ratios
    assert not torch.equal(variants[0][name], variants[1][name])
    written = (config.parent / "variant1" / "model.safetensors").stat().st_mtime_ns
    bench.write_variant(tiny_checkpoints["llama"], config.parent / "variant1", seed=9)  # reused, not rewritten
    assert (config.parent / "variant1" / "model.safetensors").stat().st_mtime_ns == written
    raw = bench.merge_config(Path("/b"), [Path("/v1"), Path("/v2"), Path("/v3")])
    assert raw["merge_method"] == "ties" and raw["base_model"] == "/b" and raw["dtype"] == "float32"
    assert [m["parameters"] for m in raw["models"]] == [{"weight": w, "density": d} for w, d in bench.VARIANTS]


def test_both_workers_merge_the_same_tensors(
    bench: ModuleType, config: Path, tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for side in bench.SIDES:
        bench.main(["--worker", json.dumps({"side": side, "config": str(config), "threads": 1})])
        measurement = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert measurement["peak_rss_mib"] >= measurement["start_rss_mib"] > 0 and measurement["wall"] > 0
    ours, theirs = (bench.output_dir(config, side) for side in bench.SIDES)
    tensors, worst = bench.max_abs_difference(ours, theirs)
    assert tensors == len(load(tiny_checkpoints["llama"]))
    assert worst <= bench.TOLERANCE
    # TIES changed the base: the merge is not a copy of it.
    merged, base = load(bench.output_dir(config, "entrenar")), load(tiny_checkpoints["llama"])
    assert any(not torch.equal(merged[name], base[name]) for name in base)


def test_report_medians_and_ratios(bench: ModuleType) -> None:
    results = {
        "entrenar": [bench.Measurement(10.0, 12.0, 200.0, 900.0), bench.Measurement(14.0, 16.0, 200.0, 1100.0)],
        "mergekit": [bench.Measurement(16.0, 20.0, 300.0, 2000.0)],
    }
    table = bench.report(results)
    # Ours: medians 12 s wall, 14 s CPU, 1000 MiB; against 16 s, 20 s, 2000 MiB.
    assert "| entrenar | 12.0 (10.0-14.0) | 14.0 | 1000 | 200 |" in table
    assert "| ratio | 0.75x | 0.70x | 0.50x |" in table


def test_rounds_alternate_the_order(bench: ModuleType) -> None:
    calls: list[str] = []

    def fake(side: str) -> object:
        calls.append(side)
        return bench.Measurement(1.0, 1.0, 10.0, 20.0)

    results = bench.measure_all(3, fake)
    assert calls == ["entrenar", "mergekit", "mergekit", "entrenar", "entrenar", "mergekit"]
    assert [len(found) for found in results.values()] == [3, 3]


def test_peak_rss_of_a_child_is_its_own(bench: ModuleType) -> None:
    held = torch.ones(128 * 2**20 // 4)  # 128 MiB touched here, so this process's peak is well above a bare child's
    source = "import resource\nfrom pathlib import Path\n" + inspect.getsource(bench.peak_rss_mib)
    child = subprocess.run(
        [sys.executable, "-c", source + "print(peak_rss_mib())"], capture_output=True, text=True, check=True
    )
    # ru_maxrss of a subprocess starts at the parent's peak (vfork + exec); VmHWM is the bare interpreter's ~10 MiB.
    assert float(child.stdout) < 64 < 128 < bench.peak_rss_mib()
    assert float(held[-1]) == 1.0


def test_main_runs_both_tools_in_worker_processes(
    bench: ModuleType,
    bench_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench.main(["--repeats", "1", "--threads", "1", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "round 1: entrenar" in out and "round 1: mergekit" in out
    assert "max abs difference 0 " in out  # the same float32 arithmetic on both sides for these tensors
    assert sum(line.startswith("| ratio |") and line.count("x |") == 3 for line in out.splitlines()) == 1
