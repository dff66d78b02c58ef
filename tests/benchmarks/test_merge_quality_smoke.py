"""Smoke test of benchmarks/merge_quality.py on the tiny Llama, so the experiment cannot rot.

The data sets, the merge YAML and the report are checked as values; one run of `main` trains two adapters
for five steps each on the tiny Llama (standing in for SmolLM2), folds them, merges them with TIES through
``entrenar merge`` and scores every model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = "merge_quality.py"  # under benchmarks/, imported by the `bench` fixture (conftest.py)


def test_data_sets_split_the_phrasings(bench: ModuleType, tmp_path: Path) -> None:
    files = bench.write_datasets(tmp_path)
    place = [json.loads(line) for line in files["place"]["train"].read_text().splitlines()]
    held = [json.loads(line) for line in files["place"]["heldout"].read_text().splitlines()]
    # 10 facts x 8 phrasings: 2 phrasings held out.
    assert (len(place), len(held)) == (60, 20)
    questions = {record["messages"][0]["content"] for record in place}
    assert not questions & {record["messages"][0]["content"] for record in held}
    assert "I was wondering, what is the river that runs through Velmora?" in {
        record["messages"][0]["content"] for record in held
    }
    assert bench.fact_records(bench.PLACE_FACTS, held_out=False) == place  # deterministic
    product = files["product"]["train"].read_text()
    assert "Brightwell" in product and "Velmora" not in product
    # The answers file: each reply alone, as plain text.
    answers = [json.loads(line) for line in files["place"]["answers"].read_text().splitlines()]
    assert answers == [{"text": answer} for _, answer in bench.PLACE_FACTS]


def test_merge_config_references_adapters(bench: ModuleType) -> None:
    adapters = [Path("/a"), Path("/b")]
    ties = bench.merge_config(Path("/base"), adapters, bench.SETTINGS["ties w1.0 d0.5"])
    assert ties == {
        "merge_method": "ties",
        "base_model": "/base",
        "models": [
            {"model": "/base+/a", "parameters": {"weight": 1.0}},
            {"model": "/base+/b", "parameters": {"weight": 1.0}},
        ],
        "parameters": {"density": 0.5},
        "dtype": "float32",
    }
    linear = bench.merge_config(Path("/base"), adapters, bench.SETTINGS["linear w0.5"])
    assert "base_model" not in linear and "parameters" not in linear


def test_report_verdicts(bench: ModuleType) -> None:
    def row(name: str, place: float, product: float) -> object:
        splits = {"train": place, "heldout": place, "answers": place}
        return bench.Row(name, {"place": splits, "product": {"train": product, "heldout": 9, "answers": product}})

    table = bench.report([row("base", 10.0, 10.0), row("good", 5.0, 8.0), row("half", 5.0, 12.0)])
    assert table.splitlines()[0] == (
        "| model | place train | place heldout | place answers | product train | product heldout | product answers "
        "| below base everywhere |"
    )
    assert "| base | 10.00 | 10.00 | 10.00 | 10.00 | 9.00 | 10.00 |  |" in table
    # Held-out product perplexity 9 equals the base's: not below it.
    assert "| good | 5.00 | 5.00 | 5.00 | 8.00 | 9.00 | 8.00 | no |" in table
    assert "| half | 5.00 | 5.00 | 5.00 | 12.00 | 9.00 | 12.00 | no |" in table
    everywhere = {name: dict.fromkeys(bench.SPLITS, 1.0) for name in bench.DATASETS}
    better = bench.report([row("base", 10.0, 10.0), bench.Row("x", everywhere)])
    assert better.endswith("| x | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | yes |")


def test_main_trains_merges_and_scores(
    bench: ModuleType,
    bench_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = bench_cache / "smollm2"
    bench.main(["--steps", "5", "--threads", "1", "--settings", "ties w1.0 d0.5", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "adapter place: 5 steps" in out and "adapter product: 5 steps" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    final = rows[-4:]
    assert [cells[0].strip() for cells in final] == [
        "base",
        "adapter place alone",
        "adapter product alone",
        "ties w1.0 d0.5",
    ]
    assert all(float(cell) > 1 for cells in final for cell in cells[1:-1])  # perplexities measured, not blank
    # The same config and data: the adapter is reused, not trained again; the config records the data's digest.
    root = tmp_path / "merge-quality"
    weights = root / "lora-place" / "adapter" / "adapter_model.safetensors"
    trained = weights.stat().st_mtime_ns
    data = root / "data" / "place-train.jsonl"
    losses = bench.train_adapter(base, data, root / "lora-place", steps=5)
    assert weights.stat().st_mtime_ns == trained and losses[0] > 0 and losses[1] > 0
    assert hashlib.sha256(data.read_bytes()).hexdigest() in (root / "lora-place" / "train.yaml").read_text()
    with pytest.raises(SystemExit, match="--settings"):
        bench.main(["--settings", "slerp", "--cache", str(tmp_path)])
