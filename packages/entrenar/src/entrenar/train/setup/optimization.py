"""The optimization step of a run: the step plan, the optimizer and the learning-rate schedule.

- ``optimizer``/``scheduler``: `entrenar.optim` registries; parameter groups exempt norms, biases and
  embeddings from weight decay and apply LoRA+ (https://arxiv.org/abs/2402.12354).
- Steps: a step is ``training.grad_accum`` micro-batches, taken back to back across epoch boundaries; the
  run takes ``ceil(epochs * batches_per_epoch / grad_accum)`` steps, or ``training.max_steps`` when that
  is smaller (its last step may have fewer micro-batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from entrenar.config import TrainConfig, TrainingSection
from entrenar.errors import ConfigError
from entrenar.optim import build_optimizer, build_param_groups, build_scheduler

__all__ = ["StepPlan", "build_optimizer_for", "build_scheduler_for", "check_schedule", "plan_steps"]


def build_optimizer_for(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The ``optimizer:`` section's optimizer over the model's trainable parameters.

    Args:
        cfg: The config.
        model: The model (after `build_model`).

    Returns:
        The optimizer, with decay/no-decay (and LoRA+) parameter groups.
    """
    section = cfg.optimizer
    groups = build_param_groups(model, section.weight_decay, lr=section.lr, lora_plus_ratio=section.loraplus_lr_ratio)
    kwargs: dict[str, Any] = {"lr": section.lr, "weight_decay": section.weight_decay}
    if section.name == "sgd":
        kwargs["momentum"] = section.momentum
    else:
        kwargs.update(betas=tuple(section.betas or (0.9, 0.999)), eps=section.eps)
    return build_optimizer(section.name, groups, **kwargs)


@dataclass(frozen=True)
class StepPlan:
    """How many steps a run takes.

    Attributes:
        batches_per_epoch: Micro-batches in one pass over the training data.
        total_micro_batches: Micro-batches the run consumes.
        total_steps: Optimizer steps the run takes.
    """

    batches_per_epoch: int
    total_micro_batches: int
    total_steps: int


def plan_steps(training: TrainingSection, batches_per_epoch: int) -> StepPlan:
    """The run's length from ``training.epochs``, ``max_steps`` and ``grad_accum`` (module docstring).

    Args:
        training: The ``training:`` section.
        batches_per_epoch: Micro-batches per epoch (``len(DataLoader)``), >= 1.

    Returns:
        The plan.
    """
    micro = training.epochs * batches_per_epoch
    if training.max_steps is not None:
        micro = min(micro, training.max_steps * training.grad_accum)
    return StepPlan(batches_per_epoch, micro, math.ceil(micro / training.grad_accum))


def check_schedule(cfg: TrainConfig, plan: StepPlan) -> None:
    """Check that a decaying schedule's warmup ends before the run does (the config alone cannot tell).

    Args:
        cfg: The config (``scheduler``).
        plan: The run's length.

    Raises:
        ConfigError: ``linear``/``cosine`` with ``warmup_steps`` >= the planned steps.
    """
    section = cfg.scheduler
    if section.name in ("linear", "cosine") and section.warmup_steps >= plan.total_steps:
        raise ConfigError(
            f"scheduler.warmup_steps: {section.warmup_steps} must be below the run's {plan.total_steps} "
            f"optimizer steps for a {section.name} schedule; lower it or train longer"
        )


def build_scheduler_for(cfg: TrainConfig, optimizer: torch.optim.Optimizer, plan: StepPlan) -> LambdaLR:
    """The ``scheduler:`` section's learning-rate schedule over the planned steps.

    Args:
        cfg: The config.
        optimizer: The optimizer.
        plan: The run's length (`plan_steps`).

    Returns:
        The scheduler.

    Raises:
        ConfigError: See `check_schedule`.
    """
    check_schedule(cfg, plan)
    section = cfg.scheduler
    kwargs: dict[str, Any] = {"warmup_steps": section.warmup_steps}
    if section.name in ("linear", "cosine"):
        kwargs.update(total_steps=plan.total_steps, min_lr_ratio=section.min_lr_ratio)
    elif section.name == "step":
        kwargs.update(step_size=section.step_size, gamma=section.gamma)
    return build_scheduler(section.name, optimizer, **kwargs)
