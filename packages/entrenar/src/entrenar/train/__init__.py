"""Training: the loop, checkpoints with exact resume, evaluation, callbacks and the output folder.

Typical use (what ``entrenar train config.yaml`` does)::

    cfg = load_config("config.yaml")
    result = run_training(cfg)              # resumes from <output_dir>/checkpoints when it can
    result.state.step, result.output_dir

Pieces: `build_run` (config -> model, tokenizer, data, optimizer, schedule, in `RunBuilder`'s steps),
`Trainer` (the loop), `CausalLMLoss` (chunked cross-entropy over the LM head, an `aprender.loss.Loss`), `evaluate`,
callbacks (`MetricsLogger`, `CheckpointSaver`, `EarlyStopping`, `ProgressDisplay`), checkpoints
(`save_checkpoint`, `load_checkpoint`, `latest_checkpoint`), outputs (`write_outputs`) and size
estimates (`meta_model`, `count_parameters`, `estimate_memory`).
"""

from entrenar.errors import TrainingInterrupted
from entrenar.train.build import BuildOrderError, RunBuilder, TrainingRun, build_run, build_teacher_cache
from entrenar.train.callbacks import (
    Callback,
    CheckpointSaver,
    EarlyStopping,
    MetricsLogger,
    ProgressDisplay,
)
from entrenar.train.checkpoint import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from entrenar.train.estimate import MemoryEstimate, ParameterCounts, count_parameters, estimate_memory, meta_model
from entrenar.train.evaluate import EvalMetrics, evaluate
from entrenar.train.loop import Trainer
from entrenar.train.loss import CausalLMLoss
from entrenar.train.outputs import write_outputs
from entrenar.train.run import TrainResult, dry_run, run_training
from entrenar.train.setup import StepPlan, build_model, plan_steps, resolve_model_dir
from entrenar.train.state import TrainState

__all__ = [
    "BuildOrderError",
    "Callback",
    "CausalLMLoss",
    "Checkpoint",
    "CheckpointSaver",
    "EarlyStopping",
    "EvalMetrics",
    "MemoryEstimate",
    "MetricsLogger",
    "ParameterCounts",
    "ProgressDisplay",
    "RunBuilder",
    "StepPlan",
    "TrainResult",
    "TrainState",
    "Trainer",
    "TrainingInterrupted",
    "TrainingRun",
    "build_model",
    "build_run",
    "build_teacher_cache",
    "capture_rng_state",
    "count_parameters",
    "dry_run",
    "estimate_memory",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "meta_model",
    "plan_steps",
    "resolve_model_dir",
    "restore_rng_state",
    "run_training",
    "save_checkpoint",
    "write_outputs",
]
