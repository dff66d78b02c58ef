"""Everything `entrenar init` decides before it writes: the base model, the data, and the proposed values.

`build_plan` runs the checks in order of cost (the method, the data path, the base model's
``config.json``, its tokenizer, then every sample), so any problem is reported before a file is written.

Paths in the config: a Hub repo id is written as given; a local path (the base folder, the data file,
folder or glob) is written relative to the config file's folder (``./data/train.jsonl``) when it lies
inside that folder, so the project folder can be moved or shared as a whole, and absolute otherwise,
so the config works from any directory. The config loader resolves relative paths against the config
file's folder, never the current directory.

The learning rate is the schema default (2e-4, the QLoRA paper's value for LoRA/QLoRA,
https://arxiv.org/abs/2305.14314) except for a full fine-tune, which gets `FULL_FINETUNE_LR` (2e-5):
updating every weight at LoRA's rate quickly destroys what the base model knows.

Warmup: `WARMUP_STEPS` (100) optimizer steps, capped at a tenth of the planned steps (`warmup_steps_for`).
Adam's first updates rest on second-moment estimates from a handful of gradients, and warming up the
rate keeps those noisy steps small (Liu et al. 2019, https://arxiv.org/abs/1908.03265); the cap keeps a
short run from spending most of its steps below the peak rate, and keeps the warmup shorter than the run
(a cosine schedule requires it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from entrenar.config.schema import DataSection, OptimizerSection, TrainingSection
from entrenar.constants import METHODS
from entrenar.data import resolve_data_files
from entrenar.errors import InitError
from entrenar.init.inspect import BaseModel, inspect_base, load_base_tokenizer
from entrenar.init.propose import DataSummary, analyse_data, estimate_steps
from entrenar.init.rank import LORA_ALPHA, lora_rank_for

__all__ = [
    "FULL_FINETUNE_LR",
    "METHODS",
    "WARMUP_STEPS",
    "InitPlan",
    "build_plan",
    "config_path_value",
    "warmup_steps_for",
]

FULL_FINETUNE_LR = 2e-5
WARMUP_STEPS = 100


@dataclass(frozen=True)
class InitPlan:
    """The decisions behind one config file.

    Attributes:
        output: absolute path of the config file to write.
        method: ``lora``, ``qlora`` or ``full``.
        base: the inspected base model.
        data: the analysed training data.
        model_path: ``model.path`` as written (a repo id, or a path; see the module docstring).
        train_path: ``data.train_path`` as written.
        lora_rank: proposed rank (None for ``full``).
        lora_alpha: proposed alpha (None for ``full``).
        lr: ``optimizer.lr``.
        warmup_steps: ``scheduler.warmup_steps`` (`warmup_steps_for`).
        steps: optimizer steps the run will take with the written values (`estimate_steps`).
    """

    output: Path
    method: str
    base: BaseModel
    data: DataSummary
    model_path: str
    train_path: str
    lora_rank: int | None
    lora_alpha: float | None
    lr: float
    warmup_steps: int
    steps: int


def config_path_value(path: str, config_dir: str) -> str:
    """How a local path (or glob) is written in a config stored in `config_dir`.

    Args:
        path: an absolute, normalised path or glob pattern.
        config_dir: the absolute folder of the config file.

    Returns:
        ``./relative/path`` when `path` is `config_dir` or lies below it, else `path` unchanged.
    """
    if os.path.commonpath([config_dir, path]) != config_dir:
        return path
    relative = os.path.relpath(path, config_dir)
    return "." if relative == "." else f"./{Path(relative).as_posix()}"


def warmup_steps_for(steps: int) -> int:
    """The proposed ``scheduler.warmup_steps`` for a run of `steps` optimizer steps (module docstring).

    Args:
        steps: the planned optimizer steps, >= 0.

    Returns:
        ``min(WARMUP_STEPS, steps // 10)``: 100 from 1,000 steps on, fewer (0 below 10) for shorter runs.
    """
    return min(WARMUP_STEPS, steps // 10)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InitError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def build_plan(base: str, method: str, data: str, output: str | os.PathLike[str]) -> InitPlan:
    """Inspect the base model and the data and decide the config's values.

    Args:
        base: a local model folder or a Hub repo id.
        method: ``lora``, ``qlora`` or ``full``.
        data: the training data: a file, a folder or a glob (``~`` expanded).
        output: where the config file will be written (its folder anchors relative paths).

    Returns:
        The plan.

    Raises:
        InitError: an unknown method, a base without config.json or tokenizer.
        ModelConfigError: an unsupported model_type or invalid config.json.
        DataError: no data at the path, unknown or mixed format, no usable record.
        InvalidRecordError: a malformed record.
        HubError: the Hub cannot serve config.json or the tokenizer.
    """
    _check_method(method)
    data_path = os.path.abspath(os.path.expanduser(data))
    resolve_data_files(data_path)  # a missing path fails here, before any download
    target = Path(os.path.abspath(os.path.expanduser(output)))
    config_dir = str(target.parent)
    model = inspect_base(base)
    summary = analyse_data(data_path, load_base_tokenizer(model), model.config.max_position_embeddings)
    rank = lora_rank_for(model.num_parameters) if method != "full" else None
    steps = estimate_steps(
        summary.lengths,
        seq_len=summary.seq_len,
        batch_size=DataSection.batch_size,
        grad_accum=TrainingSection.grad_accum,
        packing=DataSection.packing,
        epochs=TrainingSection.epochs,
    )
    model_path = base if model.folder is None else config_path_value(os.path.abspath(model.folder), config_dir)
    return InitPlan(
        output=target,
        method=method,
        base=model,
        data=summary,
        model_path=model_path,
        train_path=config_path_value(data_path, config_dir),
        lora_rank=rank,
        lora_alpha=LORA_ALPHA if rank is not None else None,
        lr=FULL_FINETUNE_LR if method == "full" else OptimizerSection.lr,
        warmup_steps=warmup_steps_for(steps),
        steps=steps,
    )
