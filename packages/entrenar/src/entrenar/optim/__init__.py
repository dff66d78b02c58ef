"""Optimizers, gradient clipping, parameter groups and learning-rate schedules.

A typical setup::

    groups = build_param_groups(model, weight_decay=0.01, lr=2e-4, lora_plus_ratio=16)
    optimizer = build_optimizer("adamw", groups, betas=(0.9, 0.999))
    scheduler = build_scheduler("cosine", optimizer, warmup_steps=100, total_steps=1000, min_lr_ratio=0.1)
    for batch in batches:
        loss(model, batch).backward()
        grad_norm = clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

Every optimizer is a `torch.optim.Optimizer` written with multi-tensor ``torch._foreach_*`` ops;
``state_dict`` / ``load_state_dict`` resume training exactly.
"""

from entrenar.optim.adam import Adam, AdamW
from entrenar.optim.adamw8bit import AdamW8bit, dequantize_blockwise, dynamic_map, quantize_blockwise
from entrenar.optim.clipping import clip_grad_norm
from entrenar.optim.groups import NO_DECAY_NAMES, build_param_groups, decays
from entrenar.optim.registry import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from entrenar.optim.schedulers import (
    constant_schedule,
    cosine_schedule,
    inverse_sqrt_schedule,
    linear_schedule,
    step_schedule,
)
from entrenar.optim.sgd import SGD

__all__ = [
    "NO_DECAY_NAMES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "SGD",
    "Adam",
    "AdamW",
    "AdamW8bit",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "clip_grad_norm",
    "constant_schedule",
    "cosine_schedule",
    "decays",
    "dequantize_blockwise",
    "dynamic_map",
    "inverse_sqrt_schedule",
    "linear_schedule",
    "quantize_blockwise",
    "step_schedule",
]
