"""`TrainState`: the loop's counters and metrics, saved in every checkpoint as JSON.

Everything the loop knows that is not a tensor lives here, so a resumed run continues from exactly the
values an uninterrupted one would have: the step, the data consumed, the metric records written so far
(``metrics.jsonl`` is rewritten from them on resume, dropping lines logged after the checkpoint), the
partial logging and epoch windows and the early-stopping counters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from entrenar.train.records import EvalRecord, MetricRecord, TrainRecord

__all__ = ["LogWindow", "TrainState"]


@dataclass
class LogWindow:
    """Sums over the optimizer steps since the last ``metrics.jsonl`` line.

    Attributes:
        loss_sum: Sum over steps of (step loss x step target tokens).
        target_tokens: Target tokens of those steps.
        input_tokens: Non-padding input tokens of those steps (for tokens/s).
        steps: Steps in the window.
        part_sums: For each named part of the loss, the sum over steps of (part x step target tokens).
    """

    loss_sum: float = 0.0
    target_tokens: int = 0
    input_tokens: int = 0
    steps: int = 0
    part_sums: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, target_tokens: int, input_tokens: int, parts: Mapping[str, float]) -> None:
        """Count one step: its mean loss (and parts) per target token, and its tokens."""
        self.loss_sum += loss * target_tokens
        self.target_tokens += target_tokens
        self.input_tokens += input_tokens
        self.steps += 1
        for name, value in parts.items():
            self.part_sums[name] = self.part_sums.get(name, 0.0) + value * target_tokens

    @property
    def loss(self) -> float:
        """The token-weighted mean loss of the window (NaN when empty)."""
        return self.loss_sum / self.target_tokens if self.target_tokens else math.nan

    @property
    def parts(self) -> dict[str, float]:
        """The token-weighted mean of each part of the loss over the window (NaN when empty)."""
        return {
            name: total / self.target_tokens if self.target_tokens else math.nan
            for name, total in self.part_sums.items()
        }


@dataclass
class TrainState:
    """Counters and metrics of one training run.

    Attributes:
        total_steps: Optimizer steps the run will take.
        batches_per_epoch: Micro-batches in one pass over the training data.
        step: Optimizer steps taken.
        micro_batches: Micro-batches consumed (the fractional epoch is this over `batches_per_epoch`).
        target_tokens: Tokens trained on (labels that count in the loss).
        input_tokens: Non-padding tokens fed to the model.
        loss: Loss of the last step (mean per target token), None before the first.
        lr: Learning rate of the last step (first parameter group).
        grad_norm: Global gradient norm of the last step, before clipping.
        elapsed: Seconds spent training over all sessions, up to the last update.
        window: The steps not yet logged.
        epoch_window: The steps since the last epoch summary.
        epochs_summarised: Epochs whose summary was given (`entrenar.train.records.EpochSummary`).
        history: Every record written to ``metrics.jsonl`` (train and eval lines), in order.
        best_train_loss: Lowest logged training loss.
        best_eval_loss: Lowest evaluation loss, with `best_eval_step`.
        best_eval_step: The step of `best_eval_loss`.
        evals_without_improvement: Evaluations in a row that did not lower `best_eval_loss`.
        stop_reason: Why the run ended early (``"early_stopping"``), None otherwise.
    """

    total_steps: int
    batches_per_epoch: int
    step: int = 0
    micro_batches: int = 0
    target_tokens: int = 0
    input_tokens: int = 0
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    elapsed: float = 0.0
    window: LogWindow = field(default_factory=LogWindow)
    epoch_window: LogWindow = field(default_factory=LogWindow)
    epochs_summarised: int = 0
    history: list[MetricRecord] = field(default_factory=list)
    best_train_loss: float | None = None
    best_eval_loss: float | None = None
    best_eval_step: int | None = None
    evals_without_improvement: int = 0
    stop_reason: str | None = None

    @property
    def epoch(self) -> float:
        """Passes over the training data so far (fractional)."""
        return self.micro_batches / self.batches_per_epoch

    @property
    def done(self) -> bool:
        """Whether the loop should stop: all steps taken, or stopped early."""
        return self.step >= self.total_steps or self.stop_reason is not None

    def add_step(
        self,
        loss: float,
        lr: float,
        grad_norm: float,
        micro_batches: int,
        target_tokens: int,
        input_tokens: int,
        parts: Mapping[str, float] | None = None,
    ) -> None:
        """Count one optimizer step into the totals and the logging window.

        Args:
            loss: The step's mean loss per target token.
            lr: The learning rate it used.
            grad_norm: Its global gradient norm before clipping.
            micro_batches: Micro-batches it consumed.
            target_tokens: Its target tokens.
            input_tokens: Its non-padding input tokens.
            parts: Its loss's named parts, each a mean per target token.
        """
        self.step += 1
        self.micro_batches += micro_batches
        self.target_tokens += target_tokens
        self.input_tokens += input_tokens
        self.loss, self.lr, self.grad_norm = loss, lr, grad_norm
        for window in (self.window, self.epoch_window):
            window.add(loss, target_tokens, input_tokens, parts or {})

    def last_record(self, kind: str) -> MetricRecord | None:
        """The newest ``metrics.jsonl`` record of a kind (``"train"`` or ``"eval"``), or None."""
        return next((record for record in reversed(self.history) if record["kind"] == kind), None)

    def last_train(self) -> TrainRecord | None:
        """The newest training record, or None."""
        return cast(TrainRecord | None, self.last_record("train"))

    def last_eval(self) -> EvalRecord | None:
        """The newest evaluation record, or None."""
        return cast(EvalRecord | None, self.last_record("eval"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (what a checkpoint stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Rebuild a state from `to_dict` output.

        Args:
            data: A `to_dict` result (e.g. read back from a checkpoint).

        Returns:
            The state.
        """
        values = dict(data)
        values["window"] = LogWindow(**values["window"])
        # checkpoints from before epoch summaries: the next summary covers the steps after the resume
        values["epoch_window"] = LogWindow(**values.get("epoch_window", {}))
        values.setdefault("epochs_summarised", values["micro_batches"] // values["batches_per_epoch"])
        return cls(**values)
