"""Extract a LoRA adapter from a fine-tuned model (``entrenar extract-lora``), so a full fine-tune or a merge
ships as a PEFT adapter of its base.

Each linear layer whose weight changed (every one PEFT's ``all-linear`` selects, plus an untied ``lm_head``)
has its change ``delta = W_ft - W_base`` (float32) factored by a truncated SVD, ``delta ~= U_r S_r V_r^T``:
the best rank-r approximation in Frobenius norm (Eckart-Young), as mergekit's ``mergekit-extract-lora``
does. The LoRA factors (Hu et al. 2021, https://arxiv.org/abs/2106.09685) split the singular values evenly:
``A = sqrt(S_r) V_r^T`` (r, in) and ``B = U_r sqrt(S_r)`` (out, r).

The rank is fixed (capped at ``min(out, in)`` per layer) or, with an energy threshold, per layer the
smallest rank keeping that fraction of the squared singular values (`energy_rank`). The adapter's ``r``
is the most common layer rank and ``lora_alpha = r``; PEFT's ``rank_pattern`` lists the layers of
another rank r_i. Such a layer's scaling is ``r / r_i``, so its factors are divided by ``sqrt(r / r_i)``
and ``scaling * B @ A`` is the approximation in every layer (no ``alpha_pattern`` needed).

LoRA cannot express a change outside the linear layers (norms, biases, embeddings and so a tied head):
such changes are refused, naming their count and the largest relative change, unless `allow_lossy`
drops them (they are listed in ``final_model.json``). Layers that did not change get no adapter.

Both checkpoints are read tensor by tensor (``aprender.format.safetensors.open_checkpoint``), one pair
at a time, in two passes: the cheap comparison of the other tensors first, so a refusal comes before
any SVD, then the linear layers. The adapter is held until written (a single PEFT file).

The output folder is written in a temporary sibling and renamed into place, so it appears complete or
not at all: ``adapter_config.json`` + ``adapter_model.safetensors`` (``base_model_name_or_path``: the
base reference, a local one as an absolute path), ``generation_config.json`` and the tokenizer files of
the fine-tuned folder, and ``final_model.json`` (``output: adapter``; ``techniques``: the fine-tuned
record's, then ``extract-lora``), so ``entrenar publish`` takes the folder.

Example:
    >>> result = extract_lora("out/full-ft", "Qwen/Qwen2.5-0.5B", "out/adapter", rank=64)  # doctest: +SKIP
    >>> max(layer.relative_error for layer in result.layers)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aprender.atomic import atomic_write_json, temp_path
from aprender.constants import CHAT_TEMPLATE_DIR, GENERATION_CONFIG_NAME, TOKENIZER_FILES
from aprender.format.safetensors import CheckpointReader, open_checkpoint
from aprender.reference import ModelReference, classify_model_reference, resolve_model_folder
from entrenar.constants import FINAL_MODEL_NAME
from entrenar.errors import MergeError
from entrenar.lora.config import LoraConfig
from entrenar.lora.peft_io import AdapterConfig, save_adapter_weights
from entrenar.models.config import ModelConfig

__all__ = ["ExtractedLayer", "Extraction", "LossyChange", "energy_rank", "extract_lora", "truncated_factors"]

TECHNIQUE = "extract-lora"
# ModelConfig fields that an adapter does not depend on: token ids, the stored dtype, training dropout.
_NOT_ARCHITECTURE = {"bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "attention_dropout"}
# The squared-singular-value sums are float64; a threshold met up to rounding counts as met.
_ENERGY_SLACK = 1e-12


@dataclass(frozen=True)
class ExtractedLayer:
    """One adapted layer.

    Attributes:
        path: The module path, e.g. ``model.layers.0.self_attn.q_proj``.
        rank: The rank kept.
        max_rank: ``min(out, in)``: the rank that reproduces the change exactly.
        relative_error: ``||delta - B @ A||_F / ||delta||_F``, from the dropped singular values.
    """

    path: str
    rank: int
    max_rank: int
    relative_error: float


@dataclass(frozen=True)
class LossyChange:
    """A changed tensor LoRA cannot express: its name and ``||W_ft - W_base||_F / ||W_base||_F``."""

    name: str
    relative_change: float


@dataclass(frozen=True)
class Extraction:
    """What `extract_lora` wrote.

    Attributes:
        out_dir: The adapter folder.
        layers: The adapted layers, in checkpoint order.
        unchanged: Paths of linear layers equal in both models (no adapter).
        dropped: Changes outside linear layers that were dropped (`allow_lossy`).
        files: The files written.
    """

    out_dir: Path
    layers: tuple[ExtractedLayer, ...]
    unchanged: tuple[str, ...]
    dropped: tuple[LossyChange, ...]
    files: tuple[Path, ...]


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """The smallest rank k whose singular values keep a fraction `energy` of the squared total.

    Args:
        singular_values: (n,) in decreasing order, not all zero.
        energy: The fraction to keep, in (0, 1].

    Returns:
        k in [1, n] with ``sum(s[:k]^2) >= energy * sum(s^2)``.
    """
    kept = singular_values.double().square().cumsum(0)
    target = energy * kept[-1].item() * (1 - _ENERGY_SLACK)
    return min(int((kept < target).sum().item()) + 1, kept.numel())


def truncated_factors(
    delta: Tensor, *, rank: int | None = None, energy: float | None = None
) -> tuple[Tensor, Tensor, float]:
    """LoRA factors of a weight change by truncated SVD (module docstring), with scaling 1.

    Args:
        delta: (out, in), not all zero.
        rank: Keep this many singular values (capped at ``min(out, in)``).
        energy: Keep the fraction of squared singular values `energy_rank` says (instead of `rank`).
            Neither set: full rank.

    Returns:
        ``(A (r, in), B (out, r), relative_error)`` in float32, on `delta`'s device, with ``B @ A ~= delta``.
    """
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    k = energy_rank(s, energy) if energy is not None else min(rank or s.numel(), s.numel())
    root = s[:k].sqrt()
    squares = s.double().square()
    error = math.sqrt(squares[k:].sum().item() / squares.sum().item())
    return root[:, None] * vh[:k], u[:, :k] * root, error


def extract_lora(
    model: str | os.PathLike[str],
    base: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    rank: int | None = None,
    energy: float | None = None,
    allow_lossy: bool = False,
    device: str = "cpu",
) -> Extraction:
    """Write the LoRA adapter that turns `base` into (an approximation of) `model` (module docstring).

    Args:
        model: The fine-tuned model: a folder, a ``.gguf`` file or a Hub repo id.
        base: The base model it was fine-tuned from (same kinds).
        out_dir: The adapter folder to create (it must not exist, or be empty).
        rank: Rank per layer (capped at ``min(out, in)``); or
        energy: per layer, the fraction of squared singular values to keep, in (0, 1]. Exactly one is set.
        allow_lossy: Drop changes outside linear layers instead of refusing them.
        device: Where the SVDs run (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).

    Returns:
        What was written.

    Raises:
        MergeError: Not exactly one of rank/energy or a value out of range, `out_dir` not empty, models of
            different architectures or tensor shapes, changes LoRA cannot express (without `allow_lossy`),
            no linear layer changed, or an unusable device.
        ModelReferenceError, HubError, CheckpointError, ModelConfigError, FormatError: A model cannot be
            found, downloaded or read.
    """
    _check_rule(rank, energy)
    math_device = _device(device)
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MergeError(f"{out}: exists and is not an empty folder; pass a new output folder with -o")
    base_ref, model_ref = classify_model_reference(base), classify_model_reference(model)
    base_dir, model_dir = resolve_model_folder(base_ref), resolve_model_folder(model_ref)
    config = _same_architecture(base_dir, model_dir)
    linears = _linear_weights(config)
    with open_checkpoint(base_dir) as base_ckpt, open_checkpoint(model_dir) as model_ckpt:
        _check_same_tensors(base_ckpt, model_ckpt, model_dir)
        dropped = _lossy_changes(base_ckpt, model_ckpt, linears)
        if dropped and not allow_lossy:
            worst = max(dropped, key=lambda change: change.relative_change)
            raise MergeError(
                f"{model_dir}: {len(dropped)} tensor(s) outside linear layers differ from the base (largest relative "
                f"change {worst.relative_change:.3g} in {worst.name}); LoRA cannot express them: "
                "--allow-lossy (allow_lossy=True) drops them"
            )
        weights, layers, unchanged = _extract_layers(base_ckpt, model_ckpt, linears, rank, energy, math_device)
    if not layers:
        raise MergeError(f"{model_dir}: no linear layer differs from the base {base_dir}; there is nothing to extract")
    lora = _fold_scaling(weights, layers)
    adapter = AdapterConfig(lora, base_ref.location, None)
    record = _record(base_ref, base_dir, model_ref, model_dir, rank, energy, layers, unchanged, dropped)
    files = _write_folder(out, weights, adapter, model_dir, record)
    return Extraction(out, tuple(layers), tuple(unchanged), tuple(dropped), tuple(files))


def _check_rule(rank: int | None, energy: float | None) -> None:
    if (rank is None) == (energy is None):
        raise MergeError("pass exactly one of a rank (--rank) or an energy threshold (--energy)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise MergeError(f"rank {rank!r} must be an integer >= 1")
    if energy is not None and not 0 < energy <= 1:
        raise MergeError(f"energy {energy!r} must lie in (0, 1], e.g. 0.99 keeps 99% of each change's energy")


def _device(device: str) -> torch.device:
    try:
        math_device = torch.device(device)
    except RuntimeError as exc:
        raise MergeError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    if math_device.type == "cuda" and not torch.cuda.is_available():
        raise MergeError(f"device {device!r}: no CUDA GPU is available here; use cpu")
    return math_device


def _same_architecture(base_dir: Path, model_dir: Path) -> ModelConfig:
    """The base's config, once the fine-tuned model's agrees with it in every field an adapter depends on."""
    from entrenar.models import read_config

    base, tuned = read_config(base_dir), read_config(model_dir)
    for field in fields(ModelConfig):
        ours, theirs = getattr(base, field.name), getattr(tuned, field.name)
        if field.name not in _NOT_ARCHITECTURE and ours != theirs:
            raise MergeError(
                f"{model_dir}: config.json {field.name} is {theirs!r} but the base {base_dir} has {ours!r}; "
                "an adapter only changes weights, so pass the base this model was fine-tuned from"
            )
    return base


def _linear_weights(config: ModelConfig) -> dict[str, str]:
    """Checkpoint key -> module path of every linear layer (an untied ``lm_head`` included)."""
    from entrenar.lora.targeting import linear_modules
    from entrenar.models import CausalLM

    with torch.device("meta"):
        model = CausalLM(config)
    return {f"{path}.weight": path for path in linear_modules(model)}


def _check_same_tensors(base: CheckpointReader, model: CheckpointReader, model_dir: Path) -> None:
    base_keys, model_keys = set(base.keys()), set(model.keys())
    if base_keys != model_keys:
        name = min(base_keys ^ model_keys)
        side = "the base" if name in base_keys else "the fine-tuned model"
        raise MergeError(f"{model_dir}: tensor {name!r} is only in {side}; the models differ in architecture")
    for name in list(base.keys()):
        if base.shape(name) != model.shape(name):
            raise MergeError(
                f"{model_dir}: tensor {name!r} has shape {list(model.shape(name))} but the base's is "
                f"{list(base.shape(name))}; the models differ in architecture"
            )


def _lossy_changes(base: CheckpointReader, model: CheckpointReader, linears: dict[str, str]) -> list[LossyChange]:
    """The tensors outside linear layers that changed, with their relative change."""
    changes = []
    for name in list(base.keys()):
        if name in linears:
            continue
        before = base.get_tensor(name).float()
        change = (model.get_tensor(name).float() - before).norm().item()
        if change > 0:
            norm = before.norm().item()
            changes.append(LossyChange(name, change / norm if norm > 0 else math.inf))
    return changes


def _extract_layers(
    base: CheckpointReader,
    model: CheckpointReader,
    linears: dict[str, str],
    rank: int | None,
    energy: float | None,
    device: torch.device,
) -> tuple[dict[str, dict[str, Tensor]], list[ExtractedLayer], list[str]]:
    """Factor each changed linear layer: (path -> {lora_A, lora_B} with scaling 1, the layers, unchanged paths)."""
    weights: dict[str, dict[str, Tensor]] = {}
    layers: list[ExtractedLayer] = []
    unchanged: list[str] = []
    for name in list(base.keys()):
        path = linears.get(name)
        if path is None:
            continue
        delta = model.get_tensor(name).to(device, torch.float32) - base.get_tensor(name).to(device, torch.float32)
        if not delta.any():
            unchanged.append(path)
            continue
        lora_a, lora_b, error = truncated_factors(delta, rank=rank, energy=energy)
        weights[path] = {"lora_A": lora_a.cpu(), "lora_B": lora_b.cpu()}
        layers.append(ExtractedLayer(path, lora_a.shape[0], min(delta.shape), error))
    return weights, layers, unchanged


def _fold_scaling(weights: dict[str, dict[str, Tensor]], layers: list[ExtractedLayer]) -> LoraConfig:
    """The adapter's config (r: the most common rank, alpha = r, rank_pattern for the others); each other layer's
    factors divided by sqrt(r / r_i) so that its scaling times B @ A stays the approximation."""
    counts = Counter(layer.rank for layer in layers)
    common = max(counts, key=lambda r: (counts[r], r))
    pattern = {layer.path: layer.rank for layer in layers if layer.rank != common}
    for path, layer_rank in pattern.items():
        root = math.sqrt(common / layer_rank)
        weights[path] = {name: tensor / root for name, tensor in weights[path].items()}
    return LoraConfig(rank=common, alpha=common, target_modules=tuple(weights), rank_pattern=pattern)


def _record(
    base_ref: ModelReference,
    base_dir: Path,
    model_ref: ModelReference,
    model_dir: Path,
    rank: int | None,
    energy: float | None,
    layers: list[ExtractedLayer],
    unchanged: list[str],
    dropped: list[LossyChange],
) -> dict[str, Any]:
    """``final_model.json``: the base, ``output: adapter``, the techniques, and how the adapter was extracted."""
    from entrenar.publish.detect import detect_model_folder, read_training_record
    from entrenar.train.outputs import package_versions

    earlier = list(detect_model_folder(model_dir).techniques) if read_training_record(model_dir) else []
    hub = base_ref.kind == "hub"
    worst = max(layers, key=lambda layer: layer.relative_error)
    return {
        "base_model": {
            "path": base_ref.location,
            "source": "hub" if hub else "local",
            "revision": None,
            "resolved_revision": base_dir.name if hub else None,
        },
        "output": "adapter",
        "techniques": [*earlier, TECHNIQUE],
        "extract_lora": {
            "model": model_ref.location,
            "rank": rank,
            "energy": energy,
            "layers": len(layers),
            "unchanged_layers": len(unchanged),
            "max_relative_error": {"layer": worst.path, "value": worst.relative_error},
            "dropped": {change.name: change.relative_change for change in dropped},
        },
        "packages": package_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_folder(
    out: Path, weights: dict[str, dict[str, Tensor]], adapter: AdapterConfig, model_dir: Path, record: dict[str, Any]
) -> list[Path]:
    """Write everything into a temporary sibling of `out`, then rename it to `out` (an empty `out` is replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_path(out)
    staging.mkdir()  # not mkdtemp: its 0700 mode would become the output folder's
    try:
        names = [path.name for path in save_adapter_weights(weights, staging, adapter, list(weights))]
        for name in (GENERATION_CONFIG_NAME, *TOKENIZER_FILES):
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, staging / name)
                names.append(name)
        if (model_dir / CHAT_TEMPLATE_DIR).is_dir():
            shutil.copytree(model_dir / CHAT_TEMPLATE_DIR, staging / CHAT_TEMPLATE_DIR)
            names.append(CHAT_TEMPLATE_DIR)
        atomic_write_json(staging / FINAL_MODEL_NAME, record)
        names.append(FINAL_MODEL_NAME)
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]
