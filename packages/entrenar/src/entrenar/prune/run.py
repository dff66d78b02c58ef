"""`run_prune`: what ``entrenar prune MODEL -o OUT_DIR`` does, from a model reference to a pruned model folder.

1. The request is checked (`entrenar.prune.spec.make_spec`), the output folder must be new or empty, and
   the calibration and evaluation files must exist, before anything is loaded.
2. MODEL is resolved as everywhere (`aprender.reference`: a folder, a ``.gguf`` file, a Hub id). A training
   output holding a LoRA/QLoRA adapter is folded into its base first, in a work folder, as ``entrenar
   publish`` folds it (`entrenar.lora.merge_adapter_into_checkpoint`, re-masked when the adapter was trained on
   a pruned base; the output's tokenizer and generation config win over the base's).
3. The calibration windows are drawn (`entrenar.prune.calibration`): a file too short fails here, still
   before anything is written.
4. With ``eval_data`` the dense model is scored (`entrenar.merge.evaluate.score_model`: perplexity on that
   text, with the model's tokenizer).
5. The model is loaded in float32 on the training device (the first CUDA GPU, else the CPU) and pruned
   layer by layer (`entrenar.prune.oneshot.prune_model`), then written in its original dtype (zeros stored
   densely) with the input's ``config.json``, ``generation_config.json`` and tokenizer files.
6. The pruned model is scored on ``eval_data``; ``final_model.json`` (``output: full``, ``techniques``: the
   input's then ``prune``, and a ``prune`` section: method, sparsity or pattern, comparison group,
   calibration files with their sha256, samples, sequence length and seed, the sparsity of every pruned
   layer, the perplexities) and a model card are written, and the staging folder is renamed into place,
   so the output appears whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from aprender.atomic import atomic_write_json
from aprender.constants import CHAT_TEMPLATE_DIR, GENERATION_CONFIG_NAME, TOKENIZER_FILE, TOKENIZER_FILES
from aprender.errors import PruningError
from aprender.reference import ModelReference, classify_model_reference, resolve_model_folder
from aprender.text import Tokenizer
from entrenar.constants import ADAPTER_CONFIG_NAME, COPIED_FILES, FINAL_MODEL_NAME
from entrenar.data import resolve_data_files
from entrenar.display import Report
from entrenar.merge.evaluate import ModelScore, score_model
from entrenar.prune.calibration import CalibrationData, load_calibration
from entrenar.prune.oneshot import PruneReport, prune_model
from entrenar.prune.spec import DEFAULT_SAMPLES, MAX_DEFAULT_SEQ_LEN, PruneSpec

__all__ = ["TECHNIQUE", "PruneResult", "run_prune"]

TECHNIQUE = "prune"


@dataclass(frozen=True)
class PruneResult:
    """What `run_prune` did.

    Attributes:
        out_dir: The pruned model's folder.
        report: The sparsity of every pruned linear layer.
        model_sparsity: Fraction of all the model's parameters that are zero.
        scores: Perplexities on ``eval_data``, dense then pruned; empty without it.
        calibration: The calibration windows, or None (magnitude).
    """

    out_dir: Path
    report: PruneReport
    model_sparsity: float
    scores: tuple[ModelScore, ...]
    calibration: CalibrationData | None


@dataclass(frozen=True)
class _Source:
    """The input model: its reference, the folder of its weights, the adapter to fold into it, its record, and the
    base model ``final_model.json`` names (a training output's own base, else the model itself)."""

    reference: ModelReference
    folder: Path
    adapter: Path | None
    record: dict[str, Any]
    techniques: tuple[str, ...]
    base: dict[str, Any]


def run_prune(
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: PruneSpec,
    *,
    calibration: str | os.PathLike[str] | None = None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int | None = None,
    seed: int = 0,
    eval_data: str | os.PathLike[str] | None = None,
    device: torch.device | None = None,
    log: Report = print,
) -> PruneResult:
    """Prune a model into a new folder (module docstring).

    Args:
        model: A model folder, ``.gguf`` file, Hub id, or training output (full model or adapter).
        out_dir: The new folder (absent or empty).
        spec: What to prune and how.
        calibration: Calibration text (WANDA, SparseGPT; refused for magnitude).
        samples: Calibration windows.
        seq_len: Tokens per window; None: the model's context length, at most `MAX_DEFAULT_SEQ_LEN`.
        seed: Seed of the window draw.
        eval_data: Text to score the model on before and after.
        device: Where the pruning runs; None: the first CUDA GPU, else the CPU.
        log: Where progress and report lines go.

    Returns:
        The `PruneResult`.

    Raises:
        PruningError: A bad output folder, calibration given or missing for the method, a skip pattern
            that matches nothing, a pattern that does not fit a layer.
        DataError: A calibration or evaluation file that is missing, unreadable or too short.
        AprenderError: An unresolvable model reference, Hub access, a bad checkpoint.
    """
    out = Path(out_dir).absolute()
    _check_request(out, spec, calibration, eval_data)
    source = _resolve_source(model)
    windows = None
    if calibration is not None:
        tokenizer = Tokenizer.from_dir(_tokenizer_folder(source))
        length = seq_len if seq_len is not None else _default_seq_len(source.folder)
        windows = load_calibration(calibration, tokenizer, samples=samples, seq_len=length, seed=seed)
        log(f"calibration: {windows.samples} windows of {windows.seq_len} tokens from {windows.tokens} tokens")
    if device is None:
        from entrenar.train.setup.model import select_device

        device = select_device()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-prune-", dir=out.parent) as work:
        input_dir = _input_folder(source, Path(work) / "input")
        scores = [score_model("dense", input_dir, eval_data)] if eval_data is not None else []
        staging = Path(work) / "out"
        report, model_sparsity = _prune_and_save(input_dir, staging, spec, windows, device, log)
        if eval_data is not None:
            scores.append(score_model("pruned", staging, eval_data))
        record = _record(source, spec, windows, report, model_sparsity, scores)
        atomic_write_json(staging / FINAL_MODEL_NAME, record)
        _write_card(staging, out.name)
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    _log_summary(log, spec, report, model_sparsity, scores, eval_data, out)
    return PruneResult(out, report, model_sparsity, tuple(scores), windows)


# -------------------------------------------------------------------------------------------- inputs


def _check_request(
    out: Path,
    spec: PruneSpec,
    calibration: str | os.PathLike[str] | None,
    eval_data: str | os.PathLike[str] | None,
) -> None:
    """Everything checkable before loading: the output folder, calibration for the method, files that exist."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise PruningError(f"{out}: exists and is not an empty folder; pass a new output folder with -o")
    if spec.method.needs_calibration and calibration is None:
        raise PruningError(f"{spec.method.name} needs calibration data; pass --calibration with a text or JSONL file")
    if not spec.method.needs_calibration and calibration is not None:
        raise PruningError(f"{spec.method.name} uses no calibration data; drop --calibration")
    for path in (calibration, eval_data):
        if path is not None:
            resolve_data_files(path)


def _resolve_source(model: str | os.PathLike[str]) -> _Source:
    """Resolve the reference; for an adapter folder, resolve its base too (downloaded when a Hub id)."""
    from entrenar.publish.detect import detect_model_folder, read_training_record

    reference = classify_model_reference(model)
    folder = resolve_model_folder(reference)
    record = read_training_record(folder) if reference.kind == "folder" else {}
    if not (folder / ADAPTER_CONFIG_NAME).is_file():
        techniques = detect_model_folder(folder).techniques if record else ()
        base = record.get("base_model") or _base_record(reference, folder, None)
        return _Source(reference, folder, None, record, techniques, base)
    from entrenar.publish.export import resolve_base_model

    detected = detect_model_folder(folder)
    if detected.base_model is None:
        raise PruningError(f"{folder}: {ADAPTER_CONFIG_NAME} names no base model; fold the adapter in first")
    base_dir = resolve_base_model(detected.base_model, detected.base_revision, offline=False)
    base_reference = classify_model_reference(detected.base_model)
    base = record.get("base_model") or _base_record(base_reference, base_dir, detected.base_revision)
    return _Source(reference, base_dir, folder, record, detected.techniques, base)


def _base_record(reference: ModelReference, folder: Path, revision: str | None) -> dict[str, Any]:
    """``final_model.json``'s ``base_model`` for a model reference resolved to `folder`."""
    hub = reference.kind == "hub"
    return {
        "path": reference.location if hub else str(Path(reference.location).absolute()),
        "source": "hub" if hub else "local",
        "revision": revision if hub else None,
        "resolved_revision": folder.name if hub else None,
    }


def _tokenizer_folder(source: _Source) -> Path:
    """The adapter output's tokenizer when it has one (training may change the chat template), else the model's."""
    if source.adapter is not None and (source.adapter / TOKENIZER_FILE).is_file():
        return source.adapter
    return source.folder


def _default_seq_len(folder: Path) -> int:
    from entrenar.models import read_config

    return min(read_config(folder).max_position_embeddings, MAX_DEFAULT_SEQ_LEN)


def _input_folder(source: _Source, work: Path) -> Path:
    """The dense model's folder: as it is, or with the adapter folded into a copy in `work`."""
    if source.adapter is None:
        return source.folder
    from entrenar.lora.merge import merge_adapter_into_checkpoint
    from entrenar.prune.marks import adapter_masks

    merge_adapter_into_checkpoint(source.folder, source.adapter, work, masks=adapter_masks(source.adapter))
    _copy_files(source.adapter, work, (GENERATION_CONFIG_NAME, *TOKENIZER_FILES))
    return work


def _copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    if (source / CHAT_TEMPLATE_DIR).is_dir():
        shutil.copytree(source / CHAT_TEMPLATE_DIR, target / CHAT_TEMPLATE_DIR, dirs_exist_ok=True)


# --------------------------------------------------------------------------------------------- work


def _prune_and_save(
    input_dir: Path,
    staging: Path,
    spec: PruneSpec,
    windows: CalibrationData | None,
    device: torch.device,
    log: Report,
) -> tuple[PruneReport, float]:
    """Load in float32, prune, write in the original dtype with the input's config and tokenizer files."""
    from entrenar.models import from_pretrained, loaded_dtype, save_pretrained

    dtype = loaded_dtype(input_dir)
    model = from_pretrained(input_dir, dtype="float32", device=device)
    log(f"pruning: {spec.describe()}")
    report = prune_model(model, spec, None if windows is None else windows.windows, report=log)
    parameters = list(model.parameters())  # shared (tied) tensors are listed once
    zeros = sum(int((p == 0).sum()) for p in parameters)
    model_sparsity = zeros / sum(p.numel() for p in parameters)
    save_pretrained(model.to(dtype), staging)
    _copy_files(input_dir, staging, COPIED_FILES)
    return report, model_sparsity


# ------------------------------------------------------------------------------------------- outputs


def _record(
    source: _Source,
    spec: PruneSpec,
    windows: CalibrationData | None,
    report: PruneReport,
    model_sparsity: float,
    scores: list[ModelScore],
) -> dict[str, Any]:
    """``final_model.json``: a full model made by pruning (module docstring)."""
    from entrenar.train.outputs import package_versions

    calibration = None
    if windows is not None:
        calibration = {
            "path": windows.path,
            "files": windows.files,
            "tokens": windows.tokens,
            "samples": windows.samples,
            "seq_len": windows.seq_len,
            "seed": windows.seed,
        }
    layers = [
        {"layer": layer, "weights": weights, "zeros": zeros, "sparsity": zeros / weights}
        for layer, (weights, zeros) in sorted(report.by_layer().items())
    ]
    return {
        "base_model": source.base,
        "output": "full",
        "techniques": [*source.techniques, TECHNIQUE],
        "prune": {
            "model": source.reference.location,
            "method": spec.method.name,
            "title": spec.method.title,
            "reference": spec.method.reference,
            "sparsity": spec.sparsity,
            "pattern": spec.pattern,
            "comparison_group": spec.group,
            "skip": list(spec.skip),
            "skipped_modules": list(report.skipped),
            "calibration": calibration,
            "pruned_sparsity": report.sparsity,
            "pruned_weights": report.weights,
            "model_sparsity": model_sparsity,
            "layers": layers,
            "modules": {item.module: item.sparsity for item in report.modules},
            "perplexity": [
                {"model": s.name, "perplexity": s.perplexity, "loss": s.loss, "tokens": s.tokens} for s in scores
            ],
        },
        "packages": package_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_card(out: Path, name: str) -> None:
    """README.md from the record, as `entrenar publish` writes it."""
    from entrenar.publish.card import CardContext, write_model_card
    from entrenar.publish.detect import detect_model_folder

    folder = detect_model_folder(out)
    base = folder.base_model if folder.base_model and not Path(folder.base_model).is_absolute() else None
    ctx = CardContext(repo_id=name, layout="model", techniques=folder.techniques, base_model=base, record=folder.record)
    write_model_card(out, ctx, None)


def _log_summary(
    log: Report,
    spec: PruneSpec,
    report: PruneReport,
    model_sparsity: float,
    scores: list[ModelScore],
    eval_data: str | os.PathLike[str] | None,
    out: Path,
) -> None:
    log(
        f"pruned {len(report.modules)} linear layers ({spec.describe()}): {100 * report.sparsity:.2f}% of "
        f"{report.weights} weights zero; whole model {100 * model_sparsity:.2f}% zero"
    )
    if report.skipped:
        log(f"kept dense by --skip: {len(report.skipped)} linear layers")
    if len(scores) == 2:
        dense, pruned = scores
        log(
            f"perplexity on {os.fspath(eval_data or '')}: dense {dense.perplexity:.4g} -> pruned "
            f"{pruned.perplexity:.4g} ({pruned.tokens} tokens)"
        )
    log(f"pruned model written to {out}")
