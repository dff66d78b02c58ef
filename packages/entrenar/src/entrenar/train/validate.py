"""`validate_run`: check a config against its model and data without loading weights or training.

What is checked, in order: the base model's ``config.json`` (supported architecture), its tokenizer,
the whole dataset (read, format detection, every record, tokenization with the chat template and the
label mask, the validation split), the LoRA targets against the architecture (on a ``meta`` model), and
that the learning-rate warmup ends before the run does. A Hub model contributes only its config and
tokenizer files to the download.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from aprender.text import Tokenizer
from entrenar.config import TrainConfig
from entrenar.data import Dataset
from entrenar.models import ModelConfig, read_config
from entrenar.train.estimate import ParameterCounts, count_parameters, meta_model
from entrenar.train.setup import StepPlan, check_schedule, load_data, plan_steps, resolve_model_dir

__all__ = ["RunReport", "validate_run"]


@dataclass(frozen=True)
class RunReport:
    """What `validate_run` found.

    Attributes:
        model_dir: The model's local folder (config and tokenizer files).
        model_config: The architecture.
        train_data: The training samples.
        val_data: The validation samples, or None.
        plan: The run's length.
        parameters: Total and trainable parameter counts.
    """

    model_dir: Path
    model_config: ModelConfig
    train_data: Dataset
    val_data: Dataset | None
    plan: StepPlan
    parameters: ParameterCounts

    def describe(self) -> list[str]:
        """Human-readable summary lines."""
        mc, train = self.model_config, self.train_data
        lines = [
            f"model: {mc.model_type}, {mc.num_layers} layers, hidden {mc.hidden_size}, {mc.num_heads} heads "
            f"({mc.num_kv_heads} kv), vocab {mc.vocab_size}; {self.parameters.trainable:,} of "
            f"{self.parameters.total:,} parameters train",
            _describe_data("train", train),
        ]
        if self.val_data is not None:
            lines.append(_describe_data("validation", self.val_data))
        lines.append(f"plan: {self.plan.total_steps} optimizer steps ({self.plan.batches_per_epoch} batches per epoch)")
        return lines


def _describe_data(name: str, data: Dataset) -> str:
    stats = data.stats
    packed = f", packed into {len(data)} rows" if data.packing else ""
    notes = [f"{count} {what}" for count, what in ((stats.truncated, "truncated"), (stats.dropped, "dropped"))]
    notes += [f"{stats.invalid} invalid skipped"] if stats.invalid else []
    return (
        f"{name}: {len(data.samples)} samples ({stats.format}) from {len(stats.files)} file(s){packed}; "
        f"{data.n_target_tokens:,} target tokens; {', '.join(notes)}"
    )


def validate_run(cfg: TrainConfig) -> RunReport:
    """Check everything a run needs except the weights (module docstring).

    Args:
        cfg: The validated config.

    Returns:
        The report.

    Raises:
        AprenderError: The first problem found (model config, tokenizer, data record, LoRA target, schedule).
    """
    model_dir = resolve_model_dir(cfg.model, weights=False)
    model_config = read_config(model_dir)
    tokenizer = Tokenizer.from_dir(model_dir)
    train, val = load_data(cfg, tokenizer)
    counts = count_parameters(meta_model(cfg, model_config))
    plan = plan_steps(cfg.training, math.ceil(len(train) / cfg.data.batch_size))
    check_schedule(cfg, plan)
    return RunReport(model_dir, model_config, train, val, plan, counts)
