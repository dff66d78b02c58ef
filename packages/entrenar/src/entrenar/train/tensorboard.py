"""`TensorBoardLogger`: ``training.report_to: [tensorboard]``, the scalars of ``metrics.jsonl`` as TensorBoard events.

Each train record becomes one event at its step with the tags ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``,
``tokens``, ``epoch`` and ``parts/<name>`` for each part of the loss; each eval record one with ``eval_loss``,
``eval_perplexity``, ``eval_token_accuracy``, ``eval_tokens`` (and ``eval_kl_to_teacher`` with distillation): the
names of ``metrics.jsonl``'s keys. The files go to ``<output_dir>/tensorboard/`` (`aprender.format.tfevents`, no
tensorboard package needed); ``tensorboard --logdir <output_dir>/tensorboard`` shows them.

A resumed run opens a new file whose first event tells TensorBoard to hide what the interrupted run logged after
the checkpoint it resumes from (``purge_step``), so the curves are the resumed run's, as ``metrics.jsonl`` is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from aprender.format.tfevents import EventWriter
from entrenar.train.callbacks import ClosingCallback
from entrenar.train.records import EvalRecord, TrainRecord

if TYPE_CHECKING:
    from entrenar.train.loop import Trainer

__all__ = ["TENSORBOARD_DIR", "TensorBoardLogger", "train_scalars"]

TENSORBOARD_DIR = "tensorboard"
"""The event files' folder inside the output folder."""


def train_scalars(record: TrainRecord) -> dict[str, float]:
    """The tags and values of a train record (module docstring)."""
    scalars = {key: float(record[key]) for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens", "epoch")}
    return scalars | {f"parts/{name}": float(value) for name, value in record.get("parts", {}).items()}


class TensorBoardLogger(ClosingCallback):
    """Writes every ``metrics.jsonl`` record as TensorBoard scalars (module docstring).

    Args:
        log_dir: The event files' folder.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self._writer: EventWriter | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        """Open a new event file (a resumed run's hides the steps after its checkpoint)."""
        step = trainer.state.step
        self._writer = EventWriter(self.log_dir, purge_step=step + 1 if step else None)

    def on_log(self, trainer: Trainer, record: TrainRecord) -> None:
        """The train record's scalars."""
        assert self._writer is not None
        self._writer.add_scalars(train_scalars(record), step=record["step"])
        self._writer.flush()

    def on_evaluate(self, trainer: Trainer, record: EvalRecord) -> None:
        """The eval record's scalars."""
        assert self._writer is not None
        scalars = {key: float(value) for key, value in record.items() if isinstance(value, int | float)}
        scalars = {key: value for key, value in scalars.items() if key.startswith("eval_")}
        self._writer.add_scalars(scalars, step=record["step"])
        self._writer.flush()

    def close(self) -> None:
        """Close the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
