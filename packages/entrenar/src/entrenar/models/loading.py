"""Load and save `CausalLM` in the Hugging Face layout (``config.json`` + safetensors, sharded or not).

`from_pretrained` builds the model on the ``meta`` device (no memory), then reads the checkpoint one
tensor at a time through `aprender.format.safetensors.open_checkpoint` and assigns each, converted to
the requested dtype and device, in place of its meta parameter. Peak memory is the model plus one
tensor, not twice the model. The tensors a custom linear factory's module declares as its own
(`entrenar.models.linear.SelfInitializing`: LoRA's A and B) are not in the checkpoint: they are allocated
and then initialised by the module's ``initialize_parameters()``. Any other tensor missing is an error.

`save_pretrained` writes what ``transformers.AutoModelForCausalLM.from_pretrained`` loads:
``config.json``, ``model.safetensors`` (or shards + index) and ``generation_config.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aprender.atomic import atomic_write_json
from aprender.constants import DTYPE_NAMES
from aprender.errors import InvalidArgumentError, ModelReferenceError
from aprender.format.safetensors import CheckpointReader, open_checkpoint, save
from aprender.reference import classify_model_reference, resolve_model_folder
from entrenar.errors import CheckpointError, ModelConfigError
from entrenar.models.config import ModelConfig
from entrenar.models.linear import LinearFactory, SelfInitializing
from entrenar.models.model import CausalLM

__all__ = ["from_pretrained", "loaded_dtype", "read_config", "save_pretrained"]

_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Data read through one open checkpoint before it is closed and reopened (see `_materialise`).
_REOPEN_BYTES = 64 * 2**20


def read_config(folder: str | os.PathLike[str]) -> ModelConfig:
    """Read ``config.json`` from a model folder.

    Args:
        folder: A folder in the Hugging Face layout.

    Returns:
        The `ModelConfig`.

    Raises:
        CheckpointError: The folder has no ``config.json`` or it is not JSON.
        ModelConfigError: The config is unsupported or invalid (the message names the file).
    """
    path = Path(folder) / "config.json"
    raw = _read_json(path)
    try:
        return ModelConfig.from_hf_dict(raw)
    except ModelConfigError as exc:
        raise ModelConfigError(f"{path}: {exc}") from exc


def from_pretrained(
    path_or_repo_id: str | os.PathLike[str],
    revision: str | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    linear_factory: LinearFactory | None = None,
) -> CausalLM:
    """Load a Llama/Mistral/Qwen2/Qwen3 checkpoint in the Hugging Face layout.

    Args:
        path_or_repo_id: A local folder, a ``.gguf`` file (converted once into a cached folder) or a Hub
            repo id (``namespace/name``: no file suffix, not an existing path; a `os.PathLike` is never
            one), downloaded through `aprender.hub.download`; see `aprender.reference`.
        revision: Branch, tag or commit of a Hub repo id (not allowed with a local folder).
        dtype: ``"auto"`` (the config's ``torch_dtype``, else the checkpoint's), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or the matching `torch.dtype`.
        device: Where the parameters go (``"cpu"``, ``"cuda"``, ...).
        linear_factory: Builds every projection (see `entrenar.models.linear`); default plain `nn.Linear`.

    Returns:
        The model in eval mode, with ``config.torch_dtype`` set to the dtype loaded and
        ``generation_config`` read from ``generation_config.json`` when present.

    Raises:
        CheckpointError: Not a folder, .gguf file or repo id; no config.json; or weights that do not fit the
            architecture.
        ModelConfigError: Unsupported or invalid config.
        InvalidArgumentError: Bad `dtype`, `device`, or a `revision` with a local folder.
        FormatError: A corrupt safetensors file.
    """
    target_device = _device(device)
    folder = _resolve_folder(path_or_repo_id, revision)
    config = read_config(folder)
    with open_checkpoint(folder) as reader:
        target_dtype = _resolve_dtype(dtype, config, reader)
        config = replace(config, torch_dtype=str(target_dtype).removeprefix("torch."))
    with torch.device("meta"):
        model = CausalLM(config, linear_factory)
    _materialise(model, folder, target_dtype, target_device)
    generation = folder / "generation_config.json"
    model.generation_config = _read_json(generation) if generation.is_file() else {}
    return model.eval()


def loaded_dtype(path_or_repo_id: str | os.PathLike[str], dtype: str | torch.dtype = "auto") -> torch.dtype:
    """The dtype `from_pretrained` would load a model folder in (``"auto"`` resolved), without loading it.

    Args:
        path_or_repo_id: As for `from_pretrained` (a folder, ``.gguf`` file or Hub repo id).
        dtype: As for `from_pretrained`.

    Raises:
        InvalidArgumentError: Bad `dtype`.
    """
    folder = _resolve_folder(path_or_repo_id, None)
    with open_checkpoint(folder) as reader:
        return _resolve_dtype(dtype, read_config(folder), reader)


def save_pretrained(
    model: CausalLM, folder: str | os.PathLike[str], *, max_shard_size: int | str = "5GB"
) -> list[Path]:
    """Write the model in the Hugging Face layout.

    Args:
        model: A model with plain weights (merge LoRA adapters first).
        folder: Output folder, created if missing.
        max_shard_size: Largest safetensors shard, bytes or a string like ``"500MB"``.

    Returns:
        The files written: weights (and index), ``config.json``, ``generation_config.json``.

    Raises:
        CheckpointError: The model holds parameters outside the Hugging Face layout, or lacks some.
        InvalidArgumentError: Bad `max_shard_size`.
    """
    out = Path(folder)
    tensors = _hf_state_dict(model)
    dtype = model.model.embed_tokens.weight.dtype
    config = replace(model.config, torch_dtype=str(dtype).removeprefix("torch."))
    written = save(tensors, out, max_shard_size=max_shard_size)
    generation = model.generation_config or _default_generation_config(config)
    for name, content in (("config.json", config.to_hf_dict()), ("generation_config.json", generation)):
        atomic_write_json(out / name, content)
        written.append(out / name)
    return written


# ----------------------------------------------------------------------------------------- resolving


def _resolve_folder(path_or_repo_id: str | os.PathLike[str], revision: str | None) -> Path:
    try:
        reference = classify_model_reference(path_or_repo_id)
    except ModelReferenceError as exc:
        raise CheckpointError(str(exc)) from exc
    return resolve_model_folder(reference, revision, tokenizer=False)


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device {device!r} is not a torch device; use e.g. 'cpu' or 'cuda'") from exc


def _resolve_dtype(dtype: str | torch.dtype, config: ModelConfig, reader: CheckpointReader) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype == "auto":
        if config.torch_dtype is not None:
            return _DTYPES[config.torch_dtype]
        names = reader.keys()
        stored = next(reader.dtype(name) for name in names if reader.dtype(name).is_floating_point)
        return stored if stored in _DTYPES.values() else torch.float32
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise InvalidArgumentError(f"dtype {dtype!r} is not supported; use 'auto', {', '.join(map(repr, DTYPE_NAMES))}")


# ----------------------------------------------------------------------------------------- loading


def _materialise(model: CausalLM, folder: Path, dtype: torch.dtype, device: torch.device) -> None:
    """Replace every meta tensor of `model` by the checkpoint's, one tensor at a time.

    The checkpoint is reopened every `_REOPEN_BYTES` of data read: converted tensors are copies, and
    closing the reader unmaps the pages they were read from, so the file's pages never pile up in RAM.
    """
    expected = dict(model.named_parameters()) | dict(model.named_buffers())
    with open_checkpoint(folder) as reader:
        groups = _reading_plan(model.config, expected, reader, folder)
    for group in groups:
        with open_checkpoint(folder) as reader:
            for name in group:
                _assign(model, name, _converted(reader.get_tensor(name), dtype, device))
    loaded = {name for group in groups for name in group}
    _initialise_missing(model, [name for name in expected if name not in loaded], folder, dtype, device)


def _reading_plan(
    config: ModelConfig, expected: dict[str, torch.Tensor], reader: CheckpointReader, folder: Path
) -> list[list[str]]:
    """Check names and shapes against the model; group the tensors to load by `_REOPEN_BYTES` of data."""
    stored = reader.keys()
    unexpected = [name for name in stored if name not in expected and not _ignorable(name, config)]
    if unexpected:
        raise CheckpointError(
            f"{folder}: tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all) does not belong to a "
            f"{config.model_type} model with this config.json; the weights and config disagree"
        )
    groups: list[list[str]] = [[]]
    group_bytes = 0
    for name in (name for name in stored if name in expected):
        shape = reader.shape(name)
        wanted = list(expected[name].shape)
        if list(shape) != wanted:
            raise CheckpointError(f"{folder}: tensor {name!r} has shape {list(shape)} but config.json implies {wanted}")
        size = math.prod(shape) * reader.dtype(name).itemsize
        if groups[-1] and group_bytes + size > _REOPEN_BYTES:
            groups.append([])
            group_bytes = 0
        groups[-1].append(name)
        group_bytes += size
    return groups


def _initialise_missing(
    model: nn.Module, missing: list[str], folder: Path, dtype: torch.dtype, device: torch.device
) -> None:
    """Allocate the missing tensors that modules create themselves and let them initialise them; refuse others."""
    if not missing:
        return
    owners = [
        (module, {f"{prefix}.{name}" for name in module.initialized_tensor_names()})
        for prefix, module in model.named_modules()
        if prefix and isinstance(module, SelfInitializing)
    ]
    created = set().union(*(names for _, names in owners))
    uncovered = [name for name in missing if name not in created]
    if uncovered:
        raise CheckpointError(
            f"{folder}: the checkpoint lacks tensor {uncovered[0]!r} ({len(uncovered)} missing in all); "
            "it is incomplete or for another architecture"
        )
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name in missing:
        meta = tensors[name]
        _assign(
            model, name, torch.empty(meta.shape, dtype=dtype if meta.is_floating_point() else meta.dtype, device=device)
        )
    for module, names in owners:
        if names.intersection(missing):
            module.initialize_parameters()


def _converted(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=old is None or old.requires_grad)
    else:
        owner._buffers[leaf] = tensor


def _ignorable(name: str, config: ModelConfig) -> bool:
    """Checkpoint tensors transformers also skips: old RoPE buffers, a stored copy of a tied LM head."""
    return name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_word_embeddings)


# ----------------------------------------------------------------------------------------- saving


def _hf_state_dict(model: CausalLM) -> dict[str, torch.Tensor]:
    """The model's tensors under Hugging Face names; refuse extra (adapter) or missing tensors."""
    with torch.device("meta"):
        reference = CausalLM(model.config).state_dict()
    tensors = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    extra = sorted(tensors.keys() - reference.keys())
    if extra:
        raise CheckpointError(
            f"the model holds tensor {extra[0]!r} ({len(extra)} in all) outside the Hugging Face layout; "
            "merge the adapters into the base weights before saving"
        )
    missing = sorted(reference.keys() - tensors.keys())
    if missing:
        raise CheckpointError(f"the model lacks tensor {missing[0]!r} of the Hugging Face layout; it cannot be saved")
    return {name: tensors[name] for name in reference}


def _default_generation_config(config: ModelConfig) -> dict[str, Any]:
    ids = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    return {key: list(value) if isinstance(value, tuple) else value for key, value in ids.items() if value is not None}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: not found; a model folder needs config.json next to its weights") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read as JSON ({exc}); re-download or re-save it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, not an object; re-download or re-save it")
    return data
