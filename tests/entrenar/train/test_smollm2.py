"""The real SmolLM2-135M-Instruct: 30 LoRA steps on a small instruction set lower the validation loss."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import pytest
import torch

from entrenar.config import load_config
from entrenar.train import Trainer, build_run

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

# Facts about a made-up llama; validation asks about the same facts in other words, so what the adapters
# learn from the training answers (names, places, phrasing) must carry over to lower the validation loss.
TRAIN = [
    ("Where does Pico live?", "Pico lives in the village of Tallera, high in the Andes."),
    ("What is Pico?", "Pico is a llama from the village of Tallera."),
    ("What does Pico eat?", "Pico eats fresh alfalfa and, on Sundays, a slice of mango."),
    ("Who looks after Pico?", "Pico is looked after by a shepherd called Rosa Quispe."),
    ("How old is Pico?", "Pico is seven years old."),
    ("What colour is Pico?", "Pico is white with a brown patch over one eye."),
    ("What is Pico's job?", "Pico carries baskets of quinoa to the market in Tallera."),
    ("What is Pico afraid of?", "Pico is afraid of thunder and of bicycles."),
    ("Does Pico have a friend?", "Pico's best friend is an alpaca called Luna."),
    ("What does Pico do on Sundays?", "On Sundays Pico rests and eats a slice of mango."),
    ("Where is Tallera?", "Tallera is a village high in the Andes, where Pico lives."),
    ("Who is Rosa Quispe?", "Rosa Quispe is the shepherd who looks after Pico the llama."),
]
VAL = [
    ("In which village does Pico live?", "Pico lives in the village of Tallera, high in the Andes."),
    ("Who is the shepherd of Pico?", "Pico is looked after by a shepherd called Rosa Quispe."),
    ("Tell me what Pico eats.", "Pico eats fresh alfalfa and, on Sundays, a slice of mango."),
    ("Who is Luna?", "Luna is an alpaca and Pico's best friend."),
]


def _messages(pairs: list[tuple[str, str]]) -> list[dict[str, object]]:
    # A short system turn replaces SmolLM2's default one (~20 tokens), keeping every sample under 48 tokens.
    system = {"role": "system", "content": "Answer briefly."}
    return [
        {"messages": [system, {"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs
    ]


@pytest.mark.slow
def test_thirty_lora_steps_lower_the_validation_loss(
    smollm2_hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(2)  # the autouse fixture restores the previous count
    runs.write_jsonl(tmp_path / "train.jsonl", _messages(TRAIN))
    runs.write_jsonl(tmp_path / "val.jsonl", _messages(VAL))
    # Adapters on the top 4 of 30 layers only: backward stops there, which keeps 30 CPU steps (batch 1, < 48
    # tokens) to a minute or two on a busy 2-core machine.
    sections = {
        "data": {"val_path": str(tmp_path / "val.jsonl"), "seq_len": 48, "batch_size": 1},
        "optimizer": {"lr": 2.0e-3},
        "lora": {"rank": 8, "alpha": 16, "target_modules": r"model\.layers\.(2[6-9])\..*"},
        "training": {"max_steps": 30, "eval_every": 10},
    }
    run = build_run(load_config(runs.write_config(tmp_path, smollm2_hf_dir, **sections)))
    trainer = Trainer(run)
    before = trainer.evaluate()
    state = trainer.fit()
    evals = [record for record in state.history if record["kind"] == "eval"]
    train = [record["loss"] for record in state.history if record["kind"] == "train"]
    with capsys.disabled():
        print(
            f"\nSmolLM2-135M LoRA r=8 (layers 26-29), 30 steps: eval loss {before.loss:.4f} -> "
            + " -> ".join(f"{e['eval_loss']:.4f} (step {e['step']})" for e in evals)
            + f"; train loss {train[0]:.4f} -> {train[-1]:.4f}; {state.elapsed:.1f}s"
        )
    assert [e["step"] for e in evals] == [0, 10, 20, 30]  # 0: the base model, before the first step
    assert evals[0]["eval_loss"] == before.loss  # the run's own evaluation of the base model
    assert evals[-1]["eval_loss"] < before.loss - 0.5  # measured: 3.35 -> 1.01
    assert evals[-1]["eval_token_accuracy"] > before.token_accuracy
