"""`run_training` and `dry_run`: what ``entrenar train`` does with a validated config.

Resuming: when ``<output_dir>/checkpoints/latest`` names a checkpoint, the run continues from it unless
``resume=False`` (which deletes the checkpoints and starts over); ``resume=True`` insists on a checkpoint.
Checkpoints are only deleted once the new run is built, so a config error never costs a checkpoint.
Then the temp files that a killed run's atomic writes left (in the output folder, ``checkpoints/`` and its
``step-N`` folders) are removed; files of other names stay.

Publishing: with a ``publish:`` section the repo id, token and write access are checked before anything
is built (`entrenar.publish.preflight`), so a typo or a missing token fails in seconds, not after training;
the finished output folder is then published as the section says (`entrenar.publish.publish_output`).

What the console shows, in order: where the model comes from (``Downloading ns/name...``, ``[cached]``),
``Loading model weights (SafeTensors)...``, ``Applying QLoRA adapters (rank=64)...``, the run's summary
(`describe_run`), progress with one ``Epoch 1/3: loss=2.341, lr=2.0e-4`` line per epoch
(`entrenar.train.callbacks.ProgressDisplay`), ``Saved: <path> (<size>)`` for each file of the output
folder, then with ``publish:`` ``Auto-publishing to <repo>...``, the publishing steps and
``Published: <url>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from aprender.atomic import remove_temp_files
from entrenar.config import TrainConfig, write_resolved_config
from entrenar.constants import CHECKPOINTS_DIR, FINAL_MODEL_NAME, METRICS_NAME
from entrenar.display import Report, human_size, shown_path
from entrenar.errors import CheckpointError
from entrenar.monitor.state import RUN_STATE_NAME
from entrenar.train.build import TrainingRun, build_run
from entrenar.train.callbacks import (
    Callback,
    CheckpointSaver,
    EarlyStopping,
    MetricsLogger,
    ProgressDisplay,
)
from entrenar.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    remove_interrupted_saves,
)
from entrenar.train.estimate import count_parameters
from entrenar.train.loop import Trainer
from entrenar.train.outputs import write_outputs
from entrenar.train.run_state import RunStateWriter
from entrenar.train.state import TrainState
from entrenar.train.tensorboard import TENSORBOARD_DIR, TensorBoardLogger

__all__ = ["TrainResult", "default_callbacks", "describe_run", "dry_run", "run_training"]


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced.

    Attributes:
        output_dir: The output folder.
        state: The final training state.
        files: The model, tokenizer and summary files written at the end.
        resumed_from: The checkpoint the run continued from, or None.
        run: The run's objects (the trained model is ``run.model``).
        published_url: The Hub repo's URL when the config has a ``publish:`` section, else None.
    """

    output_dir: Path
    state: TrainState
    files: list[Path]
    resumed_from: Path | None
    run: TrainingRun
    published_url: str | None = None


def default_callbacks(cfg: TrainConfig, console: Console) -> list[Callback]:
    """``run_state.json``, ``metrics.jsonl``, TensorBoard (``training.report_to``), early stopping (when configured),
    checkpoints, progress: in that order.

    Args:
        cfg: The config (``training.*``).
        console: Where progress goes.

    Returns:
        The callbacks.
    """
    training = cfg.training
    callbacks: list[Callback] = [
        RunStateWriter(training.output_dir),
        MetricsLogger(Path(training.output_dir) / METRICS_NAME),
    ]
    if "tensorboard" in training.report_to:
        callbacks.append(TensorBoardLogger(Path(training.output_dir) / TENSORBOARD_DIR))
    if training.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(training.early_stopping_patience))
    callbacks += [CheckpointSaver(training.save_every), ProgressDisplay(console)]
    return callbacks


def describe_run(run: TrainingRun) -> str:
    """The start banner: what trains, on what data, for how long, where and in what precision, and the memory
    estimate, one aspect per line (the first line alone says what the run is)."""
    from entrenar.constants import TECHNIQUE_NAMES
    from entrenar.train.estimate import estimate_memory

    cfg, counts, plan = run.config, count_parameters(run.model), run.plan
    techniques = " + ".join(TECHNIQUE_NAMES.get(t, t) for t in cfg.techniques)
    distill = cfg.distill
    taught = (
        ""
        if distill is None
        else f" distilled from {', '.join(t.path for t in distill.teacher_models)} ({distill.loss}, "
        f"T={distill.temperature:g}, alpha={distill.alpha:g})"
    )
    val = "" if run.val_data is None else f", {len(run.val_data.samples)} validation samples"
    training = cfg.training
    epochs = plan.total_micro_batches / plan.batches_per_epoch
    sequences = cfg.data.batch_size * training.grad_accum
    dtype = str(run.precision.dtype).removeprefix("torch.")
    autocast = "autocast" if run.precision.uses_autocast else "no autocast"
    scaling = ", loss scaling" if run.precision.uses_grad_scaler else ""
    memory = estimate_memory(cfg, run.model.config, run.model)
    parts = (
        f"weights {human_size(memory.weights)}, gradients {human_size(memory.gradients)}, optimizer "
        f"{human_size(memory.optimizer)}, activations {human_size(memory.activations)}"
    )
    return "\n".join(
        [
            f"{cfg.method} fine-tune{taught} of {cfg.model.path} on {run.device.type}: {counts.trainable:,} of "
            f"{counts.total:,} parameters train ({counts.percent:.2f}%); {len(run.train_data.samples)} training "
            f"samples ({run.train_data.stats.format}){val}; {plan.total_steps} steps of {training.grad_accum} x "
            f"{cfg.data.batch_size} x {cfg.data.seq_len} tokens",
            f"  techniques  {techniques}",
            f"  schedule    {epochs:.3g} epochs of {plan.batches_per_epoch} batches, {plan.total_steps} optimizer "
            f"steps of {cfg.data.batch_size} (batch) x {training.grad_accum} (accumulation) x 1 (process) = "
            f"{sequences} sequences of up to {cfg.data.seq_len} tokens",
            f"  device      {run.device}, {dtype} ({autocast}{scaling})",
            f"  memory      about {human_size(memory.total)} estimated ({parts})",
        ]
    )


def _printer(console: Console) -> Report:
    """Plain lines on the console (no markup: ``[cached]`` stays; no highlighting; never wrapped)."""

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    return say


def _preflight(cfg: TrainConfig, say: Report) -> None:
    """With a ``publish:`` section: check the repo id, the token and write access now, before training."""
    if cfg.publish is None:
        return
    from entrenar.publish import preflight  # the Hub client is needed only when publishing

    account = preflight(cfg.publish.repo, cfg.publish.private, cfg.publish.endpoint)
    say(f"will publish to {cfg.publish.repo} as {account.user} ({account.token_source})")


def _resume_point(root: Path, resume: bool | None) -> Path | None:
    if resume is False:
        return None
    latest = latest_checkpoint(root)
    if latest is None and resume:
        raise CheckpointError(f"--resume: no checkpoint in {root}; run without --resume to start training")
    return latest


def run_training(
    cfg: TrainConfig,
    *,
    resume: bool | None = None,
    console: Console | None = None,
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train as the config says and write the output folder.

    Args:
        cfg: The validated config.
        resume: True: continue from the latest checkpoint (error if none); False: delete checkpoints and
            start over; None: continue when a checkpoint exists.
        console: Where messages and progress go (default: stdout).
        callbacks: Extra callbacks, called after the default ones.

    Returns:
        The result.

    Raises:
        AprenderError: A user-caused problem (config, data, model, checkpoint; Hub access or upload when publishing).
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was saved.
    """
    console = console or Console()
    say = _printer(console)
    out = Path(cfg.training.output_dir)
    root = out / CHECKPOINTS_DIR
    start_from = _resume_point(root, resume)
    _preflight(cfg, say)
    run = build_run(cfg, report=say)
    remove_temp_files(out)
    remove_interrupted_saves(root)
    say(describe_run(run))
    trainer = Trainer(run, callbacks=default_callbacks(cfg, console) + list(callbacks or []), checkpoint_dir=root)
    if start_from is not None:
        trainer.restore(load_checkpoint(start_from))
        say(f"resuming from {start_from} (step {trainer.state.step}); pass --no-resume to start over")
    else:
        remove_checkpoints(root)
        (out / FINAL_MODEL_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    resolved = write_resolved_config(cfg, out)
    state = trainer.fit()
    files = write_outputs(run, state, out)
    say(f"Trained {state.step} steps in {state.elapsed:.1f}s")
    for path in [*files, resolved, out / METRICS_NAME, out / RUN_STATE_NAME]:
        say(f"Saved: {shown_path(path)} ({human_size(path.stat().st_size)})")
    url = None
    if cfg.publish is not None:
        from entrenar.publish import publish_output

        say(f"Auto-publishing to {cfg.publish.repo}...")
        url = publish_output(out, cfg.publish, report=say).url
    return TrainResult(output_dir=out, state=state, files=files, resumed_from=start_from, run=run, published_url=url)


def dry_run(cfg: TrainConfig, *, console: Console | None = None) -> float:
    """Build everything (and check publishing access) and take one optimizer step, writing nothing.

    No output folder, no checkpoint, no upload.

    Args:
        cfg: The validated config.
        console: Where the summary goes (default: stdout).

    Returns:
        The loss of the step.

    Raises:
        AprenderError: A user-caused problem (config, data, model, Hub access when publishing).
    """
    say = _printer(console or Console())
    _preflight(cfg, say)
    run = build_run(cfg, report=say)
    say(describe_run(run))
    loss = Trainer(run).train_step()
    say(f"dry run: one step took loss {loss:.4f}; nothing was written")
    return loss
