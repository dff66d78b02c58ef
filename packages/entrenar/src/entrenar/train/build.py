"""From a validated `TrainConfig` to the objects the training loop runs: model, data, optimizer, schedule.

How the config's sections map onto the building blocks:

- ``model``: a local folder, or a Hub id downloaded (weights, config and tokenizer files) with
  `aprender.hub.download` into the standard cache; loaded by `entrenar.models.from_pretrained` in
  ``model.dtype``. The tokenizer is the folder's (`aprender.text.Tokenizer.from_dir`).
- ``lora`` (LoRA): adapters are built with the model through `entrenar.lora.lora_linear_factory`;
  only they train. ``lora`` + ``quantize`` (QLoRA, https://arxiv.org/abs/2305.14314): the dense model
  is loaded, every linear layer but the LM head is replaced by a frozen `NF4Linear`/`Int8Linear`, the
  dense tensors left are copied out of the checkpoint's memory map (`release_checkpoint_pages`, so the
  pages of the replaced weights leave RAM), then `entrenar.lora.apply_lora` adds the adapters. No
  ``lora``: every parameter trains.
- Precision: trainable parameters are kept in float32 (the optimizer's master copy); frozen ones stay
  in ``model.dtype``; with a 16-bit ``model.dtype`` the forward pass runs under that autocast
  (`entrenar.autograd.PrecisionPolicy`).
- ``data``: `entrenar.data.build_datasets`, then a `DataLoader` shuffled by ``training.seed``.
- ``optimizer``/``scheduler``: `entrenar.optim` registries; parameter groups exempt norms, biases and
  embeddings from weight decay and apply LoRA+ (https://arxiv.org/abs/2402.12354).
- Seeding: ``training.seed`` seeds python, NumPy and torch before the model is built, so the adapter
  initialisation, dropout masks and data order all follow from it.

Steps: a step is ``training.grad_accum`` micro-batches, taken back to back across epoch boundaries; the
run takes ``ceil(epochs * batches_per_epoch / grad_accum)`` steps, or ``training.max_steps`` when that is
smaller (its last step may have fewer micro-batches).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from aprender.text import TOKENIZER_FILE_PATTERNS, Tokenizer
from entrenar.autograd import GradientEngine, PrecisionPolicy
from entrenar.config import LoraSection, ModelSection, QuantizeSection, TrainConfig, TrainingSection
from entrenar.data import DataLoader, Dataset, build_datasets
from entrenar.errors import ConfigError, LoraError, ModelConfigError
from entrenar.lora import LoraConfig, apply_lora, linear_modules, lora_linear_factory, mark_only_lora_trainable
from entrenar.models import (
    CONFIG_FILES,
    MODEL_FILE_PATTERNS,
    CausalLM,
    LinearFactory,
    ModelConfig,
    from_pretrained,
    read_config,
)
from entrenar.optim import build_optimizer, build_param_groups, build_scheduler
from entrenar.quant import Int8Linear, NF4Linear
from entrenar.train.loss import CausalLMLoss

__all__ = [
    "ModelLoader",
    "StepPlan",
    "TrainingRun",
    "assemble_model",
    "build_model",
    "build_optimizer_for",
    "build_run",
    "build_scheduler_for",
    "check_schedule",
    "compute_dtype",
    "load_data",
    "lora_config_of",
    "plan_steps",
    "quantize_frozen_linears",
    "read_model_config",
    "release_checkpoint_pages",
    "resolve_model_dir",
    "seed_everything",
    "select_device",
]

LM_HEAD = "lm_head"


def select_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python's `random`, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- model


def resolve_model_dir(section: ModelSection, *, weights: bool = True) -> Path:
    """The local folder of the base model, downloading a Hub id into the HF cache first.

    Args:
        section: The ``model:`` section.
        weights: Also fetch the safetensors files (False: config, generation config and tokenizer only).

    Returns:
        The folder holding ``config.json`` (and the weights and tokenizer files).

    Raises:
        HubError: The download failed (offline and not cached, unknown repo or revision, no access).
    """
    if section.source == "local":
        return Path(section.path)
    from aprender.hub import download  # the Hub client is needed for repo ids only

    patterns = [*(MODEL_FILE_PATTERNS if weights else CONFIG_FILES), *TOKENIZER_FILE_PATTERNS]
    return Path(download(section.path, section.revision, allow_patterns=patterns))


def read_model_config(section: ModelSection) -> ModelConfig:
    """The base model's architecture from its ``config.json`` alone (one small download for a Hub id).

    Args:
        section: The ``model:`` section.

    Returns:
        The model config.

    Raises:
        CheckpointError: A local folder without a readable ``config.json``.
        ModelConfigError: An unsupported or invalid config (the message names the file or repo).
        HubError: The Hub could not provide ``config.json``.
    """
    if section.source == "local":
        return read_config(section.path)
    from aprender.hub import fetch_config

    raw = fetch_config(section.path, section.revision)
    try:
        return ModelConfig.from_hf_dict(raw)
    except ModelConfigError as exc:
        raise ModelConfigError(f"{section.path}/config.json: {exc}") from exc


def lora_config_of(section: LoraSection) -> LoraConfig:
    """The `entrenar.lora.LoraConfig` of a ``lora:`` section."""
    return LoraConfig(
        rank=section.rank,
        alpha=section.alpha,
        dropout=section.dropout,
        target_modules=section.target_modules,
        use_rslora=section.use_rslora,
        use_dora=section.use_dora,
        init=section.init,
    )


def quantize_frozen_linears(model: nn.Module, section: QuantizeSection) -> list[str]:
    """Replace every ``nn.Linear`` but the LM head by a frozen quantized layer (in place), as QLoRA does.

    On the ``meta`` device (size estimates) the quantized layers are created empty, with the same buffers.

    Args:
        model: A model with dense linear layers.
        section: ``quantize:``: ``nf4`` (with or without double quantization) or ``int8``.

    Returns:
        The paths of the replaced layers, in model order.
    """
    paths = [
        path for path, module in linear_modules(model).items() if isinstance(module, nn.Linear) and path != LM_HEAD
    ]
    for path in paths:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        dense = getattr(parent, leaf)
        bias = None if dense.bias is None else dense.bias.detach()
        quantized: nn.Module
        if dense.weight.is_meta:
            sizes = (dense.in_features, dense.out_features, bias is not None)
            if section.type == "nf4":
                quantized = NF4Linear(*sizes, double_quant=section.double_quant, device="meta")
            else:
                quantized = Int8Linear(*sizes, device="meta")
        elif section.type == "nf4":
            quantized = NF4Linear.from_weight(dense.weight.detach(), bias, double_quant=section.double_quant)
        else:
            quantized = Int8Linear.from_weight(dense.weight.detach(), bias)
        setattr(parent, leaf, quantized)
    return paths


def release_checkpoint_pages(model: nn.Module) -> None:
    """Give every CPU parameter and buffer its own memory, so the checkpoint file's memory map can go.

    On the CPU the loader's tensors are views of the safetensors file's memory map, which stays mapped (its
    pages read so far resident, and counted in the process RSS) while any tensor from it lives. After
    `quantize_frozen_linears` the dense linear weights are gone, but the embedding and the norms would keep
    the map, and with it every page quantization read, alive: copying those few tensors frees about the
    dense linear weights' size (~400 MiB for SmolLM2-135M in float32).

    Args:
        model: The model, changed in place (parameters keep their identity).
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type == "cpu":
                param.data = param.data.clone()
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.device.type == "cpu":
                    module._buffers[name] = buffer.clone()


ModelLoader = Callable[[LinearFactory | None], CausalLM]
"""Builds the base model with a linear factory (None: plain ``nn.Linear``): from a checkpoint, or on ``meta``."""


def assemble_model(cfg: TrainConfig, load: ModelLoader) -> CausalLM:
    """The model for the config's method, with only what trains marked ``requires_grad``.

    Full fine-tune: every parameter trains. LoRA: adapters built with the model by
    `entrenar.lora.lora_linear_factory`. QLoRA: linear layers quantized (`quantize_frozen_linears`), then
    `entrenar.lora.apply_lora`.

    Args:
        cfg: The config (``lora``, ``quantize``).
        load: Builds the base model.

    Returns:
        The model.

    Raises:
        LoraError: Targets that match no layer, or that select the LM head.
    """
    if cfg.lora is None:
        model = load(None)
        model.requires_grad_(True)
        return model
    lora = lora_config_of(cfg.lora)
    if cfg.quantize is None:
        factory = lora_linear_factory(lora)
        model = load(factory)
        factory.check_targets()
        adapted = factory.adapted
    else:
        model = load(None)
        quantize_frozen_linears(model, cfg.quantize)
        release_checkpoint_pages(model)
        adapted = apply_lora(model, lora)
    if LM_HEAD in adapted:
        raise LoraError(
            "lora.target_modules selects lm_head, but the trainer's fused loss reads the LM head's base weight; "
            "leave lm_head out of the targets"
        )
    mark_only_lora_trainable(model)
    return model


def build_model(cfg: TrainConfig, model_dir: Path, device: torch.device) -> CausalLM:
    """Load the base model for the config's method (`assemble_model`) and put it in training mode.

    Call `seed_everything` first: adapter initialisation draws from torch's generator.

    Args:
        cfg: The config (``model``, ``lora``, ``quantize``, ``training.gradient_checkpointing``).
        model_dir: The model folder (`resolve_model_dir`).
        device: Where to put the weights.

    Returns:
        The model: trainable parameters in float32, frozen ones in ``model.dtype``.

    Raises:
        CheckpointError, ModelConfigError, LoraError: As the loaders and adapters raise them.
    """

    def load(factory: LinearFactory | None) -> CausalLM:
        return from_pretrained(model_dir, dtype=cfg.model.dtype, device=device, linear_factory=factory)

    model = assemble_model(cfg, load)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    model.set_gradient_checkpointing(cfg.training.gradient_checkpointing)
    return model.train()


def compute_dtype(model: CausalLM) -> str:
    """The dtype the model was loaded in (``model.dtype``, with ``auto`` resolved): the autocast dtype."""
    return model.config.torch_dtype or "float32"


# -------------------------------------------------------------------------------------- optimization


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


# ------------------------------------------------------------------------------------------------ run


@dataclass
class TrainingRun:
    """Everything the loop needs, built from one config.

    Attributes:
        config: The validated config.
        model_dir: The base model's local folder.
        tokenizer: Its tokenizer.
        model: The model, in training mode.
        loss: The loss over the model's LM head (reduction ``"sum"``).
        train_data: Training samples (packed rows or single samples).
        val_data: Validation samples, or None.
        loader: Shuffled training batches.
        optimizer: The optimizer.
        scheduler: The learning-rate schedule.
        precision: Autocast policy.
        engine: Accumulated backward, clipping, anomaly guard.
        device: Where the model is.
        plan: The run's length.
    """

    config: TrainConfig
    model_dir: Path
    tokenizer: Tokenizer
    model: CausalLM
    loss: CausalLMLoss
    train_data: Dataset
    val_data: Dataset | None
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    precision: PrecisionPolicy
    engine: GradientEngine
    device: torch.device
    plan: StepPlan


def load_data(cfg: TrainConfig, tokenizer: Tokenizer) -> tuple[Dataset, Dataset | None]:
    """The ``data:`` section's training and validation datasets.

    Args:
        cfg: The config.
        tokenizer: The model's tokenizer.

    Returns:
        (train, val); val is None without ``data.val_path`` or ``data.val_split``.

    Raises:
        DataError, InvalidRecordError: As `entrenar.data.build_datasets`.
    """
    data = cfg.data
    return build_datasets(
        data.train_path,
        tokenizer=tokenizer,
        seq_len=data.seq_len,
        val_path=data.val_path,
        val_split=data.val_split,
        format=data.format,
        train_on="all" if data.train_on == "all" else "completion",
        packing=data.packing,
        skip_invalid=data.skip_invalid,
        seed=cfg.training.seed,
    )


def build_run(cfg: TrainConfig, *, device: torch.device | None = None) -> TrainingRun:
    """Build every object of a run (module docstring), ready for `entrenar.train.Trainer`.

    Args:
        cfg: The validated config.
        device: Where to train; None picks `select_device`.

    Returns:
        The run.

    Raises:
        AprenderError: Any user-caused problem (model, data, options), as one message.
    """
    device = device or select_device()
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = Tokenizer.from_dir(model_dir)
    train_data, val_data = load_data(cfg, tokenizer)
    seed_everything(cfg.training.seed)
    model = build_model(cfg, model_dir, device)
    loader = DataLoader(train_data, batch_size=cfg.data.batch_size, shuffle=True, seed=cfg.training.seed)
    plan = plan_steps(cfg.training, len(loader))
    optimizer = build_optimizer_for(cfg, model)
    precision = PrecisionPolicy.for_device(device, compute_dtype(model))
    return TrainingRun(
        config=cfg,
        model_dir=model_dir,
        tokenizer=tokenizer,
        model=model,
        loss=CausalLMLoss(model),
        train_data=train_data,
        val_data=val_data,
        loader=loader,
        optimizer=optimizer,
        scheduler=build_scheduler_for(cfg, optimizer, plan),
        precision=precision,
        engine=GradientEngine(model, precision),
        device=device,
        plan=plan,
    )
