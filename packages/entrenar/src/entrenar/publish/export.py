"""Export a detected model folder into a staging folder, exactly as it will be uploaded.

Three layouts come out (DESIGN.md section 5):

- ``model``: the Hugging Face layout ``transformers.AutoModelForCausalLM.from_pretrained`` loads:
  safetensors weights (shards of at most ``max_shard_size`` + ``model.safetensors.index.json`` when
  larger), ``config.json``, ``generation_config.json`` and the tokenizer files. A LoRA/QLoRA adapter
  is merged into its base on disk, tensor by tensor (`entrenar.lora.merge_adapter_into_checkpoint`):
  ``W' = W + scaling * B @ A`` in float32, stored in the base checkpoint's dtype (16 or 32-bit). For
  QLoRA the base is the original 16/32-bit checkpoint, the one NF4 was computed from: the merge never
  happens in 4 bits (https://arxiv.org/abs/2305.14314 trains on de-quantized weights; a 4-bit merge
  would re-quantize the sum). A full fine-tune's files are copied as they are.
- ``adapter``: the PEFT layout (``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer
  files) that ``peft.PeftModel.from_pretrained`` loads; with ``base_model`` given, the adapter
  config's ``base_model_name_or_path`` is rewritten to it (and its ``revision`` cleared).
- ``gguf``: one ``<name>-<TYPE>.gguf`` file per requested file type (``q4_k_m,q8_0``: llama-quantize's
  types, our quantizers) from the merged model (`aprender.format.gguf_export`).

An adapter trained on a pruned base (``prune:``; ``final_model.json``'s ``prune.masks`` names its masks file)
is merged into the masked base and the merged weights are masked again, so the published model keeps the
configured sparsity; `remask_change` measures what the re-masking changed in the logits
(``ExportedModel.remask``, shown on the model card). Whatever is pruned (a full model with a ``prune`` record, an
adapter with masks, or a pruned base an adapter without masks is merged into: `entrenar.prune.marks`) gets its
zeros counted again in the merged weights and in the GGUF file's decoded tensors, and the export says plainly
whether they were kept (``ExportedModel.sparsity``, reported and shown on the card).

Tokenizer files and ``generation_config.json`` of the training output win over the base model's: the
run may have changed the chat template. The base model is a local folder, a ``.gguf`` file (converted
once into a cached folder) or a Hub id, downloaded into the standard HF cache, classified and fetched by
`aprender.reference`; with ``offline=True`` (``--dry-run``) only the cache is used and no request is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aprender.atomic import atomic_write_json
from aprender.constants import (
    GENERATION_CONFIG_NAME,
    REPOCARD_NAME,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
    TOKENIZER_FILES,
)
from aprender.errors import HubOfflineError, ModelReferenceError
from aprender.format.gguf_export import export_gguf
from aprender.format.gguf_mixtures import FileType, file_types
from aprender.reference import classify_model_reference, resolve_model_folder
from entrenar.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    COPIED_FILES,
    PUBLISH_FORMATS,
)
from entrenar.display import Report
from entrenar.errors import PublishError
from entrenar.lora.merge import merge_adapter_into_checkpoint
from entrenar.prune.marks import SparsityMark, adapter_masks, check_folder, check_gguf, mark_of, read_mark
from entrenar.publish.card import Layout
from entrenar.publish.detect import ModelFolder
from entrenar.quant.qat_export import export_line

__all__ = ["ExportedModel", "export_model", "gguf_file_types", "plan_layout", "remask_change", "resolve_base_model"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedModel:
    """What `export_model` wrote.

    Attributes:
        folder: The staging folder.
        layout: ``"model"``, ``"adapter"`` or ``"gguf"``.
        files: Paths written, relative to `folder`.
        base_dir: The base model folder used (merged into, or found locally), or None.
        gguf_file: Name of the (first) GGUF file (``layout="gguf"`` only).
        remask: For a merged adapter on a pruned base: the max abs logit change re-masking made on a fixed
            input, the input, and how many merged weights it set to zero; else None.
        sparsity: For a pruned model: whether the merged weights and the GGUF files kept its zeros
            (`entrenar.prune.marks.SparsityCheck.record`), in the order checked.
        gguf_files: Every GGUF file, in the order of the requested types (``layout="gguf"`` only).
    """

    folder: Path
    layout: Layout
    files: list[str]
    base_dir: Path | None = None
    gguf_file: str | None = None
    remask: dict[str, Any] | None = None
    sparsity: tuple[dict[str, Any], ...] = ()
    gguf_files: tuple[str, ...] = ()


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` for the block (aprender.hub reads it at call time), then restore it."""
    if not enabled:
        yield
        return
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def resolve_base_model(reference: str, revision: str | None, *, offline: bool, weights: bool = True) -> Path:
    """Find the base model folder: a local folder, a converted .gguf file, or a Hub id fetched into the HF cache.

    Args:
        reference: A folder, a ``.gguf`` file or a Hub repo id.
        revision: The Hub revision to use (ignored for a local reference).
        offline: Use the HF cache only; make no request.
        weights: Hub only: fetch the weights for merging (False: only ``config.json``, the generation config
            and ``README.md``, for the card's license).

    Returns:
        The folder.

    Raises:
        PublishError: `reference` is neither a folder or .gguf file nor a Hub id; or `offline` and the Hub
            model is not in the cache.
        HubError: The download failed (not found, no access, unreachable).
    """
    try:
        base = classify_model_reference(reference)
    except ModelReferenceError as exc:
        raise PublishError(
            f"base model {reference!r} is neither a folder here nor a Hub id like 'Qwen/Qwen2.5-0.5B'; "
            "pass --base-model with the base model's folder, .gguf file or Hub id"
        ) from exc
    try:
        with _offline(offline):
            return resolve_model_folder(
                base,
                revision if base.kind == "hub" else None,
                weights=weights,
                tokenizer=False,
                extra_files=[REPOCARD_NAME],  # the base's license, for the card
            )
    except HubOfflineError as exc:
        raise PublishError(
            f"base model {reference} is not in the HF cache and --dry-run makes no request; run once without "
            "--dry-run, or pass --base-model with a local folder"
        ) from exc


def plan_layout(model: ModelFolder, merge_adapters: bool | None, fmt: str) -> Layout:
    """The layout `export_model` writes for these options; checks them against the folder without writing.

    Raises:
        PublishError: An unknown format, ``merge_adapters`` set for a full model, or gguf without merging.
    """
    if fmt not in PUBLISH_FORMATS:
        raise PublishError(f"format {fmt!r} is not supported; use one of {', '.join(PUBLISH_FORMATS)}")
    if model.kind == "full":
        if merge_adapters is not None:
            raise PublishError(
                f"{model.path}: holds a full model, so --merge-adapters/--no-merge-adapters does not apply; drop it"
            )
        return "gguf" if fmt == "gguf" else "model"
    merge = True if merge_adapters is None else merge_adapters
    if not merge and fmt == "gguf":
        raise PublishError("--format gguf needs merged weights; drop --no-merge-adapters or publish safetensors")
    if not merge:
        return "adapter"
    return "gguf" if fmt == "gguf" else "model"


def export_model(
    model: ModelFolder,
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    merge_adapters: bool | None = None,
    base_model: str | None = None,
    fmt: str = "safetensors",
    gguf_type: str = "f16",
    offline: bool = False,
    max_shard_size: int | str = "5GB",
    report: Report = _LOG.info,
) -> ExportedModel:
    """Write what will be uploaded (without the model card) into `out_dir`.

    Says what it does through `report`: ``Merging LoRA adapters with base model...`` (adapters into a
    model or GGUF), then ``Exporting as SafeTensors...``, ``Exporting as GGUF (Q8_0)...`` or ``Exporting the
    LoRA adapter (PEFT, SafeTensors)...``.

    Args:
        model: The detected folder.
        out_dir: The staging folder (created; should be empty).
        name: The model's name (the repo name): the GGUF file name and its ``general.name``.
        merge_adapters: Adapters only: merge into the base (True) or publish the adapter alone (False);
            None merges. Must be None for a full model.
        base_model: The base model (folder or Hub id) to merge into, overriding the adapter's
            ``base_model_name_or_path``; for an adapter published alone, the id written into its config.
        fmt: ``"safetensors"`` or ``"gguf"``.
        gguf_type: A llama-quantize file type (``"f16"``, ``"q8_0"``, ``"q4_k_m"`` ...) or a comma-separated
            list of them, one file each (``fmt="gguf"`` only); not one that needs an importance matrix.
        offline: Use only local files and the HF cache (a dry run).
        max_shard_size: Largest merged safetensors shard, bytes or e.g. ``"5GB"``.
        report: Told each step (default: this module's logger, at INFO).

    Returns:
        The `ExportedModel`.

    Raises:
        PublishError: Options that do not fit the folder, or no usable base model.
        LoraError: The adapter does not fit the base model.
        ConversionError, TokenizerError: The model cannot be written as GGUF.
        HubError: Downloading the base model failed.
    """
    layout = plan_layout(model, merge_adapters, fmt)
    kinds = gguf_file_types(gguf_type) if fmt == "gguf" else ()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "adapter":
        report("Exporting the LoRA adapter (PEFT, SafeTensors)...")
        _write_adapter(model, out, base_model)
        return ExportedModel(out, layout, _listing(out), _local_base(model, base_model))
    if model.kind != "full":
        report("Merging LoRA adapters with base model...")
    if layout == "model":
        report("Exporting as SafeTensors...")  # a merge writes the exported shards as it goes
        written = _write_model(model, out, base_model, offline, max_shard_size, report)
        return ExportedModel(out, layout, _listing(out), written.base_dir, None, written.remask, written.checks)
    names: list[str] = []
    checks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="entrenar-gguf-") as work:
        written = _write_model(model, Path(work), base_model, offline, max_shard_size, report)
        checks.extend(written.checks)
        for kind in kinds:
            gguf_name = f"{name}-{kind.name}.gguf"
            report(f"Exporting as GGUF ({kind.name}): {gguf_name}...")
            export_gguf(work, out / gguf_name, gguf_type=kind.name, name=name)
            names.append(gguf_name)
            qat = export_line(model.record, kind.name)
            if qat is not None:
                report(qat)
            if written.mark is not None:
                check = check_gguf(written.mark, f"the GGUF file ({kind.name})", out / gguf_name)
                report(check.line())
                checks.append(check.record())
    listing = _listing(out)
    return ExportedModel(out, layout, listing, written.base_dir, names[0], written.remask, tuple(checks), tuple(names))


def gguf_file_types(text: str) -> tuple[FileType, ...]:
    """The file types ``--gguf-type`` lists (`aprender.format.gguf_mixtures.file_types`) that publishing writes.

    Raises:
        InvalidArgumentError: An unknown or repeated type.
        PublishError: A type that needs an importance matrix (publishing computes none).
    """
    kinds = file_types(text)
    calibrated = [kind.name for kind in kinds if kind.needs_imatrix]
    if calibrated:
        raise PublishError(
            f"GGUF type {calibrated[0]} needs an importance matrix, which publishing does not compute; use "
            "entrenar quantize --calibration, or another type"
        )
    return kinds


@dataclass(frozen=True)
class _Written:
    """What `_write_model` did: the base folder (merged into, or found locally), what re-masking changed
    (`remask_change`), the pruned model's mark and the checks of its zeros so far."""

    base_dir: Path | None
    remask: dict[str, Any] | None = None
    mark: SparsityMark | None = None
    checks: tuple[dict[str, Any], ...] = ()


def _write_model(
    model: ModelFolder, out: Path, base_model: str | None, offline: bool, max_shard_size: int | str, report: Report
) -> _Written:
    """Write the Hugging Face layout into `out` (a full model's files copied, an adapter merged into its base)."""
    if model.kind == "full":
        for name in [*_weight_files(model.path), *COPIED_FILES]:
            if (model.path / name).is_file():
                shutil.copyfile(model.path / name, out / name)
        return _Written(_local_base(model, base_model), mark=mark_of(model.record, "this model"))
    reference, revision = _base_reference(model, base_model)
    base_dir = resolve_base_model(reference, revision, offline=offline)
    masks = adapter_masks(model.path)
    merge_adapter_into_checkpoint(base_dir, model.path, out, max_shard_size=max_shard_size, masks=masks)
    for name in (GENERATION_CONFIG_NAME, *TOKENIZER_FILES):
        if (model.path / name).is_file():
            shutil.copyfile(model.path / name, out / name)
    remask = None
    if masks is None:
        mark = read_mark(base_dir)
        what = "the merged model (the adapter's update added without re-masking)"
    else:
        report("Re-masking the merged weights of the pruned base...")
        remask = remask_change(out, base_dir, model.path, masks)
        mark, what = mark_of(model.record, f"the base model {reference}"), "the merged model (re-masked)"
    if mark is None:
        return _Written(base_dir, remask)
    check = check_folder(mark, what, out)
    report(check.line())
    return _Written(base_dir, remask, mark, (check.record(),))


REMASK_INPUT = 16
"""The fixed input of `remask_change`: token ids 0, 1, ..., 15 (one sequence)."""


@torch.no_grad()
def remask_change(merged_dir: Path, base_dir: Path, adapter_dir: Path, masks: dict[str, Tensor]) -> dict[str, Any]:
    """Max abs logit change re-masking made: the re-masked merged model against base-masked + adapter (what trained).

    The merged model is loaded once in float32; each adapted, masked weight is swapped for its merge without the
    final mask (re-read from the base, one tensor at a time) for the second forward pass.

    Returns:
        ``max_abs_logit_change``, ``input`` (in words) and ``remasked_weights`` (merged weights re-masking zeroed).
    """
    from aprender.format.safetensors import open_checkpoint
    from entrenar.lora.merge import merge_weight
    from entrenar.lora.peft_io import read_adapter_config, read_adapter_weights
    from entrenar.models import from_pretrained

    model = from_pretrained(merged_dir, dtype="float32", device=torch.device("cpu")).eval()
    ids = torch.arange(REMASK_INPUT).remainder(model.config.vocab_size)[None]
    remasked = model(ids)
    config, adapters, changed = read_adapter_config(adapter_dir).lora, read_adapter_weights(adapter_dir), 0
    with open_checkpoint(base_dir) as reader:
        for key, mask in masks.items():
            tensors = adapters.get(key.removesuffix(".weight"))
            if tensors is None:
                continue  # no adapter on this weight: the merge is the masked base, re-masking changes nothing
            base = reader.get_tensor(key).masked_fill(~mask, 0)
            unmasked = merge_weight(base, tensors, config.for_module(key.removesuffix(".weight")))
            changed += int((unmasked[~mask] != 0).sum())
            model.get_parameter(key).copy_(unmasked.float())
    trained = model(ids)
    return {
        "max_abs_logit_change": float((remasked - trained).abs().max()),
        "input": f"token ids 0-{REMASK_INPUT - 1}",
        "remasked_weights": changed,
    }


def _base_reference(model: ModelFolder, base_model: str | None) -> tuple[str, str | None]:
    if base_model is not None:
        return base_model, None
    if model.base_model is None:
        raise PublishError(
            f"{model.path}: {ADAPTER_CONFIG_NAME} names no base model (base_model_name_or_path); "
            "pass --base-model with the base model's folder, .gguf file or Hub id"
        )
    return model.base_model, model.base_revision


def _local_base(model: ModelFolder, base_model: str | None) -> Path | None:
    """The base folder when it is on this machine (a folder, or in the HF cache), for the card's license.

    Nothing is downloaded or converted: publishing an adapter alone or a full model needs no base weights,
    and a GGUF file carries no model card to take a license from.
    """
    reference = base_model or model.base_model
    if reference is None:
        return None
    revision = None if base_model else model.base_revision
    try:
        if classify_model_reference(reference).kind == "gguf":
            return None
        return resolve_base_model(reference, revision, offline=True, weights=False)
    except (ModelReferenceError, PublishError):
        return None


def _write_adapter(model: ModelFolder, out: Path, base_model: str | None) -> None:
    shutil.copyfile(model.path / ADAPTER_WEIGHTS_NAME, out / ADAPTER_WEIGHTS_NAME)
    config = json.loads((model.path / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    if base_model is not None:
        config["base_model_name_or_path"] = base_model
        config["revision"] = None
    atomic_write_json(out / ADAPTER_CONFIG_NAME, config)
    for name in TOKENIZER_FILES:
        if (model.path / name).is_file():
            shutil.copyfile(model.path / name, out / name)


def _weight_files(folder: Path) -> list[str]:
    index = folder / SAFETENSORS_INDEX_FILE
    if not index.is_file():
        return [SAFETENSORS_SINGLE_FILE]
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise PublishError(f"{index}: not a safetensors index with a weight_map ({exc}); re-save the model") from exc
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise PublishError(f"{index}: lists shard {missing[0]} that is not in {folder}; re-save the model")
    return [SAFETENSORS_INDEX_FILE, *shards]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
