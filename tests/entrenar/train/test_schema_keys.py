"""Every key of the config schema changes what training does (the publish: keys: test_publish_keys.py).

Each row builds two runs that differ in one key (as ``key=value`` overrides of one base config: LoRA r=8
on the tiny qwen2, AdamW lr 1e-2, constant schedule, batch 4) and checks the difference the key must make,
with the expected value computed by hand where it can be.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from entrenar.config import load_config
from entrenar.data import DataLoader
from entrenar.errors import InvalidRecordError
from entrenar.lora import LoRALinear
from entrenar.models.layers import DecoderLayer
from entrenar.quant import Int8Linear, NF4Linear
from entrenar.train import Trainer, TrainingRun, build_run, run_training

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

Probe = Callable[[TrainingRun], Any]


@pytest.fixture(scope="module")
def workdir(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the base config and the extra data files the rows point at."""
    folder = tmp_path_factory.mktemp("keys")
    runs.write_config(folder, tiny_checkpoints["qwen2"])
    (folder / "llama").symlink_to(tiny_checkpoints["llama"])
    runs.write_jsonl(folder / "other.jsonl", [{"prompt": "Q: hi\nA:", "completion": " Hello there."}] * 3)
    runs.write_jsonl(folder / "val.jsonl", runs.memory_records()[:2])
    dual = [{**record, "text": "The harbour woke before the town did."} for record in runs.memory_records(2)]
    runs.write_jsonl(folder / "dual.jsonl", dual)
    runs.write_jsonl(folder / "bad.jsonl", [*map(json.dumps, runs.memory_records(2)), "{not json"])
    return folder


def _build(workdir: Path, overrides: list[str]) -> TrainingRun:
    return build_run(load_config(workdir / "config.yaml", overrides))


def _steps(run: TrainingRun, count: int) -> Trainer:
    trainer = Trainer(run)
    for _ in range(count):
        trainer.train_step()
    return trainer


def weights_after(count: int) -> Probe:
    """Trainable parameters after `count` optimizer steps."""

    def probe(run: TrainingRun) -> dict[str, torch.Tensor]:
        _steps(run, count)
        return {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}

    return probe


def losses(run: TrainingRun) -> list[float]:
    """The losses of the first 3 steps."""
    trainer = Trainer(run)
    return [trainer.train_step() for _ in range(3)]


def lrs(run: TrainingRun) -> list[float]:
    """The learning rate used by each of the first 4 steps."""
    trainer = Trainer(run)
    out = []
    for _ in range(4):
        trainer.train_step()
        out.append(trainer.state.lr)
    return out


def differ(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert any(not torch.equal(a[k], b[k]) for k in a) if a.keys() == b.keys() else True
    else:
        assert a != b


def delta(run_weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return run_weights[name] - start[name]


B0 = "model.layers.0.self_attn.q_proj.lora_B"
A0 = "model.layers.0.self_attn.q_proj.lora_A"


def first_update_ratio(ratio: float, name: str = B0) -> Callable[[Any, Any], None]:
    """Check that run b's first update of `name` is `ratio` times run a's (from the same start)."""

    def check(a: Any, b: Any) -> None:
        (start_a, after_a), (start_b, after_b) = a, b
        torch.testing.assert_close(
            delta(after_b, start_b, name), ratio * delta(after_a, start_a, name), rtol=1e-4, atol=1e-7
        )

    return check


def start_and_after_one(run: TrainingRun) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    start = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    return start, weights_after(1)(run)


def _decays_only_with_weight_decay(a: Any, b: Any) -> None:
    # AdamW, step 1: A's gradient is 0 (B = 0), so A moves by decay alone: A1 = A0 * (1 - lr * wd), i.e.
    # delta = -0.01 * 0.5 * A0 = -0.005 * A0 with weight_decay 0.5, and no move at all without decay.
    assert torch.equal(delta(a[1], a[0], A0), torch.zeros_like(a[0][A0]))
    torch.testing.assert_close(delta(b[1], b[0], A0), -0.005 * b[0][A0], rtol=1e-3, atol=1e-9)


ROWS: list[tuple[str, list[str], list[str], Probe, Callable[[Any, Any], None]]] = [
    # model
    ("model.path", [], ["model.path=llama"], lambda r: r.model.config.model_type, differ),
    ("model.dtype", [], ["model.dtype=bfloat16"], lambda r: r.model.model.embed_tokens.weight.dtype, differ),
    ("model.dtype/losses", [], ["model.dtype=bfloat16"], losses, differ),
    # data
    ("data.train_path", [], ["data.train_path=other.jsonl"], lambda r: len(r.train_data.samples), differ),
    ("data.val_path", [], ["data.val_path=val.jsonl"], lambda r: r.val_data and len(r.val_data.samples), differ),
    ("data.val_split", [], ["data.val_split=0.25"], lambda r: (len(r.train_data.samples), r.val_data is None), differ),
    (
        "data.format",
        ["data.train_path=dual.jsonl"],
        ["data.train_path=dual.jsonl", "data.format=text"],
        lambda r: r.train_data.stats.format,
        lambda a, b: (a, b) == ("prompt_completion", "text") or pytest.fail(f"{a}, {b}"),
    ),
    (
        "data.seq_len",
        [],
        ["data.seq_len=52"],
        lambda r: (max(len(x) for x in r.train_data.samples), r.train_data.stats.truncated),
        lambda a, b: (a[0] > 52 and a[1] == 0 and b == (52, 8)) or pytest.fail(f"{a} {b}"),  # every reply cut
    ),
    (
        "data.batch_size",
        [],
        ["data.batch_size=2"],
        lambda r: (len(r.loader), next(r.loader.batches(0))["input_ids"].shape[0]),
        lambda a, b: (a, b) == ((2, 4), (4, 2)) or pytest.fail(f"{a}, {b}"),  # 8 samples
    ),
    (
        "data.packing",
        ["data.seq_len=128"],
        ["data.seq_len=128", "data.packing=true"],
        lambda r: (len(r.train_data), next(r.loader.batches(0)).keys() >= {"seq_ids", "position_ids"}),
        lambda a, b: (a, b) == ((8, False), (4, True)) or pytest.fail(f"{a} {b}"),  # 50-61 tokens: 2 per row
    ),
    (
        "data.train_on",
        [],
        ["data.train_on=all"],
        lambda r: r.train_data.n_target_tokens,
        lambda a, b: a < b or pytest.fail(),
    ),
    (
        "data.skip_invalid",
        ["data.train_path=bad.jsonl", "data.skip_invalid=true"],
        ["data.train_path=bad.jsonl", "data.skip_invalid=true"],
        lambda r: r.train_data.stats.invalid,
        lambda a, b: a == b == 1 or pytest.fail(),
    ),
    # optimizer (B of LoRA gets the only non-zero first gradient: A's is B^T-weighted, and B starts at 0)
    ("optimizer.name", [], ["optimizer.name=sgd"], weights_after(1), differ),
    (
        "optimizer.lr",
        ["optimizer.name=sgd"],
        ["optimizer.name=sgd", "optimizer.lr=0.03"],
        start_and_after_one,
        first_update_ratio(3.0),  # SGD: delta = -lr * grad, lr 0.01 -> 0.03
    ),
    (
        "optimizer.weight_decay",
        [],
        ["optimizer.weight_decay=0.5"],
        start_and_after_one,
        lambda a, b: _decays_only_with_weight_decay(a, b),
    ),
    ("optimizer.betas", [], ["optimizer.betas=[0.5,0.5]"], weights_after(2), differ),
    ("optimizer.eps", [], ["optimizer.eps=1.0"], weights_after(1), differ),
    (
        "optimizer.momentum",
        ["optimizer.name=sgd"],
        ["optimizer.name=sgd", "optimizer.momentum=0.9"],
        weights_after(2),
        differ,
    ),
    (
        "optimizer.loraplus_lr_ratio",
        ["optimizer.name=sgd"],
        ["optimizer.name=sgd", "optimizer.loraplus_lr_ratio=4"],
        start_and_after_one,
        first_update_ratio(4.0),  # B learns at lr * 4
    ),
    # scheduler
    ("scheduler.name", [], ["scheduler.name=linear"], lrs, differ),
    (
        "scheduler.warmup_steps",
        [],
        ["scheduler.warmup_steps=2"],
        lrs,
        lambda a, b: (a, b) == ([0.01] * 4, [0.0, 0.005, 0.01, 0.01]) or pytest.fail(f"{a} {b}"),  # k / warmup
    ),
    (
        "scheduler.min_lr_ratio",
        ["scheduler.name=linear", "training.max_steps=4"],
        ["scheduler.name=linear", "training.max_steps=4", "scheduler.min_lr_ratio=0.5"],
        lrs,
        # linear: lr * (r + (1 - r) * (1 - k / 4)) for k = 0..3; r = 0.1 (default) or 0.5
        lambda a, b: (
            (
                pytest.approx([0.01, 0.00775, 0.0055, 0.00325]) == a
                and pytest.approx([0.01, 0.00875, 0.0075, 0.00625]) == b
            )
            or pytest.fail(f"{a} {b}")
        ),
    ),
    (
        "scheduler.step_size",
        ["scheduler.name=step", "scheduler.step_size=1"],
        ["scheduler.name=step", "scheduler.step_size=2"],
        lrs,
        lambda a, b: (
            (a, b) == (pytest.approx([0.01, 0.001, 1e-4, 1e-5]), pytest.approx([0.01, 0.01, 0.001, 0.001]))
            or pytest.fail(f"{a} {b}")
        ),  # gamma 0.1 every step_size steps
    ),
    (
        "scheduler.gamma",
        ["scheduler.name=step", "scheduler.step_size=1"],
        ["scheduler.name=step", "scheduler.step_size=1", "scheduler.gamma=0.5"],
        lrs,
        lambda a, b: b == pytest.approx([0.01, 0.005, 0.0025, 0.00125]) or pytest.fail(f"{b}"),
    ),
    # lora
    (
        "lora.rank",
        [],
        ["lora.rank=2"],
        lambda r: r.model.get_submodule("model.layers.0.mlp.up_proj").lora_A.shape,
        differ,
    ),
    (
        "lora.alpha",
        [],
        ["lora.alpha=4"],
        lambda r: r.model.get_submodule("model.layers.0.mlp.up_proj").scaling,
        lambda a, b: (a, b) == (2.0, 0.5) or pytest.fail(),  # alpha / rank
    ),
    ("lora.alpha/losses", [], ["lora.alpha=64"], losses, differ),
    ("lora.dropout", [], ["lora.dropout=0.5"], losses, differ),
    (
        "lora.target_modules",
        [],
        ["lora.target_modules=[q_proj,v_proj]"],
        lambda r: sum(isinstance(m, LoRALinear) for m in r.model.modules()),
        lambda a, b: (a, b) == (14, 4) or pytest.fail(),
    ),
    (
        "lora.use_rslora",
        [],
        ["lora.use_rslora=true"],
        lambda r: r.model.get_submodule("model.layers.0.mlp.up_proj").scaling,
        lambda a, b: (a, b) == (2.0, 16 / math.sqrt(8)) or pytest.fail(),  # alpha / sqrt(rank)
    ),
    ("lora.use_dora", [], ["lora.use_dora=true"], losses, differ),
    ("lora.init", [], ["lora.init=none"], losses, differ),  # B random: the first loss already differs
    # quantize
    ("quantize", [], ["quantize.bits=4"], losses, differ),
    (
        "quantize.bits+type",
        ["quantize.bits=4"],
        ["quantize.bits=8", "quantize.type=int8"],
        lambda r: type(r.model.get_submodule("model.layers.0.mlp.up_proj").base_layer),
        lambda a, b: (a, b) == (NF4Linear, Int8Linear) or pytest.fail(),
    ),
    ("quantize.double_quant", ["quantize.bits=4"], ["quantize.bits=4", "quantize.double_quant=false"], losses, differ),
    # training (the ones visible on built objects; files and logs below)
    (
        "training.epochs",
        ["training.max_steps=null", "training.epochs=1"],
        ["training.max_steps=null", "training.epochs=3"],
        lambda r: r.plan.total_steps,
        lambda a, b: (a, b) == (2, 6) or pytest.fail(),  # 8 samples / batch 4 = 2 steps per epoch
    ),
    ("training.max_steps", [], ["training.max_steps=3"], lambda r: r.plan.total_steps, differ),
    (
        "training.grad_accum",
        [],
        ["training.grad_accum=2"],
        lambda r: _steps(r, 1).state.micro_batches,
        lambda a, b: (a, b) == (1, 2) or pytest.fail(),
    ),
    (
        "training.grad_clip",
        ["optimizer.name=sgd"],
        ["optimizer.name=sgd", "training.grad_clip=0.001"],
        weights_after(1),
        differ,
    ),
    ("training.seed/init", [], ["training.seed=1"], lambda r: {A0: r.model.get_parameter(A0).detach().clone()}, differ),
    (
        "training.seed/shuffle",
        [],
        ["training.seed=1"],
        lambda r: DataLoader(r.train_data, batch_size=4, seed=r.config.training.seed).order(0).tolist(),
        differ,
    ),
]


@pytest.mark.parametrize(("name", "a", "b", "probe", "check"), ROWS, ids=[row[0] for row in ROWS])
def test_key_changes_behaviour(
    workdir: Path, name: str, a: list[str], b: list[str], probe: Probe, check: Callable[[Any, Any], None]
) -> None:
    check(probe(_build(workdir, a)), probe(_build(workdir, b)))


def test_skip_invalid_false_stops_at_the_bad_line(workdir: Path) -> None:
    with pytest.raises(InvalidRecordError, match=r"bad\.jsonl:9"):
        _build(workdir, ["data.train_path=bad.jsonl"])


def test_gradient_checkpointing_recomputes_each_layer(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With checkpointing each decoder layer's forward runs twice per step: once, then again in backward.
    # (Counted in the forward itself: torch does not fire module hooks during the recomputation.)
    calls: list[None] = []
    forward = DecoderLayer.forward
    monkeypatch.setattr(DecoderLayer, "forward", lambda self, *a, **k: calls.append(None) or forward(self, *a, **k))
    counts = []
    for flag in ("false", "true"):
        _steps(_build(workdir, [f"training.gradient_checkpointing={flag}"]), 1)
        counts.append(len(calls))
        calls.clear()
    assert counts == [2, 4]  # 2 layers


def _train(workdir: Path, overrides: list[str]) -> Path:
    cfg = load_config(workdir / "config.yaml", overrides)
    run_training(cfg, resume=False, console=Console(file=io.StringIO()))
    return Path(cfg.training.output_dir)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.log_every=1"], [1, 2, 3, 4, 5, 6]),
        (["training.log_every=4"], [4, 6]),  # and always the last step
    ],
)
def test_log_every(workdir: Path, overrides: list[str], expected: list[int]) -> None:
    out = _train(workdir, ["training.max_steps=6", *overrides])
    assert [r["step"] for r in runs.read_metrics(out)] == expected


@pytest.mark.parametrize(("every", "expected"), [(2, [0, 2, 4, 6]), (5, [0, 5, 6])])  # 0: the base model
def test_eval_every(workdir: Path, every: int, expected: list[int]) -> None:
    out = _train(workdir, ["training.max_steps=6", "data.val_path=val.jsonl", f"training.eval_every={every}"])
    assert [r["step"] for r in runs.read_metrics(out, "eval")] == expected


@pytest.mark.parametrize(("save_every", "keep", "expected"), [(2, 5, [2, 4, 6]), (2, 1, [6]), (3, 2, [3, 6])])
def test_save_every_and_keep_checkpoints(workdir: Path, save_every: int, keep: int, expected: list[int]) -> None:
    overrides = ["training.max_steps=6", f"training.save_every={save_every}", f"training.keep_checkpoints={keep}"]
    out = _train(workdir, overrides)
    assert sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*")) == expected


def test_output_dir(workdir: Path) -> None:
    out = _train(workdir, ["training.max_steps=1", "training.output_dir=elsewhere"])
    assert out == workdir / "elsewhere"
    assert (out / "adapter_model.safetensors").is_file() and (out / "final_model.json").is_file()


def test_early_stopping_patience(workdir: Path) -> None:
    # Validation answers contradict the training answers, so learning the training data makes the validation
    # loss rise after the first evaluations; with patience 2 the run stops 2 evaluations after its best.
    contradicting = [{"prompt": p, "completion": " Nobody knows, sadly."} for p, _ in runs.MEMORY]
    runs.write_jsonl(workdir / "contra.jsonl", contradicting)
    overrides = ["training.max_steps=30", "data.val_path=contra.jsonl", "training.eval_every=1"]
    out = _train(workdir, [*overrides, "training.early_stopping_patience=2"])
    base, *evals = runs.read_metrics(out, "eval")  # the base model's (step 0) counts for no patience
    assert base["step"] == 0
    summary = json.loads((out / "final_model.json").read_text())
    best = min(range(len(evals)), key=lambda i: evals[i]["eval_loss"])
    assert summary["stop_reason"] == "early_stopping"
    assert len(evals) == best + 3 < 30  # the best, then 2 evaluations without a lower loss
    assert summary["steps"] == evals[-1]["step"]
    without = _train(workdir, overrides)
    assert len(runs.read_metrics(without, "eval")) == 31
