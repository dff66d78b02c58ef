"""Adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

The files are what ``peft.PeftModel.from_pretrained`` (peft 0.21) loads and what PEFT's
``save_pretrained`` writes (``utils/save_and_load.py``):

- ``adapter_config.json``: ``peft_type: "LORA"``, ``task_type: "CAUSAL_LM"``, ``r``, ``lora_alpha``,
  ``lora_dropout``, ``target_modules`` (names, a regex, or for ``"all-linear"`` the module paths it
  resolved to, as PEFT writes), ``bias: "none"``, ``use_rslora``, ``use_dora``, ``init_lora_weights``,
  ``base_model_name_or_path``, ``revision``, ``rank_pattern`` (per-layer ranks) and the other LoraConfig
  fields at their "off" values;
- ``adapter_model.safetensors``: ``base_model.model.<module path>.lora_A.weight`` (r, in),
  ``.lora_B.weight`` (out, r) and, with DoRA, ``.lora_magnitude_vector`` (out,).

Reading refuses PEFT features this module does not implement (a per-module alpha pattern, trained
biases, layer subsets, extra trained modules, other init schemes) instead of ignoring them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aprender.atomic import atomic_write_json
from aprender.format.safetensors import load_file, save_file
from entrenar.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from entrenar.errors import LoraError
from entrenar.lora.config import ALL_LINEAR, LoraConfig
from entrenar.lora.linear import LoRALinear
from entrenar.lora.targeting import apply_lora, lora_modules, select_target_modules

__all__ = [
    "AdapterConfig",
    "adapter_state_dict",
    "check_adapters_match",
    "load_adapter",
    "load_adapter_weights",
    "read_adapter_config",
    "read_adapter_weights",
    "save_adapter",
    "save_adapter_weights",
]

KEY_PREFIX = "base_model.model."
# Our parameter name -> the suffix PEFT's state dict gives it.
_KEY_SUFFIXES = {
    "lora_A": ".lora_A.weight",
    "lora_B": ".lora_B.weight",
    "lora_magnitude_vector": ".lora_magnitude_vector",
}
_INIT_TO_PEFT: dict[str, bool | str] = {"default": True, "none": False, "gaussian": "gaussian", "pissa": "pissa"}
# Keys read below, and keys that carry no behaviour (bookkeeping, or used only with a feature that is off).
_READ_KEYS = {
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "rank_pattern",
    "base_model_name_or_path",
    "revision",
}
_INERT_KEYS = {"auto_mapping", "inference_mode", "peft_version", "megatron_core", "qalora_group_size"}


@dataclass(frozen=True)
class AdapterConfig:
    """An ``adapter_config.json``: the LoRA settings plus the base model they were trained on.

    Attributes:
        lora: Rank, alpha, dropout, targets, rsLoRA, DoRA, init.
        base_model_name_or_path: Hub id or path of the base model, when recorded.
        revision: Revision of the base model, when recorded.
    """

    lora: LoraConfig
    base_model_name_or_path: str | None = None
    revision: str | None = None

    def to_peft_dict(self, target_modules: list[str] | str) -> dict[str, Any]:
        """The JSON object PEFT's ``LoraConfig`` loads.

        Args:
            target_modules: What to write as ``target_modules`` (names, a regex, or resolved paths).

        Returns:
            A JSON-serialisable dict.
        """
        lora = self.lora
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "revision": self.revision,
            "r": lora.rank,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": target_modules,
            "bias": "none",
            "use_rslora": lora.use_rslora,
            "use_dora": lora.use_dora,
            "init_lora_weights": _INIT_TO_PEFT[lora.init],
            "fan_in_fan_out": False,
            "lora_bias": False,
            "modules_to_save": None,
            "exclude_modules": None,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": dict(lora.rank_pattern),
            "alpha_pattern": {},
            "layer_replication": None,
            "loftq_config": {},
            "megatron_config": None,
            "inference_mode": True,
        }

    @classmethod
    def from_peft_dict(cls, raw: Mapping[str, Any], source: str) -> AdapterConfig:
        """Read a PEFT ``adapter_config.json`` object (absent keys take PEFT's defaults).

        Args:
            raw: The parsed JSON.
            source: File name for error messages.

        Returns:
            The adapter config.

        Raises:
            LoraError: Not a LoRA adapter, a feature this module does not implement, or an invalid value.
        """
        _check_supported(raw, source)
        peft_init = raw.get("init_lora_weights", True)
        init = next((ours for ours, theirs in _INIT_TO_PEFT.items() if _same(peft_init, theirs)), None)
        if init is None:
            raise LoraError(
                f"{source}: init_lora_weights {peft_init!r} is not supported; "
                "supported: true, false, 'gaussian', 'pissa'"
            )
        targets = raw.get("target_modules")
        if targets is None:
            raise LoraError(f"{source}: target_modules is null (PEFT's per-architecture default); list the modules")
        try:
            lora = LoraConfig(
                rank=raw.get("r", 8),
                alpha=raw.get("lora_alpha", 8),
                dropout=raw.get("lora_dropout", 0.0),
                target_modules=targets,
                use_rslora=bool(raw.get("use_rslora", False)),
                use_dora=bool(raw.get("use_dora", False)),
                init=init,
                rank_pattern=raw.get("rank_pattern") or {},
            )
        except LoraError as exc:
            raise LoraError(f"{source}: {exc}") from exc
        return cls(lora, raw.get("base_model_name_or_path"), raw.get("revision"))


def _same(value: object, peft_value: bool | str) -> bool:
    return type(value) is type(peft_value) and value == peft_value


def _check_supported(raw: Mapping[str, Any], source: str) -> None:
    if raw.get("peft_type") != "LORA":
        raise LoraError(f"{source}: peft_type {raw.get('peft_type')!r} is not LORA; only LoRA adapters are supported")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise LoraError(f"{source}: task_type {raw['task_type']!r} is not supported; only CAUSAL_LM adapters are")
    if raw.get("bias", "none") != "none":
        raise LoraError(f"{source}: bias {raw['bias']!r} (trained biases) is not supported; only 'none' is")
    for key, value in raw.items():
        if key not in _READ_KEYS and key not in _INERT_KEYS and value not in (None, False, {}, [], ""):
            raise LoraError(f"{source}: {key} = {value!r} is a PEFT feature entrenar.lora does not implement")


# ----------------------------------------------------------------------------------------------- files


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> AdapterConfig:
    """Read ``adapter_config.json`` from an adapter folder.

    Args:
        adapter_dir: A folder written by `save_adapter` or PEFT's ``save_pretrained``.

    Returns:
        The adapter config.

    Raises:
        LoraError: The file is missing, not a JSON object, or describes an unsupported adapter.
    """
    path = Path(adapter_dir) / ADAPTER_CONFIG_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LoraError(f"{path}: not found; an adapter folder holds {ADAPTER_CONFIG_NAME} and its weights") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraError(f"{path}: cannot be read as JSON ({exc}); re-save the adapter") from exc
    if not isinstance(raw, dict):
        raise LoraError(f"{path}: holds a JSON {type(raw).__name__}, not an object; re-save the adapter")
    return AdapterConfig.from_peft_dict(raw, str(path))


def read_adapter_weights(adapter_dir: str | os.PathLike[str]) -> dict[str, dict[str, Tensor]]:
    """Read ``adapter_model.safetensors`` grouped by module path.

    Args:
        adapter_dir: The adapter folder.

    Returns:
        Module path -> {"lora_A": (r, in), "lora_B": (out, r)[, "lora_magnitude_vector": (out,)]}.

    Raises:
        LoraError: The file is missing, holds a key outside PEFT's LoRA layout, or a module lacks A or B.
        FormatError: The file is not valid safetensors.
    """
    path = Path(adapter_dir) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise LoraError(f"{path}: not found; save the adapter in safetensors (PEFT: safe_serialization=True)")
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, tensor in load_file(path).items():
        name = next((n for n, suffix in _KEY_SUFFIXES.items() if key.endswith(suffix)), None)
        if not key.startswith(KEY_PREFIX) or name is None:
            raise LoraError(
                f"{path}: key {key!r} is not base_model.model.<module>.lora_A.weight/.lora_B.weight/"
                ".lora_magnitude_vector; only LoRA adapters of PEFT's layout are supported"
            )
        module_path = key[len(KEY_PREFIX) : -len(_KEY_SUFFIXES[name])]
        grouped.setdefault(module_path, {})[name] = tensor
    for module_path, tensors in grouped.items():
        if "lora_A" not in tensors or "lora_B" not in tensors:
            raise LoraError(f"{path}: {module_path} lacks lora_A.weight or lora_B.weight; re-save the adapter")
    return grouped


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors under PEFT's keys (detached, sharing memory with the model).

    Args:
        model: A model with `LoRALinear` layers.

    Returns:
        ``base_model.model.<path>.lora_A.weight`` -> (r, in), ``.lora_B.weight`` -> (out, r),
        ``.lora_magnitude_vector`` -> (out,) with DoRA.
    """
    tensors: dict[str, Tensor] = {}
    for path, module in lora_modules(model).items():
        for name, suffix in _KEY_SUFFIXES.items():
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                tensors[f"{KEY_PREFIX}{path}{suffix}"] = param.detach()
    return tensors


def save_adapter(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    config: LoraConfig,
    *,
    base_model_name_or_path: str | None = None,
    revision: str | None = None,
) -> list[Path]:
    """Write the model's adapters in PEFT's format (both files atomically).

    Args:
        model: A model whose `LoRALinear` layers were made from `config`.
        out_dir: Output folder, created if missing.
        config: The config the adapters were built with (written as ``adapter_config.json``).
        base_model_name_or_path: Hub id or path of the base model, for PEFT and model cards.
        revision: Revision of the base model.

    Returns:
        ``[adapter_config.json, adapter_model.safetensors]`` paths.

    Raises:
        LoraError: The model has no adapters, or they differ from what `config` describes.
    """
    check_adapters_match(model, config)
    targets: list[str] | str
    if config.target_modules == ALL_LINEAR:  # as PEFT: write the layers it resolved to, so readers select them
        targets = list(lora_modules(model))
    elif isinstance(config.target_modules, str):
        targets = config.target_modules
    else:
        targets = sorted(config.target_modules)
    adapter = AdapterConfig(config, base_model_name_or_path, revision)
    return _write_files(out_dir, adapter, targets, adapter_state_dict(model))


def save_adapter_weights(
    weights: Mapping[str, Mapping[str, Tensor]],
    out_dir: str | os.PathLike[str],
    adapter: AdapterConfig,
    target_modules: list[str] | str,
) -> list[Path]:
    """Write adapter tensors held outside a model in PEFT's format (both files atomically); `read_adapter_weights`
    reads them back.

    Args:
        weights: Module path -> {"lora_A": (r, in), "lora_B": (out, r)[, "lora_magnitude_vector": (out,)]}.
        out_dir: Output folder, created if missing.
        adapter: The settings and base model (written as ``adapter_config.json``).
        target_modules: What to write as ``target_modules`` (names, a regex, or the module paths).

    Returns:
        ``[adapter_config.json, adapter_model.safetensors]`` paths.
    """
    tensors = {
        f"{KEY_PREFIX}{path}{_KEY_SUFFIXES[name]}": tensor
        for path, named in weights.items()
        for name, tensor in named.items()
    }
    return _write_files(out_dir, adapter, target_modules, tensors)


def _write_files(
    out_dir: str | os.PathLike[str], adapter: AdapterConfig, target_modules: list[str] | str, tensors: dict[str, Tensor]
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contiguous = {key: tensor.contiguous() for key, tensor in tensors.items()}
    save_file(contiguous, out / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_json(out / ADAPTER_CONFIG_NAME, adapter.to_peft_dict(target_modules))
    return [out / ADAPTER_CONFIG_NAME, out / ADAPTER_WEIGHTS_NAME]


def check_adapters_match(model: nn.Module, config: LoraConfig) -> None:
    """Raise unless the model's `LoRALinear` layers are exactly those `config` selects, with its settings.

    Args:
        model: A model with adapters.
        config: The config they should follow.

    Raises:
        LoraError: No adapters, other layers adapted, or a layer with another rank/alpha/rsLoRA/dropout/DoRA/init.
    """
    adapters = lora_modules(model)
    if not adapters:
        raise LoraError("the model has no LoRA adapters; apply_lora or build it with lora_linear_factory")
    selected = select_target_modules(model, config)
    if set(selected) != set(adapters):
        extra = sorted(set(adapters) - set(selected)) or sorted(set(selected) - set(adapters))
        raise LoraError(
            f"the model's adapted layers differ from what target_modules {config.target_modules!r} selects "
            f"(first difference: {extra[0]!r}); use the config the model was built with"
        )
    for path, module in adapters.items():
        layer = config.for_module(path)
        settings = (module.rank, module.alpha, module.scaling, module.dropout, module.use_dora, module.init)
        expected = (layer.rank, layer.alpha, layer.scaling, layer.dropout, layer.use_dora, layer.init)
        if settings != expected:
            raise LoraError(
                f"{path}: adapter (rank, alpha, scaling, dropout, dora, init) = {settings}, "
                f"but the config says {expected}"
            )


def load_adapter_weights(model: nn.Module, adapter_dir: str | os.PathLike[str]) -> None:
    """Copy a saved adapter's tensors into the model's `LoRALinear` layers (strict: all and only those).

    Args:
        model: A model with adapters at the paths the file names.
        adapter_dir: The adapter folder.

    Raises:
        LoraError: Missing or unexpected modules/tensors, a shape mismatch, or a merged layer.
    """
    source = Path(adapter_dir) / ADAPTER_WEIGHTS_NAME
    grouped = read_adapter_weights(adapter_dir)
    adapters = lora_modules(model)
    unexpected = sorted(set(grouped) - set(adapters))
    if unexpected:
        raise LoraError(f"{source}: holds an adapter for {unexpected[0]!r}, which the model does not adapt")
    for path, module in adapters.items():
        _load_module(module, grouped.get(path, {}), f"{source}: {path}")


@torch.no_grad()
def _load_module(module: LoRALinear, tensors: dict[str, Tensor], where: str) -> None:
    if module.merged:
        raise LoraError(f"{where}: the adapter is merged; unmerge() before loading weights into it")
    names = [name for name in _KEY_SUFFIXES if isinstance(getattr(module, name, None), nn.Parameter)]
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise LoraError(f"{where}: the file has {extra[0]} but the layer has none (DoRA in one and not the other?)")
    for name in names:
        param: nn.Parameter = getattr(module, name)
        if name not in tensors:
            raise LoraError(f"{where}: {name} is missing from the adapter file")
        if tensors[name].shape != param.shape:
            raise LoraError(
                f"{where}: {name} has shape {list(tensors[name].shape)} but the layer expects {list(param.shape)}"
            )
        param.copy_(tensors[name])


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike[str]) -> AdapterConfig:
    """Load an adapter (ours or PEFT's) into a model: add `LoRALinear` layers if it has none, then the weights.

    Args:
        model: A model with its base weights loaded; or one already built with the adapter's config.
        adapter_dir: The adapter folder.

    Returns:
        The adapter's config.

    Raises:
        LoraError: The adapter does not fit the model or uses an unsupported PEFT feature.
    """
    adapter = read_adapter_config(adapter_dir)
    if lora_modules(model):
        check_adapters_match(model, adapter.lora)
    else:
        apply_lora(model, adapter.lora)
    load_adapter_weights(model, adapter_dir)
    return adapter
