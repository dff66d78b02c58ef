"""Callbacks: what happens around the training loop's steps, each in its own small class.

The `Trainer` calls, in this order per optimizer step: the step itself with `Callback.on_optimizer_step`
right after the optimizer updated the weights (before the schedule moves on: where pruning masks and QAT
counters live), then `Callback.on_log` with a ``metrics.jsonl`` record when a log is due,
`Callback.on_evaluate` with an eval record when an evaluation is due, `Callback.on_epoch_end` with an
`EpochSummary` when the step ends an epoch, then `Callback.on_step_end`; `Callback.on_sample` with each greedy
answer to ``training.sample_prompts`` when samples are due (and before the first step of a fresh run, with the
evaluation of the base model). An error inside a step reaches
`Callback.on_error` before it propagates (SIGINT/SIGTERM reach `Callback.on_interrupt` instead).
Callbacks run in the order given, so a checkpoint taken in ``on_step_end`` already holds that step's
records and early-stopping verdict.

A callback with state of its own returns it from `Callback.state_dict` (tensors allowed): every checkpoint
saves it under the callback's `Callback.state_key` and a resumed run hands it back to `load_state_dict`
before the first step, so a resumed run stays bit-identical.

- `MetricsLogger` writes ``metrics.jsonl`` (one JSON object per line; ``kind`` is ``"train"`` or
  ``"eval"``); on (re)start it rewrites the file from the records in the state, so lines logged after
  the checkpoint a run resumes from disappear.
- `CheckpointSaver` saves a checkpoint every ``save_every`` steps.
- `EarlyStopping` ends the run after ``patience`` evaluations without a lower validation loss
  (Prechelt 1998, "Early Stopping - But When?", https://doi.org/10.1007/3-540-49430-8_3).
- `ProgressDisplay` shows step/total, epoch, loss (and its parts) with its smoothed value, lr, gradient norm,
  tokens/s, ETA and peak memory: a rich progress bar on a terminal, plain lines otherwise (logs, CI); and one line
  per epoch, ``Epoch 1/3: loss=2.341, lr=2.0e-4``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from aprender.atomic import atomic_write_text
from entrenar.display import human_size, scientific
from entrenar.train.records import EpochSummary, EvalRecord, MetricRecord, SampleRecord, TrainRecord

if TYPE_CHECKING:
    from entrenar.train.loop import Trainer

__all__ = [
    "Callback",
    "CheckpointSaver",
    "ClosingCallback",
    "EarlyStopping",
    "MetricsLogger",
    "ProgressDisplay",
    "smoothed_loss",
]


class Callback:
    """Base class: every hook does nothing and there is no state; override what you need."""

    @property
    def state_key(self) -> str:
        """The name this callback's state is saved under (the class name; keep it stable across runs)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any] | None:
        """The callback's own state for a checkpoint (tensors allowed), or None when it has none."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what `state_dict` returned, when a run resumes from a checkpoint."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step of this session (after a resume, the state is the restored one)."""

    def on_optimizer_step(self, trainer: Trainer) -> None:
        """Right after each optimizer step (``trainer.state.step`` is still the step before it)."""

    def on_log(self, trainer: Trainer, record: TrainRecord) -> None:
        """A training record was added to ``trainer.state.history``."""

    def on_evaluate(self, trainer: Trainer, record: EvalRecord) -> None:
        """An evaluation record was added to ``trainer.state.history``."""

    def on_sample(self, trainer: Trainer, record: SampleRecord) -> None:
        """A sample record (a greedy answer to one of ``training.sample_prompts``) was added to the history."""

    def on_epoch_end(self, trainer: Trainer, summary: EpochSummary) -> None:
        """The step just taken ended an epoch (or the run ended mid-epoch: ``summary["complete"]`` < 1)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After the step, its log, its evaluation and its epoch summary."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step (not called when the run is interrupted)."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """SIGINT/SIGTERM stopped the run; its checkpoint is saved and `TrainingInterrupted` follows."""

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        """An error stopped the run mid-step (a non-finite loss, out of memory ...); it is raised again after."""


def _json_line(record: MetricRecord) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


class MetricsLogger(Callback):
    """Appends every record to ``metrics.jsonl``.

    Args:
        path: The file (its folder must exist).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, trainer: Trainer) -> None:
        """Rewrite the file from the state's records (empty for a new run)."""
        atomic_write_text(self.path, "".join(_json_line(record) for record in trainer.state.history))

    def on_log(self, trainer: Trainer, record: TrainRecord) -> None:
        """Append the training record."""
        self._append(record)

    def on_evaluate(self, trainer: Trainer, record: EvalRecord) -> None:
        """Append the evaluation record."""
        self._append(record)

    def on_sample(self, trainer: Trainer, record: SampleRecord) -> None:
        """Append the sample record."""
        self._append(record)

    def _append(self, record: MetricRecord) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(_json_line(record))


class CheckpointSaver(Callback):
    """Saves a checkpoint every `save_every` optimizer steps.

    Args:
        save_every: Steps between checkpoints, >= 1.
    """

    def __init__(self, save_every: int) -> None:
        self.save_every = save_every

    def on_step_end(self, trainer: Trainer) -> None:
        """Save when the step is a multiple of `save_every`."""
        if trainer.state.step % self.save_every == 0:
            trainer.save_checkpoint()


class EarlyStopping(Callback):
    """Stops the run after `patience` evaluations in a row without a new best validation loss.

    Args:
        patience: Evaluations without improvement that end the run, >= 1.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_evaluate(self, trainer: Trainer, record: EvalRecord) -> None:
        """Set ``state.stop_reason`` once the patience is used up."""
        if trainer.state.evals_without_improvement >= self.patience:
            trainer.state.stop_reason = "early_stopping"


def _format_eta(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class ClosingCallback(Callback):
    """A callback holding something open (a progress bar, a file) that it closes however the run ends: finished,
    interrupted or stopped by an error."""

    def close(self) -> None:
        """Close what the callback holds; calling it again does nothing."""

    def on_train_end(self, trainer: Trainer) -> None:
        """`close`."""
        self.close()

    def on_interrupt(self, trainer: Trainer) -> None:
        """`close`."""
        self.close()

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        """`close`."""
        self.close()


class ProgressDisplay(ClosingCallback):
    """Shows progress: a rich bar on a terminal, plain lines (one per log record) elsewhere.

    Args:
        console: Where to write; its ``is_terminal`` picks the bar or the lines.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._session_start = 0.0
        self._session_first_step = 0

    def eta(self, trainer: Trainer) -> float | None:
        """Seconds left, from this session's pace; None before the first step of the session."""
        state = trainer.state
        done = state.step - self._session_first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._session_start) / done * (state.total_steps - state.step)

    def on_train_begin(self, trainer: Trainer) -> None:
        """Start the clock (and the bar on a terminal)."""
        self._session_start = time.perf_counter()
        self._session_first_step = trainer.state.step
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=trainer.state.total_steps, completed=trainer.state.step, stats=""
            )

    def on_log(self, trainer: Trainer, record: TrainRecord) -> None:
        """Print a plain line (no terminal)."""
        if self._progress is None:
            self.console.print(self._describe(trainer, record), highlight=False, soft_wrap=True)

    def on_evaluate(self, trainer: Trainer, record: EvalRecord) -> None:
        """Print the evaluation result."""
        line = (
            f"eval step {record['step']}: loss {record['eval_loss']:.4f} | perplexity {record['eval_perplexity']:.3f}"
            f" | token accuracy {record['eval_token_accuracy']:.4f}"
        )
        if "eval_kl_to_teacher" in record:
            line += f" | KL to teacher {record['eval_kl_to_teacher']:.4f}"
        if record["step"] == 0:
            line = line.replace("eval step 0:", "eval of the base model:", 1)
        self.console.print(line, highlight=False, soft_wrap=True)

    def on_sample(self, trainer: Trainer, record: SampleRecord) -> None:
        """Print ``sample step 4: PROMPT -> ANSWER`` (one line each, newlines shown as ``\\n``)."""
        prompt, answer = (text.replace("\n", "\\n") for text in (record["prompt"], record["answer"]))
        self.console.print(f"sample step {record['step']}: {prompt} -> {answer}", markup=False, highlight=False,
                           soft_wrap=True)  # fmt: skip

    def on_epoch_end(self, trainer: Trainer, summary: EpochSummary) -> None:
        """Print ``Epoch 1/3: loss=2.341, lr=2.0e-4`` (and how much of the epoch ran, when not all of it)."""
        partial = f" (stopped after {summary['complete']:.0%} of the epoch)" if summary["complete"] < 1 else ""
        line = (
            f"Epoch {summary['epoch']}/{summary['epochs']}: loss={summary['loss']:.3f}, "
            f"lr={scientific(summary['lr'], 1)}{partial}"
        )
        self.console.print(line, highlight=False, soft_wrap=True)

    def on_step_end(self, trainer: Trainer) -> None:
        """Advance the bar (terminal only)."""
        if self._progress is not None and self._task is not None:
            record = trainer.state.last_train()
            stats = self._describe(trainer, record).split(" | ", 1)[1] if record is not None else ""
            self._progress.update(self._task, completed=trainer.state.step, stats=stats)

    def close(self) -> None:
        """Stop the bar (so a message that follows is not drawn over)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _describe(self, trainer: Trainer, record: TrainRecord) -> str:
        from entrenar.train.memory import peak_memory

        eta = self.eta(trainer)
        parts = record.get("parts", {})
        # one part is the loss itself; with several (ce + kd ...) each is shown after the total
        shown = f" ({', '.join(f'{name} {value:.4f}' for name, value in parts.items())})" if len(parts) > 1 else ""
        smoothed = smoothed_loss(trainer.state.history)
        return (
            f"step {record['step']}/{trainer.state.total_steps} | epoch {record['epoch']:.2f}"
            f" | loss {record['loss']:.4f}{shown} (smoothed {smoothed:.4f}) | lr {record['lr']:.3e}"
            f" | grad norm {record['grad_norm']:.3g} | {record['tokens_per_s']:.0f} tok/s"
            f" | ETA {_format_eta(eta) if eta is not None else '?'}"
            f" | peak memory {human_size(peak_memory(trainer.run.device))}"
        )


SMOOTHING = 0.9
"""Weight of the past in `smoothed_loss`."""


def smoothed_loss(history: Sequence[MetricRecord]) -> float:
    """The exponential moving average of the train records' losses, weight `SMOOTHING` on the past, corrected for
    its start at zero (as Adam corrects its moments): a loss line that does not jump with every batch."""
    average, weight = 0.0, 0.0
    for record in history:
        if record["kind"] == "train":
            average = SMOOTHING * average + (1 - SMOOTHING) * record["loss"]
            weight = SMOOTHING * weight + (1 - SMOOTHING)
    return average / weight if weight else math.nan
