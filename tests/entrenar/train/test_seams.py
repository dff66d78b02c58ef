"""The seams later techniques build on: the loss inside the model's forward (LoRA on lm_head trains and loads
in PEFT), loss parts in metrics.jsonl and on the progress line, the after-optimizer-step hook, and callbacks
whose own state is checkpointed and restored (a killed and resumed run stays bit-identical)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import Tensor

from aprender.format.safetensors import load_file
from entrenar.autograd import LossParts
from entrenar.config import load_config
from entrenar.lora import LoRALinear
from entrenar.models import LossOutput, from_pretrained
from entrenar.train import Callback, Trainer, build_run, run_training
from entrenar.train.loss import CausalLMLoss

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

NAMES = ["q_proj", "v_proj", "lm_head"]


def _quiet() -> Console:
    return Console(file=io.StringIO())


# ----------------------------------------------------------------------------------- the model's loss


def test_forward_with_labels_is_the_summed_cross_entropy(tiny_checkpoints: dict[str, Path]) -> None:
    model = from_pretrained(tiny_checkpoints["qwen2"])
    ids = torch.randint(7, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, 1)
    labels[:, -1], labels[0, :3] = -100, -100
    output = model(ids, labels=labels)
    assert isinstance(output, LossOutput) and output.predictions is None
    logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum")
    torch.testing.assert_close(output.loss, expected, rtol=1e-5, atol=1e-5)
    assert int(output.tokens) == 2 * 9 - 2 - 3
    with pytest.raises(Exception, match=r"labels must be token ids of shape \(2, 9\)"):
        model(ids, labels=labels[:, :5])


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_lora_lm_head_gives_the_loss_of_its_own_logits(tiny_checkpoints: dict[str, Path], dropout: float) -> None:
    # the fused loss on (x, A-activations) x [W, B] equals cross-entropy over the adapted head's logits, gradients too
    from entrenar.lora import LoraConfig, lora_linear_factory

    torch.manual_seed(0)
    config = LoraConfig(rank=4, alpha=8, dropout=dropout, target_modules=NAMES, init="none")
    model = from_pretrained(tiny_checkpoints["qwen2"], linear_factory=lora_linear_factory(config)).train()
    assert isinstance(model.lm_head, LoRALinear)
    ids = torch.randint(7, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.roll(-1, 1)  # every position labelled: both paths draw the head's dropout mask over 18 rows
    if dropout == 0:
        labels[:, -1] = -100
    head = model.lm_head
    torch.manual_seed(5)
    fused = model(ids, labels=labels, loss_chunk_size=4).loss
    fused_grads = torch.autograd.grad(fused, [head.lora_A, head.lora_B])
    torch.manual_seed(5)  # the same dropout masks: the body draws the same, then the head's adapter
    hidden = model.forward_hidden(ids)
    plain = torch.nn.functional.cross_entropy(model.logits(hidden).transpose(1, 2), labels, reduction="sum")
    plain_grads = torch.autograd.grad(plain, [head.lora_A, head.lora_B])
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)
    for ours, theirs in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_lora_on_lm_head_trains_and_loads_in_peft(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"], lora={"rank": 4, "target_modules": NAMES})
    result = run_training(load_config(config, ["training.max_steps=5"]), console=_quiet())
    adapter = load_file(result.output_dir / "adapter_model.safetensors")
    head_b = adapter["base_model.model.lm_head.lora_B.weight"]
    assert head_b.shape == (result.run.model.config.vocab_size, 4) and head_b.abs().max() > 0  # B starts at 0
    ids = torch.tensor([[8, 40, 91, 300, 7, 12, 650]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["qwen2"])
        theirs = PeftModel.from_pretrained(base, str(result.output_dir)).eval()(ids).logits
        ours = result.run.model.eval()(ids)
    assert (ours - theirs).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------- parts


class _L2Part(CausalLMLoss):
    """Cross-entropy plus a second part (the adapters' squared norm per token), as distillation will add kd."""

    def loss_step(self, batch: Mapping[str, Tensor]) -> LossParts:
        ce = self.forward(batch).loss
        tokens = (batch["labels"] != -100).sum()
        l2 = tokens * sum((p**2).sum() for p in self.model.parameters() if p.requires_grad)
        return LossParts(total=ce + 0.01 * l2, parts={"ce": ce, "l2": l2})


def test_loss_parts_reach_metrics_and_the_progress_line(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), ["training.max_steps=3"])
    plain = run_training(cfg, console=_quiet())
    records = runs.read_metrics(plain.output_dir)
    assert [set(r["parts"]) for r in records] == [{"ce"}] * 3
    assert all(r["parts"]["ce"] == pytest.approx(r["loss"], rel=1e-6) for r in records)

    run = build_run(cfg)
    run.loss = _L2Part(run.model)
    console = Console(file=io.StringIO(), width=200)
    from entrenar.train import ProgressDisplay

    trainer = Trainer(run, callbacks=[ProgressDisplay(console)])
    trainer.fit()
    train = [r for r in trainer.state.history if r["kind"] == "train"]
    assert all(r["loss"] == pytest.approx(r["parts"]["ce"] + 0.01 * r["parts"]["l2"], rel=1e-5) for r in train)
    assert train[0]["parts"]["l2"] > 0
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    part = train[-1]["parts"]
    shown = f"loss {train[-1]['loss']:.4f} (ce {part['ce']:.4f}, l2 {part['l2']:.4f}) (smoothed "
    assert any(shown in line for line in lines)


# --------------------------------------------------------------------------- hook and callback state


class StepCounter(Callback):
    """Counts optimizer steps in a tensor and scales the adapters down a little after each (a state that
    changes the training, as pruning masks will): resuming without it would give other weights."""

    def __init__(self) -> None:
        self.count = torch.zeros((), dtype=torch.int64)
        self.seen_steps: list[int] = []

    def on_optimizer_step(self, trainer: Trainer) -> None:
        self.count += 1
        self.seen_steps.append(trainer.state.step)
        with torch.no_grad():
            for param in trainer.run.model.parameters():
                if param.requires_grad:
                    param.mul_(1 - 0.01 * float(self.count))

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = state["count"].clone()


def test_the_hook_runs_after_each_optimizer_step(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(runs.write_config(tmp_path, tiny_checkpoints["qwen2"]), ["training.max_steps=3"])
    counter = StepCounter()
    Trainer(build_run(cfg), callbacks=[counter]).fit()
    assert counter.seen_steps == [0, 1, 2] and int(counter.count) == 3  # before the state counts the step


def test_a_stateful_callback_survives_kill_and_resume(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    overrides = ["training.max_steps=6", "training.save_every=3", "training.keep_checkpoints=1"]
    straight_cfg = load_config(runs.write_config(tmp_path / "straight", tiny_checkpoints["qwen2"]), overrides)
    straight = run_training(straight_cfg, console=_quiet(), callbacks=[StepCounter()])

    config = runs.write_config(tmp_path / "resumed", tiny_checkpoints["qwen2"])
    with pytest.raises(runs.Killed):
        run_training(load_config(config, overrides), console=_quiet(), callbacks=[StepCounter(), runs.kill_after(4)])
    resumed_counter = StepCounter()
    resumed = run_training(load_config(config, overrides), console=_quiet(), callbacks=[resumed_counter])
    assert int(resumed_counter.count) == 6 and resumed_counter.seen_steps == [3, 4, 5]
    ours = load_file(resumed.output_dir / "adapter_model.safetensors")
    theirs = load_file(straight.output_dir / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # without the callback the checkpoint's state has no owner; with it but an old checkpoint: refused
    with pytest.raises(Exception, match="holds no state for callback StepCounter"):
        trainer = Trainer(build_run(load_config(config, overrides)), callbacks=[StepCounter()])
        from entrenar.train import latest_checkpoint, load_checkpoint

        checkpoint = load_checkpoint(latest_checkpoint(resumed.output_dir / "checkpoints"))  # type: ignore[arg-type]
        checkpoint.callbacks = {}
        trainer.restore(checkpoint)
