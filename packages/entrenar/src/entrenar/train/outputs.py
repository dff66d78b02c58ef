"""The output folder of a finished run (DESIGN.md section 4).

Files written by `write_outputs` (each atomically):

- LoRA/QLoRA: ``adapter_model.safetensors`` + ``adapter_config.json`` in PEFT's format
  (`entrenar.lora.save_adapter`); full fine-tune: ``model.safetensors`` (or shards + index) +
  ``config.json`` (`entrenar.models.save_pretrained`), in ``model.dtype`` (``auto``: the base's dtype);
- ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and ``generation_config.json``;
- ``final_model.json``, a summary that `entrenar publish` and model cards read:

  ``base_model`` {``path``, ``source`` (local|hub), ``revision``, ``resolved_revision`` (the commit of a
  Hub snapshot, else null)}, ``output`` (adapter|full: what the folder holds), ``techniques`` (what made it:
  ``lora``, ``qlora`` or ``full``; later techniques add theirs), ``config`` (the resolved config), ``steps``,
  ``epochs``, ``tokens`` {``input``, ``target``}, ``loss`` {``final_train``, ``best_train``,
  ``final_eval``, ``best_eval``, ``best_eval_step``}, ``eval`` (the last evaluation record or null), ``base_eval``
  (the base model's evaluation before the first step, or null), ``samples`` (``before``: the answers to
  ``training.sample_prompts`` at step 0, ``after``: those of ``after_step``, the last sampled step; or null),
  ``stop_reason`` (``completed`` or ``early_stopping``), ``parameters`` {``trainable``, ``total``},
  ``wall_time_s``, ``data_files`` {path: sha256}, ``packages`` {name: version}, ``created_at`` (UTC, ISO 8601);
with ``prune:`` a ``prune`` section (`entrenar.train.pruning.prune_record`: schedule, method, the zeros of each
pruned layer) and, for an adapter, the masks in ``prune_masks.safetensors``, which publishing re-applies to
the merged weights; with ``qat:`` a ``qat`` section (`entrenar.train.qat.qat_record`: the format and the quantizer
of every fake-quantized weight), which publishing and ``entrenar quantize`` read.

``metrics.jsonl`` and ``config.yaml`` are written while training (`entrenar.train.callbacks`,
`entrenar.config.write_resolved_config`).
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from aprender.atomic import atomic_write, atomic_write_json
from aprender.constants import GENERATION_CONFIG_NAME
from entrenar.config import TrainConfig, config_to_dict
from entrenar.constants import FINAL_MODEL_NAME
from entrenar.data import resolve_data_files
from entrenar.lora import save_adapter
from entrenar.models import CausalLM, save_pretrained
from entrenar.train.build import TrainingRun
from entrenar.train.checkpoint import file_sha256
from entrenar.train.estimate import count_parameters
from entrenar.train.pruning import MASKS_NAME, prune_record
from entrenar.train.qat import qat_record
from entrenar.train.setup.model import compute_dtype, lora_config_of
from entrenar.train.state import TrainState

__all__ = [
    "data_file_hashes",
    "final_model_summary",
    "package_versions",
    "techniques_of",
    "write_model_files",
    "write_outputs",
]

PACKAGES = ("entrenar", "aprender-core", "torch", "numpy", "safetensors", "tokenizers", "pyarrow")


def data_file_hashes(run: TrainingRun) -> dict[str, str]:
    """sha256 of every training and validation data file, by absolute path."""
    data = run.config.data
    paths = [data.train_path] + ([data.val_path] if data.val_path is not None else [])
    return {str(file): file_sha256(Path(file)) for path in paths for file in resolve_data_files(path)}


def package_versions() -> dict[str, str]:
    """Versions of python and of the packages that shape a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _generation_config(model: CausalLM) -> dict[str, Any]:
    if model.generation_config:
        return dict(model.generation_config)
    config = model.config
    ids = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    return {key: list(value) if isinstance(value, tuple) else value for key, value in ids.items() if value is not None}


def write_model_files(run: TrainingRun, out_dir: str | Path) -> list[Path]:
    """The trained weights (adapter or full model), tokenizer and generation config.

    A full fine-tune is converted to ``model.dtype`` in place first (its trainable weights were float32).

    Args:
        run: The trained run.
        out_dir: The output folder (created if missing).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    cfg, model = run.config, run.model
    if cfg.lora is None:
        dtype = getattr(torch, compute_dtype(model))
        if model.model.embed_tokens.weight.dtype != dtype:
            model.to(dtype)
        written = save_pretrained(model, out)
    else:
        written = save_adapter(
            model,
            out,
            lora_config_of(cfg.lora),
            base_model_name_or_path=cfg.model.path,
            revision=cfg.model.revision,
        )
        atomic_write_json(out / GENERATION_CONFIG_NAME, _generation_config(model))
        written.append(out / GENERATION_CONFIG_NAME)
        if run.pruning is not None:
            masks = {name: mask.contiguous().cpu() for name, mask in run.pruning.masks.items()}
            atomic_write(out / MASKS_NAME, lambda stream: stream.write(save(masks)))
            written.append(out / MASKS_NAME)
    written.extend(run.tokenizer.save(out))
    return written


def _losses(state: TrainState) -> dict[str, Any]:
    last_train, last_eval = state.last_train(), state.last_eval()
    return {
        "final_train": None if last_train is None else last_train["loss"],
        "best_train": state.best_train_loss,
        "final_eval": None if last_eval is None else last_eval["eval_loss"],
        "best_eval": state.best_eval_loss,
        "best_eval_step": state.best_eval_step,
    }


def _base_eval(state: TrainState) -> dict[str, Any] | None:
    """The evaluation of the base model (step 0, before training), or None (no validation data, or a run resumed
    from before this record existed)."""
    record = next((r for r in state.history if r["kind"] == "eval" and r["step"] == 0), None)
    return None if record is None else {k: v for k, v in record.items() if k != "kind"}


def _samples(state: TrainState) -> dict[str, Any] | None:
    """The sample answers before the first step and at the last sampled step, or None without samples."""
    samples = [r for r in state.history if r["kind"] == "sample"]
    if not samples:
        return None
    last = samples[-1]["step"]
    return {
        "before": [{"prompt": r["prompt"], "answer": r["answer"]} for r in samples if r["step"] == 0],
        "after_step": last,
        "after": [{"prompt": r["prompt"], "answer": r["answer"]} for r in samples if r["step"] == last],
    }


def techniques_of(cfg: TrainConfig) -> list[str]:
    """The techniques a run applies, in ``final_model.json`` order: `TrainConfig.techniques`, as a list."""
    return list(cfg.techniques)


def final_model_summary(run: TrainingRun, state: TrainState) -> dict[str, Any]:
    """The content of ``final_model.json`` (module docstring).

    Args:
        run: The trained run.
        state: Its final state.

    Returns:
        A JSON-serialisable dict.
    """
    cfg = run.config
    counts = count_parameters(run.model)
    last_eval = state.last_eval()
    pruned: dict[str, Any] = {}
    if run.pruning is not None:
        pruned = {"prune": prune_record(run.pruning, run.model, run.calibration, adapter=cfg.lora is not None)}
    if cfg.qat is not None:
        pruned["qat"] = qat_record(cfg.qat, run.qat_quantizers)
    return {
        "base_model": {
            "path": cfg.model.path,
            "source": cfg.model.source,
            "revision": cfg.model.revision,
            "resolved_revision": run.model_dir.name if cfg.model.source == "hub" else None,
        },
        "output": "adapter" if cfg.lora is not None else "full",
        "techniques": techniques_of(cfg),
        "config": config_to_dict(cfg),
        "steps": state.step,
        "epochs": state.epoch,
        "tokens": {"input": state.input_tokens, "target": state.target_tokens},
        "loss": _losses(state),
        "eval": None if last_eval is None else {k: v for k, v in last_eval.items() if k != "kind"},
        "base_eval": _base_eval(state),
        "samples": _samples(state),
        "stop_reason": state.stop_reason or "completed",
        "parameters": {"trainable": counts.trainable, "total": counts.total},
        "wall_time_s": state.elapsed,
        "data_files": data_file_hashes(run),
        "packages": package_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **pruned,
    }


def write_outputs(run: TrainingRun, state: TrainState, out_dir: str | Path) -> list[Path]:
    """Write the model files and ``final_model.json`` into the output folder.

    Args:
        run: The trained run.
        state: Its final state.
        out_dir: The output folder.

    Returns:
        The files written, ``final_model.json`` last.
    """
    out = Path(out_dir)
    written = write_model_files(run, out)
    summary = final_model_summary(run, state)
    atomic_write_json(out / FINAL_MODEL_NAME, summary)
    return [*written, out / FINAL_MODEL_NAME]
