"""A run as its output folder shows it right now: `RunFollower` polls the files, `RunSnapshot` is one look.

The monitor reads only files (``run_state.json`` through `entrenar.monitor.state`, ``metrics.jsonl``,
``final_model.json``, ``checkpoints/``), so it can attach to a live or finished run at any time, from any
process. ``metrics.jsonl`` is followed like ``tail -f``: each poll parses only the complete lines appended
since the last one (a line a writer is still writing waits for its newline; one that does not parse, cut
by a killed writer, or not of a known shape, is skipped; records are checked and converted once, as read).
A folder without ``run_state.json`` (a run from before it existed) shows what the metrics say, with the
status ``unknown``.

This module imports no torch: the monitor must start fast, on a machine without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from entrenar.constants import CHECKPOINTS_DIR, FINAL_MODEL_NAME, METRICS_NAME
from entrenar.monitor.state import Liveness, RunState, liveness, read_run_state

__all__ = ["ETA_WINDOW", "RECENT", "MetricsTail", "Record", "RunFollower", "RunSnapshot", "Status"]

RECENT = 120
"""Train records kept for the lr, gradient-norm and tokens/s histories; also the samples kept."""
ETA_WINDOW = 5
"""The ETA divides the tokens left by the mean tokens/s of this many last train records."""

Status = Liveness | Literal["unknown"]
Record = dict[str, Any]


Shape = dict[str, Callable[[Any], Any]]
"""A record's keys, each with the function that checks and converts its value."""
_TRAIN: Shape = {
    "step": int,
    "epoch": float,
    "loss": float,
    "lr": float,
    "grad_norm": float,
    "tokens_per_s": float,
    "tokens": int,
}
_EVAL: Shape = {"step": int, "epoch": float, "eval_loss": float, "eval_perplexity": float, "eval_token_accuracy": float}
_SAMPLE: Shape = {"step": int, "prompt": str, "answer": str}
_OPTIONAL: Shape = {"parts": lambda parts: {str(k): float(v) for k, v in parts.items()}, "eval_kl_to_teacher": float}


def _typed(record: Record, shape: Shape) -> Record:
    """`record`'s keys of `shape` and, where present, of `_OPTIONAL`, converted; KeyError, ValueError, TypeError or
    AttributeError for a record of another shape."""
    typed = {key: convert(record[key]) for key, convert in shape.items()}
    return typed | {key: convert(record[key]) for key, convert in _OPTIONAL.items() if key in record}


class MetricsTail:
    """Follows one ``metrics.jsonl``: `read` parses the complete lines appended since the previous read.

    Args:
        path: The file (it need not exist yet).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._clear()

    def _clear(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.recent_train: deque[Record] = deque(maxlen=RECENT)
        self.evals: list[Record] = []
        self.samples: deque[Record] = deque(maxlen=RECENT)
        self.alarms: list[Record] = []
        self._offset = 0
        self._file_id: tuple[int, int] | None = None

    def read(self) -> None:
        """Parse what was appended; start over when the file was replaced (a run rewrites it as it starts or
        resumes) or shrank."""
        try:
            with self.path.open("rb") as file:
                stat = os.fstat(file.fileno())
                if (stat.st_dev, stat.st_ino) != self._file_id or stat.st_size < self._offset:
                    self._clear()
                    self._file_id = (stat.st_dev, stat.st_ino)
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        for line in data[:end].splitlines():
            self._add(line)
        self._offset += end

    def _add(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            kind = record["kind"]
            if kind == "train":
                self._add_train(_typed(record, _TRAIN))
            elif kind == "eval":
                record = _typed(record, _EVAL)
                self.eval_losses.append((record["step"], record["eval_loss"]))
                self.evals.append(record)
            elif kind == "sample":
                self.samples.append(_typed(record, _SAMPLE))
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # cut by a killed writer, or not a record of this shape

    def _add_train(self, record: Record) -> None:
        step, loss, grad_norm = record["step"], record["loss"], record["grad_norm"]
        self.losses.append((step, loss))
        self.recent_train.append(record)
        if not math.isfinite(loss):
            self.alarms.append({"step": step, "what": f"non-finite loss ({loss})"})
        if not math.isfinite(grad_norm):
            self.alarms.append({"step": step, "what": f"non-finite gradient norm ({grad_norm})"})


@dataclass
class RunSnapshot:
    """One look at a run's folder.

    Attributes:
        folder: The output folder.
        now: When it was taken (Unix seconds).
        state: ``run_state.json``, or None (a run from before it existed, or not started).
        status: `entrenar.monitor.state.liveness` of the state, ``unknown`` without one.
        losses: ``(step, loss)`` of every train record; ``eval_losses`` the same of every eval record.
        recent_train: The last `RECENT` train records, oldest first.
        evals: Every eval record.
        samples: The last `RECENT` sample records (``step``, ``prompt``, ``answer``), oldest first.
        alarms: The state's alarms, then those the metrics show at other steps (non-finite loss or
            gradient norm), each ``{"step", "what"}``.
        checkpoints: The checkpoint folders written, oldest first (relative to `folder`).
        final_model: ``final_model.json`` once the run wrote it.
    """

    folder: Path
    now: float
    state: RunState | None
    status: Status
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    recent_train: list[Record] = field(default_factory=list)
    evals: list[Record] = field(default_factory=list)
    samples: list[Record] = field(default_factory=list)
    alarms: list[Record] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    final_model: Record | None = None

    @property
    def last_train(self) -> Record | None:
        """The newest train record."""
        return self.recent_train[-1] if self.recent_train else None

    @property
    def step(self) -> int:
        """Optimizer steps taken, by the state or else the newest train record."""
        if self.state is not None:
            return self.state.step
        return int(self.last_train["step"]) if self.last_train else 0

    @property
    def tokens(self) -> int:
        """Input tokens so far, by the state or else the newest train record."""
        if self.state is not None:
            return self.state.tokens
        return int(self.last_train["tokens"]) if self.last_train else 0

    def tokens_per_s(self) -> float | None:
        """The mean tokens/s of the last `ETA_WINDOW` train records; None without any."""
        rates = [float(r["tokens_per_s"]) for r in self.recent_train[-ETA_WINDOW:]]
        rates = [rate for rate in rates if math.isfinite(rate) and rate > 0]
        return sum(rates) / len(rates) if rates else None

    def eta_seconds(self) -> float | None:
        """Seconds left by tokens, ``(total_tokens - tokens) / tokens_per_s()``: only for a running run that
        knows its total."""
        rate = self.tokens_per_s()
        if self.status != "running" or self.state is None or self.state.total_tokens is None or rate is None:
            return None
        return max(self.state.total_tokens - self.state.tokens, 0) / rate


class RunFollower:
    """Polls an output folder; each `poll` reads only what changed since the previous one.

    Args:
        folder: The run's output folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._metrics = MetricsTail(folder / METRICS_NAME)
        self._final_model: Record | None = None

    def poll(self, now: float | None = None) -> RunSnapshot:
        """The run as its files show it now."""
        now = time.time() if now is None else now
        state = read_run_state(self.folder)
        self._metrics.read()
        metrics = self._metrics
        alarms = list(state.alarms) if state is not None else []
        flagged = {alarm.get("step") for alarm in alarms}
        alarms += [alarm for alarm in metrics.alarms if alarm["step"] not in flagged]
        return RunSnapshot(
            folder=self.folder,
            now=now,
            state=state,
            status="unknown" if state is None else liveness(state, now),
            losses=list(metrics.losses),
            eval_losses=list(metrics.eval_losses),
            recent_train=list(metrics.recent_train),
            evals=list(metrics.evals),
            samples=list(metrics.samples),
            alarms=alarms,
            checkpoints=list(state.checkpoints) if state is not None else self._checkpoint_folders(),
            final_model=self._read_final_model(),
        )

    def _checkpoint_folders(self) -> list[str]:
        """``checkpoints/step-N`` folders on disk, by step (for a folder without ``run_state.json``)."""
        folders = [p for p in (self.folder / CHECKPOINTS_DIR).glob("step-*") if p.is_dir()]
        numbered = [(int(p.name[5:]), p) for p in folders if p.name[5:].isdigit()]
        return [p.relative_to(self.folder).as_posix() for _, p in sorted(numbered)]

    def _read_final_model(self) -> Record | None:
        if self._final_model is None:
            try:
                data = json.loads((self.folder / FINAL_MODEL_NAME).read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                return None
            self._final_model = data if isinstance(data, dict) else None
        return self._final_model
