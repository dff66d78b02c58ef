"""The steps that build a run, one module each: `model`, `optimization`, `data` (order: `entrenar.train.build`)."""

from entrenar.train.setup.data import load_data
from entrenar.train.setup.model import (
    assemble_model,
    build_model,
    compute_dtype,
    lora_config_of,
    model_source_line,
    read_model_config,
    resolve_model_dir,
    seed_everything,
    select_device,
)
from entrenar.train.setup.optimization import (
    StepPlan,
    build_optimizer_for,
    build_scheduler_for,
    check_schedule,
    plan_steps,
)

__all__ = [
    "StepPlan",
    "assemble_model",
    "build_model",
    "build_optimizer_for",
    "build_scheduler_for",
    "check_schedule",
    "compute_dtype",
    "load_data",
    "lora_config_of",
    "model_source_line",
    "plan_steps",
    "read_model_config",
    "resolve_model_dir",
    "seed_everything",
    "select_device",
]
