"""``training.sample_prompts``: greedy answers before the first step, every ``sample_every`` steps and after the
last, in ``metrics.jsonl`` and on the console; the base model's answers equal transformers' greedy ``generate``
on the ids transformers' chat template gives; a fresh run with validation data evaluates the base model once
(step 0), which best-loss tracking does not count; samples leave a resumed run bit-identical."""

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

from aprender.text import Tokenizer
from entrenar.config import load_config
from entrenar.train import run_training
from entrenar.train.samples import prompt_ids

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

PROMPTS = ["Question: Who ran the bakery?\nAnswer:", "Question: When was the lighthouse built?\nAnswer:"]
SAMPLING = {"sample_prompts": PROMPTS, "sample_every": 2, "sample_max_new_tokens": 8}


def _train(config: Path, *overrides: str, callbacks: list[Any] | None = None) -> tuple[Any, str]:
    stream = io.StringIO()
    result = run_training(
        load_config(config, list(overrides)), console=Console(file=stream, width=400), callbacks=callbacks
    )
    return result, stream.getvalue()


def test_samples_are_recorded_and_shown(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_checkpoints["llama"]
    config = runs.write_config(tmp_path, base, training=SAMPLING)
    result, log = _train(config, "training.max_steps=5", "data.val_split=0.25", "training.eval_every=2")
    samples = runs.read_metrics(result.output_dir, "sample")
    assert [(s["step"], s["prompt"]) for s in samples] == [(step, p) for step in (0, 2, 4, 5) for p in PROMPTS]
    # the base model's answers (step 0): transformers' greedy generate on transformers' chat-template ids
    reference = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
    ours = Tokenizer.from_dir(base)
    for sample in samples[:2]:
        rendered: Any = reference.apply_chat_template(
            [{"role": "user", "content": sample["prompt"]}], add_generation_prompt=True, tokenize=True
        )
        ids = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)  # transformers 5 returns a dict
        assert prompt_ids(ours, sample["prompt"], chat=True) == list(ids)
        generated = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        expected = str(reference.decode(generated[0, len(ids) :], skip_special_tokens=True)).strip()
        assert sample["answer"] == expected
    lines = log.splitlines()
    assert f"sample step 5: {PROMPTS[1]} -> {samples[-1]['answer']}".replace("\n", "\\n") in lines
    # the base model is evaluated once, before its samples, and does not count as a best evaluation
    evals = runs.read_metrics(result.output_dir, "eval")
    assert [e["step"] for e in evals] == [0, 2, 4, 5]
    first = next(i for i, line in enumerate(lines) if line.startswith(("eval", "sample", "step")))
    assert lines[first].startswith("eval of the base model: loss ") and lines[first + 1].startswith("sample step 0: ")
    record = json.loads((result.output_dir / "final_model.json").read_text())
    assert record["loss"]["best_eval_step"] != 0


def test_plain_text_prompts_start_with_bos(tiny_checkpoints: dict[str, Path]) -> None:
    tokenizer = Tokenizer.from_dir(tiny_checkpoints["llama"])
    ids = prompt_ids(tokenizer, "Hello there", chat=False)
    body = tokenizer.encode("Hello there", add_special_tokens=False)
    assert ids == ([tokenizer.bos_token_id, *body] if tokenizer.add_bos_token else body)
    qwen = Tokenizer.from_dir(tiny_checkpoints["qwen2"])  # no BOS
    assert prompt_ids(qwen, "Hello there", chat=False) == qwen.encode("Hello there", add_special_tokens=False)


def test_without_prompts_there_are_no_samples(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result, log = _train(runs.write_config(tmp_path, tiny_checkpoints["llama"]), "training.max_steps=2")
    assert runs.read_metrics(result.output_dir, "sample") == [] and "sample step" not in log


def test_samples_keep_a_resumed_run_bit_identical(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    overrides = ["training.max_steps=5", "training.save_every=2"]
    straight = runs.write_config(tmp_path / "straight", tiny_checkpoints["llama"], training=SAMPLING)
    expected, _ = _train(straight, *overrides)
    killed = runs.write_config(tmp_path / "killed", tiny_checkpoints["llama"], training=SAMPLING)
    with pytest.raises(runs.Killed):
        _train(killed, *overrides, callbacks=[runs.kill_after(3)])
    resumed, _ = _train(killed, *overrides)
    assert resumed.resumed_from.name == "step-2"
    ours, theirs = (load_file(r.output_dir / "adapter_model.safetensors") for r in (resumed, expected))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert runs.read_metrics(resumed.output_dir, "sample") == runs.read_metrics(expected.output_dir, "sample")


def test_the_card_shows_base_vs_fine_tuned_and_the_answers(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from entrenar.publish.card import CardContext, render_model_card

    config = runs.write_config(tmp_path, tiny_checkpoints["llama"], training=SAMPLING)
    result, _ = _train(config, "training.max_steps=3", "data.val_split=0.25", "training.eval_every=2")
    record = json.loads((result.output_dir / "final_model.json").read_text())
    evals = runs.read_metrics(result.output_dir, "eval")
    samples = runs.read_metrics(result.output_dir, "sample")
    assert record["base_eval"] == {k: v for k, v in evals[0].items() if k != "kind"} and evals[0]["step"] == 0
    assert record["samples"] == {
        "before": [{"prompt": s["prompt"], "answer": s["answer"]} for s in samples[:2]],
        "after_step": 3,
        "after": [{"prompt": s["prompt"], "answer": s["answer"]} for s in samples[-2:]],
    }
    card = render_model_card(CardContext("me/tiny", "adapter", ("lora",), record=record))
    base, tuned = evals[0], evals[-1]
    assert (
        "## Base model vs fine-tuned\n\nOn the validation data (the base model evaluated before the first step):\n\n"
        "| Validation | Base model | Fine-tuned (step 3) |\n|---|---|---|\n"
        f"| loss | {base['eval_loss']:.4f} | {tuned['eval_loss']:.4f} |\n"
    ) in card
    before, after = (s["answer"].replace("\n", "<br>").replace("|", "\\|") for s in (samples[0], samples[-2]))
    assert "| Prompt | Before training | After training (step 3) |" in card
    assert f"| Question: Who ran the bakery?<br>Answer: | {before} | {after} |" in card
