"""The run-state file: what a training run says about itself while it runs, for ``entrenar monitor``.

``entrenar train`` keeps ``run_state.json`` next to ``metrics.jsonl`` in the output folder, replaced atomically
(so a reader never sees half a file): at the start, after every optimizer step, every `HEARTBEAT_EVERY` seconds
from a background thread while the run is alive, and once more when it ends. Fields (`RunState`):

- ``status``: ``running``, ``finished``, ``failed`` (an error stopped it: ``error`` says which) or
  ``interrupted`` (Ctrl-C or SIGTERM; a checkpoint was saved);
- ``pid``, ``host``: the training process; ``started_at`` (ISO 8601, UTC); ``heartbeat`` (Unix seconds of the
  last write) and ``heartbeat_every``;
- ``step``, ``total_steps``, ``epoch``, ``tokens`` (non-padding input tokens so far), ``total_tokens`` (the
  run's estimate: tokens so far / steps so far * total steps; None before the first step);
- ``memory``: ``rss_bytes`` and ``peak_rss_bytes`` of the process, ``cuda_allocated_bytes`` and
  ``cuda_reserved_bytes`` (None on CPU);
- ``checkpoints``: the checkpoint folders written, oldest first (relative to the output folder);
- ``alarms``: what went wrong numerically, newest last (``{"step", "what"}``: a non-finite loss or gradient);
- ``model``, ``method``, ``techniques``: what is trained.

`liveness` tells a running run from a dead one (killed without a word: SIGKILL, a lost machine): a ``running``
state whose heartbeat is older than `DEAD_AFTER` heartbeats, or, on the same host, whose process is gone.

This module imports no torch: the monitor reads it from another terminal, on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from aprender.atomic import atomic_write_json

__all__ = [
    "DEAD_AFTER",
    "HEARTBEAT_EVERY",
    "RUN_STATE_NAME",
    "Liveness",
    "RunState",
    "liveness",
    "read_run_state",
    "write_run_state",
]

RUN_STATE_NAME = "run_state.json"
HEARTBEAT_EVERY = 1.0
"""Seconds between heartbeats of a running run."""
DEAD_AFTER = 4
"""A running state whose heartbeat is older than this many heartbeats belongs to a dead process."""

Status = Literal["running", "finished", "failed", "interrupted"]
Liveness = Literal["running", "finished", "failed", "interrupted", "dead"]


@dataclass
class RunState:
    """The content of ``run_state.json`` (module docstring)."""

    status: Status
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: str = ""
    heartbeat: float = 0.0
    heartbeat_every: float = HEARTBEAT_EVERY
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    tokens: int = 0
    total_tokens: int | None = None
    memory: dict[str, int | None] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    method: str = ""
    techniques: list[str] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunState:
        """A state from the file's mapping; unknown keys (a newer writer) are ignored."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def write_run_state(folder: str | os.PathLike[str], state: RunState) -> None:
    """Replace ``folder/run_state.json`` with `state`, its heartbeat set to now."""
    state.heartbeat = time.time()
    atomic_write_json(Path(folder) / RUN_STATE_NAME, asdict(state))


def read_run_state(folder: str | os.PathLike[str]) -> RunState | None:
    """The run state in `folder`, or None when there is none (a run from before this file, or not started)."""
    path = Path(folder) / RUN_STATE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return RunState.from_json(data)


def liveness(state: RunState, now: float | None = None) -> Liveness:
    """``dead`` for a running state without a recent heartbeat or, on this host, without its process; else its
    status."""
    if state.status != "running":
        return state.status
    now = time.time() if now is None else now
    if now - state.heartbeat > DEAD_AFTER * state.heartbeat_every:
        return "dead"
    if state.host == socket.gethostname() and not _process_alive(state.pid):
        return "dead"
    return "running"


def _process_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:  # no /proc (macOS): the signal said it exists
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
