"""Fold LoRA adapters into base weights: in memory (`merge_and_unload`) or on disk (`merge_adapter_into_checkpoint`).

Both use the same arithmetic as `LoRALinear.merge` (float32, then the base dtype):
``W' = W + scaling * B @ A`` (Hu et al. 2021, https://arxiv.org/abs/2106.09685), DoRA
``W' = m / ||W + scaling * B @ A||_row * (W + scaling * B @ A)`` (https://arxiv.org/abs/2402.09353), and for a
PiSSA adapter W is first replaced by its residual ``W - scaling * B0 @ A0`` (the same SVD PEFT runs when it
loads one; https://arxiv.org/abs/2404.02948). So a checkpoint merged on disk equals the in-memory merge, and
PEFT's ``merge_and_unload``.

The on-disk merge reads the base checkpoint lazily (``aprender.format.safetensors.open_checkpoint``: one
tensor at a time through mmap), merges each targeted weight as it is read and hands every tensor to a
``CheckpointWriter``, which writes a shard as soon as it is full. Peak memory is the base file's mapped
pages plus one output shard and the adapter, not a second copy of the model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import Tensor, nn

from aprender.atomic import atomic_write
from aprender.format.safetensors import CheckpointReader, CheckpointWriter, open_checkpoint
from entrenar.constants import COPIED_FILES
from entrenar.errors import LoraError
from entrenar.lora.config import LoraConfig
from entrenar.lora.linear import dora_merge, lora_delta, pissa_split
from entrenar.lora.peft_io import read_adapter_config, read_adapter_weights
from entrenar.lora.targeting import lora_modules

__all__ = ["merge_adapter_into_checkpoint", "merge_and_unload", "merge_weight"]


def merge_weight(weight: Tensor, tensors: dict[str, Tensor], config: LoraConfig) -> Tensor:
    """One base weight with its adapter folded in, in the base weight's dtype.

    Args:
        weight: W (out, in) as stored in the base checkpoint.
        tensors: ``lora_A`` (r, in), ``lora_B`` (out, r) and, with DoRA, ``lora_magnitude_vector`` (out,).
        config: The adapter's settings (scaling, DoRA, PiSSA).

    Returns:
        The merged W' (out, in), same dtype as `weight`.
    """
    if config.init == "pissa":  # the adapter was trained on the residual PEFT and LoRALinear derive from W
        weight = pissa_split(weight, config.rank, config.scaling)[2].to(weight.dtype)
    delta = lora_delta(tensors["lora_A"], tensors["lora_B"], config.scaling)
    if config.use_dora:
        merged = dora_merge(weight, delta, tensors["lora_magnitude_vector"])[0]
    else:
        merged = weight.float() + delta
    return merged.to(weight.dtype)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter and replace each `LoRALinear` by a plain ``nn.Linear`` with the merged weight.

    Args:
        model: A model with dense-based `LoRALinear` layers (modified in place).

    Returns:
        The same model, now in the base architecture (``entrenar.models.save_pretrained`` can write it).

    Raises:
        LoraError: A layer's base is quantized (merge on disk into the de-quantized checkpoint instead).
    """
    for path, module in lora_modules(model).items():
        module.disabled = False
        module.merge()
        weight, bias = module.weight, module.bias
        assert isinstance(weight, nn.Parameter)  # merge() refuses quantized bases
        linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta")
        linear.weight = weight
        if isinstance(bias, nn.Parameter):
            linear.bias = bias
        parent_path, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent_path), leaf, linear)
    return model


def merge_adapter_into_checkpoint(
    base_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    masks: dict[str, Tensor] | None = None,
) -> list[Path]:
    """Write base + adapter as a plain Hugging Face checkpoint, merging and writing tensor by tensor.

    With `masks` (a pruned base, ``entrenar.train.pruning``) each masked base tensor is masked before the merge,
    so the adapter is folded into the weight it was trained on, and the merged tensor is masked again, so the
    published model keeps the sparsity (the update ``scaling * B @ A`` is dropped where the mask is False).

    The weights are streamed through a `CheckpointWriter`: a failure leaves `out_dir`'s previous weights as they were.

    Args:
        base_dir: The base model folder (safetensors, single or sharded, plus config.json).
        adapter_dir: A PEFT-format adapter folder trained on that base.
        out_dir: Output folder (created; must not be `base_dir`). Gets the merged weights and the base's
            config, generation config and tokenizer files (`COPIED_FILES` that exist).
        max_shard_size: Largest output shard, bytes or a string such as ``"5GB"``.
        masks: Checkpoint key -> boolean keep-mask of the base's shape; None: no masking.

    Returns:
        The files written: weights (and index), then the copied files.

    Raises:
        LoraError: `out_dir` is `base_dir`, or the adapter names a weight the base lacks or mis-shaped.
        FormatError: A corrupt base checkpoint.
    """
    base, out = Path(base_dir), Path(out_dir)
    if out.resolve() == base.resolve():
        raise LoraError(f"out_dir {out} is the base folder; write the merged model to a new folder")
    config = read_adapter_config(adapter_dir).lora
    adapters = read_adapter_weights(adapter_dir)
    with open_checkpoint(base) as reader:
        targets = _target_keys(reader, adapters, config, base)
        with CheckpointWriter(out, max_shard_size=max_shard_size) as writer:
            for name in list(reader.keys()):
                tensor = reader.get_tensor(name)
                mask = None if masks is None else masks.get(name)
                if mask is not None:
                    tensor = tensor.masked_fill(~mask, 0)
                path = targets.get(name)
                if path is not None:
                    tensor = merge_weight(tensor, adapters.pop(path), config.for_module(path))
                    if mask is not None:
                        tensor = tensor.masked_fill(~mask, 0)
                writer.save_tensor(name, tensor)
            written = writer.finalize()
    for name in COPIED_FILES:
        if (base / name).is_file():
            _copy(base / name, out / name)
            written.append(out / name)
    return written


def _target_keys(
    reader: CheckpointReader, adapters: dict[str, dict[str, Tensor]], config: LoraConfig, base: Path
) -> dict[str, str]:
    """Checkpoint key -> module path for every adapted weight, checked against the config and the base's shapes."""
    keys = set(reader.keys())
    targets: dict[str, str] = {}
    for path, tensors in adapters.items():
        rank = config.for_module(path).rank
        if ("lora_magnitude_vector" in tensors) != config.use_dora or tensors["lora_A"].shape[0] != rank:
            raise LoraError(
                f"{path}: the adapter's tensors disagree with its config (rank {rank}, "
                f"use_dora={config.use_dora}); re-save the adapter"
            )
        key = f"{path}.weight"
        if key not in keys:
            raise LoraError(
                f"{base}: the base checkpoint has no tensor {key!r} that the adapter targets "
                "(tied embeddings store no lm_head.weight); the adapter does not fit this base"
            )
        expected = (tensors["lora_B"].shape[0], tensors["lora_A"].shape[1])
        if reader.shape(key) != expected:
            raise LoraError(
                f"{base}: tensor {key!r} has shape {list(reader.shape(key))} but the adapter implies {list(expected)}"
            )
        targets[key] = path
    return targets


def _copy(source: Path, target: Path) -> None:
    with source.open("rb") as stream:
        atomic_write(target, lambda out: shutil.copyfileobj(stream, out))
