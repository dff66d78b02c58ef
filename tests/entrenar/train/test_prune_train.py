"""Pruning inside a training run (``prune:``): the cubic schedule hit at every update step, masked weights exactly
zero after every step, kill and resume bit for bit, and a LoRA run on a pruned base that publishes a merged model
with the configured sparsity.

Expected sparsities come from Zhu & Gupta's formula written out by hand; zeros are counted per layer and
compared with ``floor(s * numel)`` (`aprender.pruning.pruned_count`, the count magnitude masks prune).
"""

from __future__ import annotations

import io
import json
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from aprender.pruning import pruned_count
from entrenar.config import PruneSection, load_config
from entrenar.train import Callback, Trainer, run_training
from entrenar.train.pruning import MASKS_NAME, cubic_sparsity, prunable_weights

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

GRADUAL = {"sparsity": 0.6, "initial_sparsity": 0.1, "start_step": 2, "end_step": 8, "update_every": 2}


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


class _Zeros(Callback):
    """Per optimizer step (right after the masks): the zeros of every pruned weight."""

    def __init__(self) -> None:
        self.zeros: dict[int, dict[str, int]] = {}

    def on_optimizer_step(self, trainer: Trainer) -> None:
        weights = prunable_weights(trainer.run.model)
        self.zeros[trainer.state.step + 1] = {name: int((w == 0).sum()) for name, w in weights.items()}


def test_cubic_schedule_values() -> None:
    section = PruneSection(**GRADUAL)  # type: ignore[arg-type]
    # by hand: s_t = 0.6 + (0.1 - 0.6) * (1 - (t - 2) / 6) ** 3
    expected = {0: 0.1, 2: 0.1, 4: 0.6 - 0.5 * (2 / 3) ** 3, 6: 0.6 - 0.5 * (1 / 3) ** 3, 8: 0.6, 20: 0.6}
    assert {t: round(cubic_sparsity(t, section), 12) for t in expected} == {
        t: round(s, 12) for t, s in expected.items()
    }


def _gradual(folder: Path, model: Path, lora: dict[str, Any] | None = None) -> Path:
    return runs.write_config(folder, model, lora=lora, optimizer={"lr": 3.0e-3}, prune=GRADUAL)


def test_full_fine_tune_follows_the_schedule_and_masked_weights_stay_zero(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    counter = _Zeros()
    result = run_training(
        load_config(_gradual(tmp_path, tiny_checkpoints["qwen2"])), console=_quiet(), callbacks=[counter]
    )
    section = result.run.config.prune
    assert section is not None
    numels = {name: w.numel() for name, w in prunable_weights(result.run.model).items()}
    current = {name: 0 for name in numels}
    for step in range(1, 11):
        if step in (2, 4, 6, 8):
            s = cubic_sparsity(step, section)
            current = {name: pruned_count(s, n) for name, n in numels.items()}
        # at the update steps exactly the schedule's count; between them no masked weight comes back (adam moves
        # every weight, so a zero that was not masked does not stay zero either)
        assert counter.zeros[step] == current, step
    weights = load_file(result.output_dir / "model.safetensors")
    assert all(int((weights[name] == 0).sum()) == pruned_count(0.6, n) for name, n in numels.items())
    record = json.loads((result.output_dir / "final_model.json").read_text())
    assert record["techniques"] == ["full", "prune"]
    assert record["prune"]["schedule"] == "gradual" and record["prune"]["masks"] is None
    assert [round(layer["sparsity"], 2) for layer in record["prune"]["layers"]] == [0.6] * len(
        record["prune"]["layers"]
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kill_and_resume_is_bit_identical(method: str, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # LoRA: the resumed run rebuilds the dense base, so only the checkpointed masks make step 4's forward (before
    # the next update) equal the straight run's
    overrides = ["training.save_every=3", "training.keep_checkpoints=1"]
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    lora = None if method == "full" else {}
    straight = run_training(
        load_config(_gradual(tmp_path / "a", tiny_checkpoints["llama"], lora), overrides), console=_quiet()
    )
    config = _gradual(tmp_path / "b", tiny_checkpoints["llama"], lora)
    with pytest.raises(runs.Killed):
        run_training(load_config(config, overrides), console=_quiet(), callbacks=[runs.kill_after(5)])
    resumed = run_training(load_config(config, overrides), console=_quiet())
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-3"
    ours = load_file(resumed.output_dir / weights)
    theirs = load_file(straight.output_dir / weights)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    untimed = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in runs.read_metrics(resumed.output_dir)]
    assert untimed == [
        {k: v for k, v in r.items() if k != "tokens_per_s"} for r in runs.read_metrics(straight.output_dir)
    ]


def test_lora_on_a_oneshot_pruned_base_publishes_the_sparsity(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from entrenar.publish import detect_model_folder, export_model

    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], prune={"schedule": "oneshot", "pattern": "2:4"})
    result = run_training(load_config(config, ["training.max_steps=3"]), console=_quiet())
    masks = load_file(result.output_dir / MASKS_NAME)
    record = json.loads((result.output_dir / "final_model.json").read_text())
    assert record["techniques"] == ["lora", "prune"] and record["prune"]["masks"] == MASKS_NAME
    assert all(int((~mask).sum()) == mask.numel() // 2 for mask in masks.values())

    exported = export_model(detect_model_folder(result.output_dir), tmp_path / "export", name="pruned")
    merged = load_file(exported.folder / "model.safetensors")
    for name in masks:
        groups = (merged[name] == 0).reshape(-1, 4).sum(dim=1)
        assert torch.equal(groups, torch.full_like(groups, 2)), name  # every group of 4 has exactly 2 zeros
    assert exported.remask is not None and exported.remask["max_abs_logit_change"] > 0
    assert exported.remask["remasked_weights"] > 0


def test_oneshot_wanda_prunes_the_lora_base_and_the_card_says_so(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entrenar.publish.upload as upload
    from entrenar.publish.card import render_model_card

    cards: list[str] = []
    monkeypatch.setattr(upload, "write_model_card", lambda folder, ctx, points: cards.append(render_model_card(ctx)))

    calibration = runs.write_jsonl(tmp_path / "calib.jsonl", runs.memory_records(copies=2))
    prune = {"schedule": "oneshot", "method": "wanda", "sparsity": 0.5, "calibration": str(calibration), "samples": 4}
    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], prune={**prune, "seq_len": 16})
    result = run_training(load_config(config, ["training.max_steps=2"]), console=_quiet())
    record = json.loads((result.output_dir / "final_model.json").read_text())["prune"]
    assert record["calibration"]["samples"] == 4 and record["calibration"]["seq_len"] == 16
    masks = load_file(result.output_dir / MASKS_NAME)
    # WANDA: every output row of every pruned layer loses exactly half its inputs
    assert all(torch.equal((~m).sum(dim=1), torch.full((m.shape[0],), m.shape[1] // 2)) for m in masks.values())
    published = upload.publish(result.output_dir, "me/pruned", dry_run=True)
    assert any(f.path == "model.safetensors" for f in published.files)
    assert "WANDA" in cards[0] and "the merged weights were masked again, so this model keeps the sparsity" in cards[0]
