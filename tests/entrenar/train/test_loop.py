"""entrenar.train.loop / callbacks / state: signals, restore checks, progress output, epoch summaries, metrics file,
state JSON."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import threading
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from entrenar.config import load_config
from entrenar.errors import CheckpointError, DataError, TrainingInterrupted
from entrenar.train import (
    Callback,
    MetricsLogger,
    ProgressDisplay,
    Trainer,
    TrainState,
    build_run,
    latest_checkpoint,
    load_checkpoint,
)
from entrenar.train.callbacks import smoothed_loss
from entrenar.train.records import EpochSummary
from entrenar.train.state import LogWindow

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


@pytest.fixture
def config(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    return runs.write_config(tmp_path, tiny_checkpoints["qwen2"])


def _trainer(config: Path, *overrides: str, callbacks: list[Callback] | None = None) -> Trainer:
    run = build_run(load_config(config, list(overrides)))
    return Trainer(run, callbacks=callbacks or [], checkpoint_dir=config.parent / "out" / "checkpoints")


def test_state_round_trips_through_json() -> None:
    state = TrainState(total_steps=10, batches_per_epoch=4, step=3, micro_batches=6, loss=1.5)
    state.window = LogWindow(loss_sum=3.0, target_tokens=2, input_tokens=9, steps=1)
    state.history.append({"kind": "train", "step": 3, "loss": 1.5})
    again = TrainState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert (again.epoch, again.done, again.window.loss) == (1.5, False, 1.5)
    assert math.isnan(LogWindow().loss)
    assert again.last_record("eval") is None and again.last_record("train") == {"kind": "train", "step": 3, "loss": 1.5}
    again.stop_reason = "early_stopping"
    assert again.done


class _SendSignal(Callback):
    def __init__(self, at: int, signum: int, times: int = 1) -> None:
        self.at, self.signum, self.times = at, signum, times
        self.interrupted = False

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step == self.at:
            for _ in range(self.times):
                handler = signal.getsignal(self.signum)
                os.kill(os.getpid(), self.signum)
                # Signals do not queue: wait until Python ran the handler (the trainer's restores the previous
                # one) before the next, or two quick kills can reach Python as one.
                deadline = time.monotonic() + 10
                while signal.getsignal(self.signum) is handler:
                    assert time.monotonic() < deadline, "the signal handler never ran"
                    time.sleep(0.001)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.interrupted = True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_raises(config: Path, signum: int) -> None:
    sender = _SendSignal(2, signum)
    display = ProgressDisplay(Console(file=io.StringIO(), force_terminal=True))
    trainer = _trainer(config, callbacks=[sender, display])
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.fit()
    root = config.parent / "out" / "checkpoints"
    assert (caught.value.step, caught.value.checkpoint) == (2, root / "step-2")
    assert (
        str(caught.value)
        == f"stopped by {signal.Signals(signum).name} after step 2; checkpoint saved to {root / 'step-2'}"
    )
    assert latest_checkpoint(root) == root / "step-2" and load_checkpoint(root / "step-2").step == 2
    assert sender.interrupted
    assert display._progress is None  # the bar was stopped, so the message is not drawn over
    assert signal.getsignal(signum) is before  # handlers restored


def test_a_second_sigint_interrupts_at_once(config: Path) -> None:
    # Python installs its KeyboardInterrupt handler only when SIGINT was not ignored at start-up (it is in a
    # background job of a non-interactive shell), so the test sets the handler a terminal user has.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        trainer = _trainer(config, callbacks=[_SendSignal(1, signal.SIGINT, times=2)])
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert latest_checkpoint(config.parent / "out" / "checkpoints") is None


def test_fit_runs_outside_the_main_thread(config: Path) -> None:
    trainer = _trainer(config, "training.max_steps=2")
    worker = threading.Thread(target=trainer.fit)
    worker.start()
    worker.join()
    assert trainer.state.step == 2


def test_restore_refuses_another_config_but_allows_a_longer_run(config: Path) -> None:
    trainer = _trainer(config, "training.max_steps=2")
    trainer.fit()
    checkpoint_dir = trainer.save_checkpoint()
    longer = _trainer(config, "training.max_steps=4", "training.log_every=2")
    longer.restore(load_checkpoint(checkpoint_dir))
    assert (longer.state.step, longer.state.total_steps) == (2, 4)
    longer.fit()
    assert longer.state.step == 4
    other = _trainer(config, "optimizer.lr=0.5")
    with pytest.raises(CheckpointError, match=r"trained with another optimizer\.lr \(1 key\(s\) differ\)"):
        other.restore(load_checkpoint(checkpoint_dir))
    with pytest.raises(CheckpointError, match=r"another lora \(1 key"):
        _trainer(config, "lora=null").restore(load_checkpoint(checkpoint_dir))


def test_restore_refuses_weights_that_do_not_fit(config: Path) -> None:
    trainer = _trainer(config, "training.max_steps=1")
    trainer.fit()
    checkpoint = load_checkpoint(trainer.save_checkpoint())
    name = "model.layers.0.self_attn.q_proj.lora_A"
    missing = load_checkpoint(trainer.save_checkpoint())
    del missing.weights[name]
    with pytest.raises(CheckpointError, match=rf"trainable parameter '{re.escape(name)}' is in one of"):
        _trainer(config).restore(missing)
    checkpoint.weights[name] = checkpoint.weights[name][:2]
    with pytest.raises(CheckpointError, match=r"has shape \[2, 64\], the model \[8, 64\]"):
        _trainer(config).restore(checkpoint)


def test_misuse_is_reported(config: Path) -> None:
    run = build_run(load_config(config))
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        Trainer(run).save_checkpoint()
    with pytest.raises(DataError, match="no validation data"):
        Trainer(run).evaluate()


def test_metrics_logger_rewrites_the_file_from_the_state(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 9}\n')  # a line from after the checkpoint
    trainer = _trainer(config, "training.max_steps=1")
    trainer.state.history = [{"kind": "train", "step": 1, "loss": 2.0}]
    trainer.state.step = 1
    trainer.callbacks = [MetricsLogger(path)]
    trainer.state.total_steps = 2
    trainer.fit()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]


def _progress_output(config: Path, terminal: bool) -> str:
    console = Console(file=io.StringIO(), force_terminal=terminal, width=200)
    _trainer(
        config,
        "training.max_steps=3",
        "data.val_split=0.25",
        "training.eval_every=2",
        callbacks=[ProgressDisplay(console)],
    ).fit()
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def test_progress_lines_without_a_terminal(config: Path) -> None:
    lines = _progress_output(config, terminal=False).splitlines()
    base = r"eval of the base model: loss \d+\.\d{4} \| perplexity \d+\.\d{3} \| token accuracy 0\.\d{4}"
    assert re.fullmatch(base, lines.pop(0))  # a fresh run with validation data evaluates the base model first
    pattern = (
        r"step {}/3 \| epoch {} \| loss (\d+\.\d{{4}}) \(smoothed (\d+\.\d{{4}})\) \| lr 1\.000e-02 \| grad norm "
        r"\d\.?\d* \| \d+ tok/s \| ETA \d+:\d\d:\d\d \| peak memory \d+\.\d [MG]B"
    )
    first = re.fullmatch(pattern.format(1, "0.50"), lines[0])
    assert first is not None and first[1] == first[2]  # one loss: the smoothed loss is that loss
    assert re.fullmatch(r"eval step 2: loss \d+\.\d{4} \| perplexity \d+\.\d{3} \| token accuracy 0\.\d{4}", lines[2])
    # 6 training records in batches of 4: 2 batches an epoch, so 3 steps end epoch 1 and half of epoch 2.
    assert re.fullmatch(r"Epoch 1/2: loss=\d+\.\d{3}, lr=1\.0e-2", lines[3])
    third = re.fullmatch(pattern.format(3, "1.50"), lines[4])
    assert third is not None and "ETA 0:00:00" in lines[4]
    assert re.fullmatch(r"Epoch 2/2: loss=\d+\.\d{3}, lr=1\.0e-2 \(stopped after 50% of the epoch\)", lines[6])
    assert len(lines) == 7  # 3 steps, evaluations at 2 and 3, 2 epoch lines


def test_progress_bar_on_a_terminal(config: Path) -> None:
    output = _progress_output(config, terminal=True)
    assert "\x1b[" in output  # rich redraws the bar with control sequences
    assert "3/3" in output and "tok/s" in output and "eval step 2: loss" in output
    assert "step 1/3 |" not in output  # no plain lines


def test_smoothed_loss_by_hand() -> None:
    history: list[Any] = [
        {"kind": "train", "loss": 2.0},
        {"kind": "eval", "eval_loss": 9.0},
        {"kind": "train", "loss": 1.0},
    ]
    # (0.9 * 0.1 * 2 + 0.1 * 1) / (0.9 * 0.1 + 0.1) = 0.28 / 0.19
    assert smoothed_loss(history) == pytest.approx(0.28 / 0.19)
    assert math.isnan(smoothed_loss([]))


def test_eta_is_unknown_before_the_first_step(config: Path) -> None:
    display = ProgressDisplay(Console(file=io.StringIO()))
    trainer: Any = _trainer(config)
    display.on_train_begin(trainer)
    assert display.eta(trainer) is None


class _Epochs(Callback):
    """Records each step's loss, target tokens and lr, and each epoch summary."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int, float]] = []
        self.summaries: list[EpochSummary] = []
        self._tokens = 0

    def on_step_end(self, trainer: Trainer) -> None:
        state = trainer.state
        assert state.loss is not None and state.lr is not None
        self.steps.append((state.loss, state.target_tokens - self._tokens, state.lr))
        self._tokens = state.target_tokens

    def on_epoch_end(self, trainer: Trainer, summary: EpochSummary) -> None:
        self.summaries.append(summary)


def _token_weighted(steps: list[tuple[float, int, float]]) -> float:
    return sum(loss * tokens for loss, tokens, _ in steps) / sum(tokens for _, tokens, _ in steps)


def test_one_summary_per_epoch_with_the_token_weighted_loss_and_the_last_lr(config: Path) -> None:
    # 8 training records in batches of 4: 2 steps an epoch; max_steps=5 ends half-way through epoch 3.
    # A linear schedule, so each step has its own lr.
    epochs = _Epochs()
    _trainer(config, "training.max_steps=5", "scheduler.name=linear", callbacks=[epochs]).fit()
    steps = epochs.steps
    assert len(steps) == 5 and len({lr for _, _, lr in steps}) == 5
    assert epochs.summaries == [
        {
            "epoch": 1,
            "epochs": 3,
            "steps": 2,
            "loss": pytest.approx(_token_weighted(steps[:2])),
            "lr": steps[1][2],
            "complete": 1.0,
        },
        {
            "epoch": 2,
            "epochs": 3,
            "steps": 2,
            "loss": pytest.approx(_token_weighted(steps[2:4])),
            "lr": steps[3][2],
            "complete": 1.0,
        },
        {"epoch": 3, "epochs": 3, "steps": 1, "loss": pytest.approx(steps[4][0]), "lr": steps[4][2], "complete": 0.5},
    ]


def test_a_step_that_ends_two_epochs_reports_the_last(config: Path) -> None:
    # grad_accum 3 over 2 micro-batches an epoch: step 1 ends epoch 1 (micro-batch 3), step 2 epochs 2 and 3 (6).
    epochs = _Epochs()
    _trainer(config, "training.max_steps=2", "training.grad_accum=3", callbacks=[epochs]).fit()
    assert [(s["epoch"], s["epochs"], s["steps"], s["complete"]) for s in epochs.summaries] == [
        (1, 3, 1, 1.0),
        (3, 3, 1, 1.0),
    ]


def test_a_resumed_run_reports_the_epochs_of_an_uninterrupted_one(config: Path) -> None:
    straight = _Epochs()
    _trainer(config, "training.max_steps=6", callbacks=[straight]).fit()
    first = _trainer(config, "training.max_steps=3")  # stops half-way through epoch 2: its summary is partial
    first.fit()
    resumed_epochs = _Epochs()
    resumed = _trainer(config, "training.max_steps=6", callbacks=[resumed_epochs])
    resumed.restore(load_checkpoint(first.save_checkpoint()))
    resumed.fit()
    # Epoch 2 spans the resume: its summary still covers both of its steps, as in the straight run.
    assert resumed_epochs.summaries == straight.summaries[1:]
    assert [s["steps"] for s in straight.summaries] == [2, 2, 2]


def test_a_checkpoint_from_before_epoch_summaries_resumes() -> None:
    state = TrainState(total_steps=10, batches_per_epoch=4, step=3, micro_batches=6).to_dict()
    del state["epoch_window"], state["epochs_summarised"]
    again = TrainState.from_dict(state)
    # The epoch in progress gets a summary of the steps after the resume; epoch 1 is not reported again.
    assert (again.epochs_summarised, again.epoch_window) == (1, LogWindow())


def test_the_epoch_line() -> None:
    console = Console(file=io.StringIO(), width=40)  # no wrapping, even on a narrow console
    display = ProgressDisplay(console)
    trainer: Any = None
    display.on_epoch_end(trainer, {"epoch": 1, "epochs": 3, "steps": 7, "loss": 2.3414, "lr": 2e-4, "complete": 1.0})
    display.on_epoch_end(trainer, {"epoch": 3, "epochs": 3, "steps": 2, "loss": 0.05, "lr": 1.96e-5, "complete": 0.25})
    assert console.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "Epoch 1/3: loss=2.341, lr=2.0e-4",
        "Epoch 3/3: loss=0.050, lr=2.0e-5 (stopped after 25% of the epoch)",
    ]
