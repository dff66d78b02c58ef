"""The dashboard on real ``entrenar train`` runs of the tiny Qwen2: it follows a live run (step, loss, tokens/s,
RUNNING), shows it DEAD within seconds of a SIGKILL, FINISHED after a complete run with its samples, and the
alarm when a run fails on a NaN loss."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import time
from importlib import import_module
from pathlib import Path

import pytest
import torch
from rich.console import Console
from textual.pilot import Pilot

from entrenar.config import load_config
from entrenar.errors import NonFiniteError
from entrenar.monitor.app import MonitorApp
from entrenar.monitor.screen import screen_text
from entrenar.monitor.state import read_run_state
from entrenar.train import Callback, Trainer, run_training

runs = import_module("entrenar_train_test_runs")  # registered by conftest.py

SIZE = (120, 40)


async def _wait(pilot: Pilot[None], app: MonitorApp, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause(0.1)
        shown = screen_text(app.export_screenshot())
        if re.search(pattern, shown):
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not on the screen after {timeout} s:\n{shown}")


def test_a_live_run_then_killed(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = runs.write_config(tmp_path, tiny_checkpoints["qwen2"])
    out = tmp_path / "out"
    child = subprocess.Popen(
        [*runs.CLI, "train", str(config), "training.max_steps=100000", "training.save_every=1000000"],
        env=runs.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (state := read_run_state(out)) is None or state.step < 2:
            assert child.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        app = MonitorApp(out, poll_seconds=0.1)

        async def scenario() -> None:
            async with app.run_test(size=SIZE) as pilot:
                first = await _wait(pilot, app, r"RUNNING\s+step \d+/\d+")
                step = int(re.search(r"step (\d+)/\d+", first)[1])  # type: ignore[index]
                later = await _wait(pilot, app, rf"RUNNING\s+step (?!{step}/)\d+/\d+")  # it follows the run
                assert re.search(r"loss\s+\d+\.\d{4}", later) and re.search(r"tokens/s\s+[\d,]+", later)
                child.send_signal(signal.SIGKILL)
                child.wait()
                dead = await _wait(pilot, app, "DEAD", timeout=5.0)  # within seconds
                assert "RUNNING" not in dead

        asyncio.run(scenario())
    finally:
        child.kill()


class _NaNAfter(Callback):
    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step == 2:
            with torch.no_grad():
                for parameter in trainer.run.model.parameters():
                    parameter.fill_(float("nan"))


def test_a_finished_run_and_a_nan_run(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    sections = {"training": {"sample_prompts": ["Question: Who ran the bakery?\nAnswer:"], "sample_max_new_tokens": 4}}
    finished = runs.write_config(tmp_path / "ok", tiny_checkpoints["qwen2"], **sections)
    run_training(load_config(finished, ["training.max_steps=3"]), console=Console(file=io.StringIO()))
    failed = runs.write_config(tmp_path / "nan", tiny_checkpoints["qwen2"])
    with pytest.raises(NonFiniteError):
        run_training(load_config(failed, ["training.max_steps=5"]), console=Console(file=io.StringIO()),
                     callbacks=[_NaNAfter()])  # fmt: skip

    async def scenario() -> None:
        app = MonitorApp(tmp_path / "ok" / "out", poll_seconds=0.1)
        async with app.run_test(size=SIZE) as pilot:
            shown = await _wait(pilot, app, "FINISHED")
            assert "step 3/3" in shown and "ALARM" not in shown
            await pilot.press("2")
            samples = await _wait(pilot, app, "Who ran the bakery")
            assert "step 3" in samples and "step 0" in samples
        app = MonitorApp(tmp_path / "nan" / "out", poll_seconds=0.1)
        async with app.run_test(size=SIZE) as pilot:
            shown = await _wait(pilot, app, "ALARM")
            assert "FAILED" in shown and "step 3" in shown  # the step whose loss was NaN

    asyncio.run(scenario())
