"""The model step of a run: device and seed, the base model's folder, the model for the config's method.

- ``model``: a local folder, a ``.gguf`` file (converted once into a cached folder) or a Hub id downloaded
  (weights, config and tokenizer files) into the standard cache (`aprender.reference.resolve_model_folder`);
  loaded by `entrenar.models.from_pretrained` in ``model.dtype``. The tokenizer is the folder's
  (`aprender.text.Tokenizer.from_dir`). `model_source_line` says which of these happens, before it does.
- ``lora`` (LoRA): adapters are built with the model through `entrenar.lora.lora_linear_factory`;
  only they train. ``lora`` + ``quantize`` (QLoRA, https://arxiv.org/abs/2305.14314): the dense model
  is loaded, every linear layer but the LM head is replaced by a frozen `NF4Linear`/`Int8Linear`
  (`entrenar.quant.quantize_linears`), the dense tensors left are copied out of the checkpoint's memory
  map (`release_checkpoint_pages`), then `entrenar.lora.apply_lora` adds the adapters. No ``lora``:
  every parameter trains.
- Precision: trainable parameters are kept in float32 (the optimizer's master copy); frozen ones stay
  in ``model.dtype``; with a 16-bit ``model.dtype`` the forward pass runs under that autocast
  (`entrenar.autograd.PrecisionPolicy`).
- Seeding: ``training.seed`` seeds python, NumPy and torch before the model is built, so the adapter
  initialisation, dropout masks and data order all follow from it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from aprender.reference import classify_model_reference, is_on_this_machine, resolve_model_folder
from entrenar.config import LoraSection, ModelSection, TrainConfig
from entrenar.display import Report, silent
from entrenar.errors import ModelConfigError
from entrenar.lora import LoraConfig, apply_lora, lora_linear_factory, mark_only_lora_trainable
from entrenar.models import (
    CausalLM,
    LinearFactory,
    ModelConfig,
    from_pretrained,
    read_config,
)
from entrenar.quant.swap import not_output_head, quantize_linears, release_checkpoint_pages

__all__ = [
    "ModelLoader",
    "assemble_model",
    "build_model",
    "compute_dtype",
    "lora_config_of",
    "model_source_line",
    "read_model_config",
    "resolve_model_dir",
    "seed_everything",
    "select_device",
]


def select_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python's `random`, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_model_dir(section: ModelSection, *, weights: bool = True) -> Path:
    """The local folder of the base model (`aprender.reference.resolve_model_folder`).

    A folder is used as it is, a ``.gguf`` file is converted once into a cached folder, a Hub id is
    downloaded into the HF cache at ``model.revision``.

    Args:
        section: The ``model:`` section.
        weights: Also fetch the safetensors files of a Hub id (False: config, generation config and
            tokenizer only).

    Returns:
        The folder holding ``config.json`` (and the weights and tokenizer files).

    Raises:
        HubError: The download failed (offline and not cached, unknown repo or revision, no access).
        ConversionError: The ``.gguf`` file cannot be converted.
    """
    revision = section.revision if section.source == "hub" else None
    return resolve_model_folder(section.path, revision, weights=weights)


def model_source_line(section: ModelSection) -> str:
    """Where the base model comes from, said before `resolve_model_dir` fetches it.

    ``Downloading ns/name...`` (``[cached]`` when the HF cache holds its weights), ``Converting x.gguf to
    SafeTensors...`` (``[cached]`` once converted) or ``Model: /path (local folder)``.

    Args:
        section: The ``model:`` section.

    Returns:
        One line.
    """
    reference = classify_model_reference(section.path)
    if reference.kind == "folder":
        return f"Model: {reference.location} (local folder)"
    revision = section.revision if reference.kind == "hub" else None
    done = " [cached]" if is_on_this_machine(reference, revision) else ""
    if reference.kind == "gguf":
        return f"Converting {reference.location} to SafeTensors...{done}"
    from aprender.hub import HubSettings

    name = section.path if revision is None else f"{section.path}@{revision}"
    where = "" if done else f" from {HubSettings.from_env().endpoint}"
    return f"Downloading {name}{where}...{done}"


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
        ConversionError: A ``.gguf`` file that cannot be converted.
    """
    if section.source == "local":
        return read_config(resolve_model_folder(section.path))
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


ModelLoader = Callable[[LinearFactory | None], CausalLM]
"""Builds the base model with a linear factory (None: plain ``nn.Linear``): from a checkpoint, or on ``meta``."""


def assemble_model(cfg: TrainConfig, load: ModelLoader, report: Report = silent) -> CausalLM:
    """The model for the config's method, with only what trains marked ``requires_grad``.

    Full fine-tune: every parameter trains. LoRA: adapters built with the model by
    `entrenar.lora.lora_linear_factory`. QLoRA: every linear layer but the LM head quantized
    (`entrenar.quant.quantize_linears`), then `entrenar.lora.apply_lora`.

    Args:
        cfg: The config (``lora``, ``quantize``).
        load: Builds the base model.
        report: Told ``Applying QLoRA adapters (rank=64)...`` as the adapters are added.

    Returns:
        The model.

    Raises:
        LoraError: Targets that match no layer.
    """
    if cfg.lora is None:
        model = load(None)
        model.requires_grad_(True)
        return model
    lora = lora_config_of(cfg.lora)
    adapters = f"Applying {'LoRA' if cfg.quantize is None else 'QLoRA'} adapters (rank={lora.rank})..."
    if cfg.quantize is None:
        factory = lora_linear_factory(lora)
        report(adapters)  # built with the model, as it loads
        model = load(factory)
        factory.check_targets()
    else:
        model = load(None)
        quantize_linears(model, cfg.quantize.type, filter_fn=not_output_head, double_quant=cfg.quantize.double_quant)
        release_checkpoint_pages(model)
        report(adapters)
        apply_lora(model, lora)
    mark_only_lora_trainable(model)
    return model


def build_model(cfg: TrainConfig, model_dir: Path, device: torch.device, report: Report = silent) -> CausalLM:
    """Load the base model for the config's method (`assemble_model`) and put it in training mode.

    Call `seed_everything` first: adapter initialisation draws from torch's generator.

    Args:
        cfg: The config (``model``, ``lora``, ``quantize``, ``training.gradient_checkpointing``).
        model_dir: The model folder (`resolve_model_dir`).
        device: Where to put the weights.
        report: Told ``Loading model weights (SafeTensors)...`` and which adapters are applied.

    Returns:
        The model: trainable parameters in float32, frozen ones in ``model.dtype``.

    Raises:
        CheckpointError, ModelConfigError, LoraError: As the loaders and adapters raise them.
    """

    def load(factory: LinearFactory | None) -> CausalLM:
        return from_pretrained(model_dir, dtype=cfg.model.dtype, device=device, linear_factory=factory)

    report("Loading model weights (SafeTensors)...")
    model = assemble_model(cfg, load, report)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    model.set_gradient_checkpointing(cfg.training.gradient_checkpointing)
    return model.train()


def compute_dtype(model: CausalLM) -> str:
    """The dtype the model was loaded in (``model.dtype``, with ``auto`` resolved): the autocast dtype."""
    return model.config.torch_dtype or "float32"
