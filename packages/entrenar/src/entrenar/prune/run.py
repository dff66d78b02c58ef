"""`run_prune`: what ``entrenar prune MODEL -o OUT_DIR`` does, from a model reference to a pruned model folder.

1. The request is checked (`entrenar.prune.spec.make_spec`), the output folder must be new or empty, and
   the calibration and evaluation files must exist, before anything is loaded.
2. MODEL is resolved (`entrenar.model_input`: a folder, a ``.gguf`` file, a Hub id, a training or merge
   output); an adapter output is folded into its base first, in a work folder, as ``entrenar publish`` folds it.
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
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from aprender.atomic import atomic_write_json
from aprender.errors import PruningError
from aprender.text import Tokenizer
from entrenar.constants import COPIED_FILES, FINAL_MODEL_NAME
from entrenar.data import resolve_data_files
from entrenar.display import Report
from entrenar.merge.evaluate import ModelScore, score_model
from entrenar.model_input import ModelInput, copy_model_files, dense_folder, resolve_model_input
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
    source = resolve_model_input(model)
    windows = None
    if calibration is not None:
        tokenizer = Tokenizer.from_dir(source.tokenizer_folder)
        length = seq_len if seq_len is not None else _default_seq_len(source.folder)
        windows = load_calibration(calibration, tokenizer, samples=samples, seq_len=length, seed=seed)
        log(f"calibration: {windows.samples} windows of {windows.seq_len} tokens from {windows.tokens} tokens")
    if device is None:
        from entrenar.train.setup.model import select_device

        device = select_device()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-prune-", dir=out.parent) as work:
        input_dir = dense_folder(source, Path(work) / "input")
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


def _default_seq_len(folder: Path) -> int:
    from entrenar.models import read_config

    return min(read_config(folder).max_position_embeddings, MAX_DEFAULT_SEQ_LEN)


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
    copy_model_files(input_dir, staging, COPIED_FILES)
    return report, model_sparsity


# ------------------------------------------------------------------------------------------- outputs


def _record(
    source: ModelInput,
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
