"""The `Trainer`: the optimizer-step loop, evaluation, checkpoints with exact resume, and clean interrupts.

One step: take ``grad_accum`` micro-batches, accumulate their gradients normalised by the step's target
tokens (`entrenar.autograd.GradientEngine`), clip, step the optimizer and the schedule. Then, when due, a
``metrics.jsonl`` record (every ``training.log_every`` steps and at the last one), an evaluation
(every ``training.eval_every`` steps and at the last one, with validation data) and an epoch summary
(`entrenar.train.records.EpochSummary`, when the step's micro-batches finish an epoch); then the
callbacks' ``on_step_end`` (checkpoints, progress). A run that ends mid-epoch (``max_steps``, early
stopping) gives that epoch a last, partial summary. The loss comes in named parts (``ce`` ...), each logged.

Exact resume: a checkpoint holds the trainable weights, optimizer, schedule, loss scaler, every RNG
state, the data position, the `TrainState` and each stateful callback's state; `Trainer.restore` puts
them all back, so the steps after a resume are bit for bit those of an uninterrupted run (same device and
thread count).

SIGINT and SIGTERM: the first one lets the current step finish, saves a checkpoint and raises
`TrainingInterrupted`; a second SIGINT interrupts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
from torch import Tensor

from entrenar.config import config_to_dict
from entrenar.errors import CheckpointError, DataError, TrainingInterrupted
from entrenar.optim import clip_grad_norm
from entrenar.train.build import TrainingRun
from entrenar.train.callbacks import Callback
from entrenar.train.checkpoint import Checkpoint, capture_rng_state, restore_rng_state, save_checkpoint
from entrenar.train.evaluate import EvalMetrics, evaluate
from entrenar.train.records import EpochSummary, EvalRecord, SampleRecord, TrainRecord
from entrenar.train.samples import sample_answers
from entrenar.train.state import LogWindow, TrainState

__all__ = ["RESUMABLE_KEYS", "Trainer"]

RESUMABLE_KEYS = frozenset(
    {
        "training.epochs",
        "training.max_steps",
        "training.eval_every",
        "training.save_every",
        "training.keep_checkpoints",
        "training.log_every",
        "training.early_stopping_patience",
    }
)
"""Config keys that may differ between a checkpoint and the run resuming from it (how long to go on, how
often to log, evaluate and save); any other difference would make the resumed run a different one."""


class _StopSignals:
    """Within the block, the first SIGINT/SIGTERM is recorded instead of killing the process (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        self._restore()  # a second signal acts as it would without us

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = []
    for section in sorted(saved.keys() | current.keys()):
        old, new = saved.get(section) or {}, current.get(section) or {}
        if (section in saved) != (section in current):
            keys.append(section)
            continue
        keys.extend(f"{section}.{key}" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key))
    return [key for key in keys if key not in RESUMABLE_KEYS and key != "publish" and not key.startswith("publish.")]


class Trainer:
    """Runs a `TrainingRun` step by step.

    Args:
        run: The built run (`entrenar.train.build_run`).
        callbacks: Called around each step, in order (see `entrenar.train.callbacks`), after the callbacks of the
            run's techniques (`TrainingRun.technique_callbacks`: pruning masks, the QAT switch), which every trainer
            of the run applies.
        checkpoint_dir: The ``checkpoints`` folder; None: `save_checkpoint` refuses.
    """

    def __init__(
        self, run: TrainingRun, *, callbacks: Sequence[Callback] = (), checkpoint_dir: str | Path | None = None
    ) -> None:
        self.run = run
        self.callbacks = [*run.technique_callbacks(), *callbacks]
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.state = TrainState(total_steps=run.plan.total_steps, batches_per_epoch=run.plan.batches_per_epoch)
        self._session_start = time.perf_counter()
        self._elapsed_before = 0.0
        self._window_start = time.perf_counter()
        self._stream: Iterator[dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------------------------------ loop

    def fit(self) -> TrainState:
        """Train until the planned steps are taken or early stopping ends the run.

        Returns:
            The final state.

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint of the last finished step was saved.
            NonFiniteError: The loss or a gradient became inf/NaN (weights unchanged by that step).
        """
        self._session_start = self._window_start = time.perf_counter()
        self._emit("on_train_begin")
        try:
            if self.state.step == 0 and not self.state.history:  # a fresh run: the base model, once
                if self.run.val_data is not None:
                    self._evaluate(base=True)
                self._sample()
            with _StopSignals() as signals:
                while not self.state.done:
                    self.train_step()
                    self._after_step()
                    if signals.received is not None:
                        self._interrupted(signals.received)
        except TrainingInterrupted:
            raise
        except Exception as exc:
            self._emit("on_error", exc)
            raise
        if self.state.epoch_window.steps:  # ended mid-epoch; a longer run resumed from here goes on counting it
            self._emit("on_epoch_end", self._epoch_summary(self.state.epochs_summarised + 1))
        self._update_elapsed()
        self._emit("on_train_end")
        return self.state

    def train_step(self) -> float:
        """Take one optimizer step over the next micro-batches.

        Returns:
            The step's loss (mean per target token).
        """
        state, run = self.state, self.run
        count = min(run.config.training.grad_accum, run.plan.total_micro_batches - state.micro_batches)
        batches = [self._to_device(next(self._batches())) for _ in range(count)]
        lr = float(run.optimizer.param_groups[0]["lr"])
        run.loss.at_step(state.step)
        result = run.engine.backward(batches, run.loss.loss_step)
        clip = run.config.training.grad_clip
        outcome = run.engine.step(
            run.optimizer,
            step=state.step + 1,
            loss=result.loss,
            clip_grad=None if clip is None else lambda params: clip_grad_norm(params, clip),
        )
        self._emit("on_optimizer_step")
        run.scheduler.step()
        inputs = sum(int(batch["attention_mask"].sum()) for batch in batches)
        state.add_step(result.loss, lr, outcome.grad_norm, len(batches), result.num_tokens, inputs, result.parts)
        return result.loss

    def _after_step(self) -> None:
        training, state = self.run.config.training, self.state
        last = state.step >= state.total_steps
        if state.step % training.log_every == 0 or last:
            self._log()
        if self.run.val_data is not None and (state.step % training.eval_every == 0 or last):
            self._evaluate()
        if (training.sample_every is not None and state.step % training.sample_every == 0) or last:
            self._sample()
        finished = state.micro_batches // state.batches_per_epoch
        if finished > state.epochs_summarised:
            summary = self._epoch_summary(finished)
            state.epoch_window, state.epochs_summarised = LogWindow(), finished
            self._emit("on_epoch_end", summary)
        self._emit("on_step_end")

    # ------------------------------------------------------------------------------------ records

    def _log(self) -> None:
        state, window = self.state, self.state.window
        now = time.perf_counter()
        loss = window.loss
        assert state.lr is not None and state.grad_norm is not None
        record: TrainRecord = {
            "kind": "train",
            "step": state.step,
            "epoch": round(state.epoch, 6),
            "loss": loss,
            "parts": window.parts,
            "lr": state.lr,
            "grad_norm": state.grad_norm,
            "tokens_per_s": window.input_tokens / max(now - self._window_start, 1e-9),
            "tokens": state.input_tokens,
        }
        state.window, self._window_start = LogWindow(), now
        state.best_train_loss = loss if state.best_train_loss is None else min(state.best_train_loss, loss)
        state.history.append(record)
        self._emit("on_log", record)

    def _epoch_summary(self, epoch: int) -> EpochSummary:
        """The summary of the steps since the last one, ending in `epoch` (the state is left as it is)."""
        state, plan = self.state, self.run.plan
        assert state.lr is not None
        covered = min(state.micro_batches - (epoch - 1) * plan.batches_per_epoch, plan.batches_per_epoch)
        return {
            "epoch": epoch,
            "epochs": -(-plan.total_micro_batches // plan.batches_per_epoch),
            "steps": state.epoch_window.steps,
            "loss": state.epoch_window.loss,
            "lr": state.lr,
            "complete": covered / plan.batches_per_epoch,
        }

    def evaluate(self) -> EvalMetrics:
        """Loss, perplexity and token accuracy on the validation data.

        Raises:
            DataError: The run has no validation data.
        """
        run = self.run
        if run.val_data is None:
            raise DataError("no validation data; set data.val_path or data.val_split to evaluate")
        return evaluate(
            run.loss, run.val_data, batch_size=run.config.data.batch_size, device=run.device, precision=run.precision
        )

    def _evaluate(self, base: bool = False) -> None:
        """Evaluate, record and tell the callbacks; the `base` evaluation (step 0, before training) is a reference
        that neither best-loss tracking nor early stopping counts."""
        state = self.state
        started = time.perf_counter()
        metrics = self.evaluate()
        self._window_start += time.perf_counter() - started  # evaluation time does not count against tokens/s
        if not base:
            if state.best_eval_loss is None or metrics.loss < state.best_eval_loss:
                state.best_eval_loss, state.best_eval_step = metrics.loss, state.step
                state.evals_without_improvement = 0
            else:
                state.evals_without_improvement += 1
        record: EvalRecord = {
            "kind": "eval",
            "step": state.step,
            "epoch": round(state.epoch, 6),
            "eval_loss": metrics.loss,
            "eval_perplexity": metrics.perplexity,
            "eval_token_accuracy": metrics.token_accuracy,
            "eval_tokens": metrics.tokens,
        }
        if metrics.kl_to_teacher is not None:
            record["eval_kl_to_teacher"] = metrics.kl_to_teacher
        state.history.append(record)
        self._emit("on_evaluate", record)

    def _sample(self) -> None:
        """Greedy answers to ``training.sample_prompts`` (none: nothing), recorded and told to the callbacks."""
        prompts = self.run.config.training.sample_prompts
        if not prompts:
            return
        started = time.perf_counter()
        answers = sample_answers(self.run, prompts)
        self._window_start += time.perf_counter() - started  # as evaluation: not counted against tokens/s
        for prompt, answer in zip(prompts, answers, strict=True):
            record: SampleRecord = {"kind": "sample", "step": self.state.step, "prompt": prompt, "answer": answer}
            self.state.history.append(record)
            self._emit("on_sample", record)

    # ------------------------------------------------------------------------------------ resume

    def save_checkpoint(self) -> Path:
        """Save the current step's checkpoint (and prune old ones).

        Returns:
            Its folder.

        Raises:
            CheckpointError: The trainer has no checkpoint folder.
        """
        if self.checkpoint_dir is None:
            raise CheckpointError("this trainer has no checkpoint folder; pass checkpoint_dir")
        self._update_elapsed()
        run = self.run
        checkpoint = Checkpoint(
            step=self.state.step,
            weights=run.trainable_parameters(),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            scaler=run.engine.scaler.state_dict(),
            rng=capture_rng_state(),
            data=run.loader.state_dict(),
            trainer={"state": self.state.to_dict(), "config": config_to_dict(run.config)},
            callbacks=self._callback_states(),
        )
        return save_checkpoint(self.checkpoint_dir, checkpoint, keep=run.config.training.keep_checkpoints)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: weights, optimizer, schedule, scaler, RNG, data position, state.

        Raises:
            CheckpointError: The checkpoint was made with another config (other than `RESUMABLE_KEYS`) or
                its weights do not fit the model.
            DataError: The data position does not fit the data (other data, batch size or seed).
        """
        run = self.run
        differences = _config_differences(checkpoint.trainer["config"], config_to_dict(run.config))
        if differences:
            raise CheckpointError(
                f"checkpoint step-{checkpoint.step} was trained with another {differences[0]} "
                f"({len(differences)} key(s) differ); restore the config or pass --no-resume to start over"
            )
        self._load_weights(checkpoint.weights, checkpoint.step)
        run.optimizer.load_state_dict(checkpoint.optimizer)
        run.scheduler.load_state_dict(checkpoint.scheduler)
        run.engine.scaler.load_state_dict(checkpoint.scaler)
        run.loader.load_state_dict(checkpoint.data)
        restore_rng_state(checkpoint.rng)
        self._load_callback_states(checkpoint.callbacks, checkpoint.step)
        state = TrainState.from_dict(checkpoint.trainer["state"])
        state.total_steps, state.batches_per_epoch = run.plan.total_steps, run.plan.batches_per_epoch
        self.state, self._elapsed_before, self._stream = state, state.elapsed, None

    def _load_weights(self, weights: dict[str, Tensor], step: int) -> None:
        trainable = self.run.trainable_parameters()
        if trainable.keys() != weights.keys():
            name = sorted(trainable.keys() ^ weights.keys())[0]
            raise CheckpointError(
                f"checkpoint step-{step}: trainable parameter {name!r} is in one of the model and the checkpoint "
                "but not the other; pass --no-resume to start over"
            )
        with torch.no_grad():
            for name, param in trainable.items():
                if param.shape != weights[name].shape:
                    raise CheckpointError(
                        f"checkpoint step-{step}: {name!r} has shape {list(weights[name].shape)}, the model "
                        f"{list(param.shape)}; pass --no-resume to start over"
                    )
                param.copy_(weights[name])

    def _keyed_callbacks(self) -> dict[str, Callback]:
        """Callbacks by state key; a key used twice gets ``#2``, ``#3`` ... in callback order."""
        keyed: dict[str, Callback] = {}
        for callback in self.callbacks:
            key, n = callback.state_key, 1
            while key in keyed:
                n += 1
                key = f"{callback.state_key}#{n}"
            keyed[key] = callback
        return keyed

    def _callback_states(self) -> dict[str, Any]:
        states = {key: callback.state_dict() for key, callback in self._keyed_callbacks().items()}
        return {key: state for key, state in states.items() if state is not None}

    def _load_callback_states(self, saved: dict[str, Any], step: int) -> None:
        for key, callback in self._keyed_callbacks().items():
            if callback.state_dict() is None:
                continue
            if key not in saved:
                raise CheckpointError(
                    f"checkpoint step-{step} holds no state for callback {key}; it was saved by a run without "
                    "it: pass --no-resume to start over"
                )
            callback.load_state_dict(saved[key])

    # ------------------------------------------------------------------------------------ helpers

    def _batches(self) -> Iterator[dict[str, Tensor]]:
        if self._stream is None:
            self._stream = self._endless()
        return self._stream

    def _endless(self) -> Iterator[dict[str, Tensor]]:
        loader = self.run.loader
        while True:
            yield from loader.batches(loader.state_dict()["epoch"])

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: tensor.to(self.run.device, non_blocking=True) for name, tensor in batch.items()}

    def _update_elapsed(self) -> None:
        self.state.elapsed = self._elapsed_before + time.perf_counter() - self._session_start

    def _interrupted(self, signal_name: str) -> None:
        path = self.save_checkpoint()
        self._emit("on_interrupt")
        raise TrainingInterrupted(
            f"stopped by {signal_name} after step {self.state.step}; checkpoint saved to {path}",
            step=self.state.step,
            checkpoint=path,
        )

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
