"""``run_state.json`` as ``entrenar train`` keeps it: running with heartbeats, then finished, failed (with a
non-finite loss as an alarm) or interrupted; a SIGKILLed ``entrenar train`` reads as dead."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from entrenar.config import load_config
from entrenar.errors import NonFiniteError, TrainingInterrupted
from entrenar.monitor.state import RUN_STATE_NAME, read_run_state
from entrenar.monitor.state import liveness as liveness_of
from entrenar.train import Callback, Trainer, run_training
from entrenar.train.memory import process_memory
from entrenar.train.run_state import RunStateWriter

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py


@pytest.fixture
def config(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    return runs.write_config(tmp_path, tiny_checkpoints["qwen2"])


def _train(config: Path, *overrides: str, callbacks: list[Callback] | None = None) -> Any:
    cfg = load_config(config, list(overrides))
    return run_training(cfg, console=Console(file=io.StringIO()), callbacks=callbacks)


class _Watch(Callback):
    """Reads run_state.json after each step; waits once for heartbeats."""

    def __init__(self, folder: Path, wait_at: int | None = None) -> None:
        self.folder, self.wait_at = folder, wait_at
        self.seen: list[tuple[str, int]] = []
        self.beats: list[float] = []

    def on_step_end(self, trainer: Trainer) -> None:
        state = read_run_state(self.folder)
        assert state is not None
        # the writer is first among the callbacks, so this step is already there
        self.seen.append((state.status, state.step))
        if trainer.state.step == self.wait_at:
            first = state.heartbeat
            time.sleep(2.5)  # a long step: the heartbeat thread keeps writing
            later = read_run_state(self.folder)
            assert later is not None
            self.beats = [first, later.heartbeat]


def test_a_run_is_running_then_finished(config: Path) -> None:
    out = config.parent / "out"
    watch = _Watch(out, wait_at=2)
    result = _train(config, "training.max_steps=3", "training.save_every=1", callbacks=[watch])
    assert watch.seen == [("running", 1), ("running", 2), ("running", 3)]
    assert watch.beats[1] - watch.beats[0] >= 1.0  # at least one heartbeat (every second) during the sleep
    state = read_run_state(out)
    assert state is not None and liveness_of(state) == "finished"
    assert (state.step, state.total_steps, state.tokens) == (3, 3, result.state.input_tokens)
    assert state.total_tokens == state.tokens and state.epoch == pytest.approx(result.state.epoch)
    assert state.checkpoints == ["checkpoints/step-2", "checkpoints/step-3"]  # keep_checkpoints 2
    assert (state.model, state.method, state.techniques) == (load_config(config).model.path, "lora", ["lora"])
    memory = state.memory
    assert memory["rss_bytes"] is not None and 0 < memory["rss_bytes"] <= (memory["peak_rss_bytes"] or 0)
    assert memory["cuda_allocated_bytes"] is None and memory["cuda_reserved_bytes"] is None
    assert state.error is None and state.alarms == [] and state.started_at.endswith("+00:00")
    raw = json.loads((out / RUN_STATE_NAME).read_text())
    assert raw["status"] == "finished" and raw["pid"] == state.pid


class _PoisonAfter(Callback):
    """Makes every weight NaN after optimizer step `step`, so the next step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step == self.step:
            with torch.no_grad():
                for parameter in trainer.run.model.parameters():
                    parameter.fill_(float("nan"))


def test_a_non_finite_loss_fails_the_run_with_an_alarm(config: Path) -> None:
    with pytest.raises(NonFiniteError) as caught:
        _train(config, "training.max_steps=5", callbacks=[_PoisonAfter(2)])
    state = read_run_state(config.parent / "out")
    assert state is not None and liveness_of(state) == "failed" and state.step == 2
    first = str(caught.value).splitlines()[0]
    assert state.error == first and state.alarms == [{"step": 3, "what": first}]
    assert "loss" in first


class _Raise(Callback):
    def on_step_end(self, trainer: Trainer) -> None:
        raise MemoryError


def test_another_error_fails_the_run_without_an_alarm(config: Path) -> None:
    with pytest.raises(MemoryError):
        _train(config, "training.max_steps=5", callbacks=[_Raise()])
    state = read_run_state(config.parent / "out")
    assert state is not None and (state.status, state.error, state.alarms) == ("failed", "MemoryError", [])


class _Interrupt(Callback):
    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step == 2:
            signal.raise_signal(signal.SIGINT)


def test_an_interrupted_run(config: Path) -> None:
    with pytest.raises(TrainingInterrupted):
        _train(config, "training.max_steps=5", callbacks=[_Interrupt()])
    state = read_run_state(config.parent / "out")
    assert state is not None and (state.status, state.step) == ("interrupted", 2)
    assert state.checkpoints == ["checkpoints/step-2"]


def test_a_killed_train_process_reads_as_dead(config: Path) -> None:
    out = config.parent / "out"
    child = subprocess.Popen(
        [*runs.CLI, "train", str(config), "training.max_steps=100000"],
        env=runs.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        state = read_run_state(out)
        while state is None or state.step < 1:
            assert time.monotonic() < deadline and child.poll() is None, "the run never took a step"
            time.sleep(0.2)
            state = read_run_state(out)
        assert liveness_of(state) == "running"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
    state = read_run_state(out)
    assert state is not None and state.status == "running"  # it had no chance to say anything
    assert liveness_of(state) == "dead"  # this host: the process is gone
    assert liveness_of(state, now=state.heartbeat + 3.0) == "dead"  # elsewhere: no heartbeat for 4 beats ...
    assert liveness_of(state, now=state.heartbeat + 0.5) in ("running", "dead")  # ... while 0.5 s is no proof


def test_process_memory_on_cpu() -> None:
    memory = process_memory(torch.device("cpu"))
    assert set(memory) == {"rss_bytes", "peak_rss_bytes", "cuda_allocated_bytes", "cuda_reserved_bytes"}
    assert memory["rss_bytes"] is not None and memory["rss_bytes"] > 10 * 2**20  # torch alone is more


def test_the_writer_is_first_among_the_default_callbacks(config: Path) -> None:
    from entrenar.train.run import default_callbacks

    callbacks = default_callbacks(load_config(config), Console(file=io.StringIO()))
    assert isinstance(callbacks[0], RunStateWriter) and callbacks[0].folder == config.parent / "out"
