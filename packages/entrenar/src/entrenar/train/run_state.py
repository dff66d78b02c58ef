"""`RunStateWriter`: the callback that keeps ``run_state.json`` (`entrenar.monitor.state`) while a run trains.

It writes the state when training begins (``running``), after every optimizer step, from a daemon thread every
`HEARTBEAT_EVERY` seconds in between (so a long step, an evaluation or a checkpoint does not look like a dead
process), and once more at the end: ``finished``, ``interrupted`` (SIGINT/SIGTERM) or ``failed`` with the error;
a non-finite loss or gradient also becomes an alarm. Writes go through one lock, each replacing the file
atomically.

Memory comes from `entrenar.train.memory.process_memory`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from entrenar.constants import CHECKPOINTS_DIR
from entrenar.errors import NonFiniteError
from entrenar.monitor.state import HEARTBEAT_EVERY, RunState, Status, write_run_state
from entrenar.train.callbacks import Callback
from entrenar.train.memory import process_memory

if TYPE_CHECKING:
    from entrenar.train.loop import Trainer

__all__ = ["RunStateWriter"]


class RunStateWriter(Callback):
    """Keeps ``run_state.json`` in the output folder (module docstring).

    Args:
        folder: The output folder.
        heartbeat_every: Seconds between heartbeats.
    """

    def __init__(self, folder: str | os.PathLike[str], heartbeat_every: float = HEARTBEAT_EVERY) -> None:
        self.folder = Path(folder)
        self.heartbeat_every = heartbeat_every
        self.state = RunState("running", heartbeat_every=heartbeat_every)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._device = torch.device("cpu")

    def on_train_begin(self, trainer: Trainer) -> None:
        """Write the first state and start the heartbeat."""
        run = trainer.run
        self._device = run.device
        self.state = replace(
            self.state,
            status="running",
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            total_steps=trainer.state.total_steps,
            model=run.config.model.path,
            method=run.config.method,
            techniques=list(run.config.techniques),
        )
        self._update(trainer)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="entrenar-heartbeat", daemon=True)
        self._thread.start()

    def on_step_end(self, trainer: Trainer) -> None:
        """The step, tokens, memory and checkpoints after the step."""
        self._update(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        """``finished``."""
        self._finish(trainer, "finished")

    def on_interrupt(self, trainer: Trainer) -> None:
        """``interrupted`` (its checkpoint is saved)."""
        self._finish(trainer, "interrupted")

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        """``failed`` with the error's first line; a non-finite loss or gradient is an alarm too."""
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        with self._lock:
            self.state.error = message
            if isinstance(error, NonFiniteError):
                self.state.alarms.append({"step": trainer.state.step + 1, "what": message})
        self._finish(trainer, "failed")

    def _finish(self, trainer: Trainer, status: Status) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self.state.status = status
        self._update(trainer)

    def _update(self, trainer: Trainer) -> None:
        state = trainer.state
        with self._lock:
            self.state.step, self.state.epoch, self.state.tokens = state.step, round(state.epoch, 6), state.input_tokens
            if state.step:
                self.state.total_tokens = round(state.input_tokens / state.step * state.total_steps)
            self.state.memory = process_memory(self._device)
            root = self.folder / CHECKPOINTS_DIR
            names = [p.name for p in root.glob("step-*")] if root.is_dir() else []
            steps = sorted(int(name[5:]) for name in names if name[5:].isdigit())
            self.state.checkpoints = [f"{CHECKPOINTS_DIR}/step-{step}" for step in steps]
            write_run_state(self.folder, self.state)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            with self._lock:
                self.state.memory = process_memory(self._device)
                write_run_state(self.folder, self.state)
