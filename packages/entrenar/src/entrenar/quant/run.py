"""`run_quantize`: what ``entrenar quantize MODEL --gguf TYPE -o FILE.gguf`` does.

1. The request is checked before anything is loaded: a GGUF file type llama-quantize knows
   (`aprender.format.gguf_mixtures.FILE_TYPES`), an output path ending in ``.gguf`` whose folder can take it,
   calibration given when the type needs an importance matrix (``q2_k_s``), files that exist.
2. MODEL is resolved (`entrenar.model_input`: a folder, a ``.gguf`` file, a Hub id, a training or merge output;
   an adapter output folded into its base, re-masked when trained on a pruned base).
3. With ``calibration``: windows are drawn as ``entrenar prune`` draws them (`entrenar.prune.calibration`; by
   default `DEFAULT_SEQ_LEN` tokens each, llama-imatrix's context) and the unquantized model, in float32 on the
   training device, gives the importance matrix (`entrenar.quant.imatrix`), which weighs the quantization error
   and changes the mixture as llama-quantize's ``--imatrix`` does.
4. The GGUF file is written (`aprender.format.gguf_export.export_gguf`: llama-quantize's per-tensor types, our
   quantizers, byte-equal to llama.cpp's), atomically. For a pruned model (`entrenar.prune.marks`) its zeros are
   counted again in the file's decoded weights and the log says whether the type kept them (the types with a
   per-block minimum, Q4_1, Q5_1, Q2_K, Q4_K and Q5_K, keep almost none of them).
5. With ``eval_data``: the file is dequantized into a model folder (`aprender.format.convert`, bit-exact with
   ggml's dequantization) and compared with the original (`entrenar.quant.quality`): perplexities, KL of the
   next-token distributions, same top token.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from aprender.errors import InvalidArgumentError
from aprender.format.gguf_mixtures import FileType, file_type
from aprender.text import Tokenizer
from entrenar.constants import QUANTIZE_SAMPLES, QUANTIZE_SEQ_LEN
from entrenar.data import resolve_data_files
from entrenar.display import Report
from entrenar.model_input import dense_folder, resolve_model_input
from entrenar.prune.calibration import CalibrationData, load_calibration
from entrenar.prune.marks import check_gguf, mark_of, read_mark
from entrenar.quant.qat_export import export_line
from entrenar.quant.quality import QuantQuality

__all__ = ["DEFAULT_SAMPLES", "DEFAULT_SEQ_LEN", "QuantizeResult", "run_quantize"]

DEFAULT_SAMPLES = QUANTIZE_SAMPLES
"""Calibration windows by default."""
DEFAULT_SEQ_LEN = QUANTIZE_SEQ_LEN
"""Tokens per calibration window by default: llama-imatrix's default context."""


@dataclass(frozen=True)
class QuantizeResult:
    """What `run_quantize` did.

    Attributes:
        path: The GGUF file.
        kind: Its file type.
        calibration: The calibration windows the importance matrix came from, or None.
        quality: The comparison with the original on ``eval_data``, or None.
    """

    path: Path
    kind: FileType
    calibration: CalibrationData | None
    quality: QuantQuality | None


def run_quantize(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    gguf_type: str,
    *,
    calibration: str | os.PathLike[str] | None = None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    seed: int = 0,
    eval_data: str | os.PathLike[str] | None = None,
    device: torch.device | None = None,
    log: Report = print,
) -> QuantizeResult:
    """Quantize a model into one GGUF file (module docstring).

    Args:
        model: A model folder, ``.gguf`` file, Hub id, or training or merge output.
        out: The ``.gguf`` file to write (replaced when it exists).
        gguf_type: A llama-quantize file type, e.g. ``q4_k_m`` (any case).
        calibration: Text to compute the importance matrix from; None: the reference quantizers.
        samples: Calibration windows.
        seq_len: Tokens per window.
        seed: Seed of the window draw.
        eval_data: Text to compare the quantized model with the original on.
        device: Where the model runs for calibration and comparison; None: the first CUDA GPU, else the CPU.
        log: Where progress and report lines go.

    Returns:
        The `QuantizeResult`.

    Raises:
        InvalidArgumentError: An unknown type, an output that is not a ``.gguf`` path, a type that needs
            calibration without it.
        DataError: A calibration or evaluation file that is missing, unreadable or too short.
        AprenderError: An unresolvable model reference, Hub access, a model GGUF cannot hold.
    """
    kind = file_type(gguf_type)
    target = Path(out).absolute()
    if target.suffix != ".gguf" or target.is_dir():
        raise InvalidArgumentError(f"{target}: -o must name a .gguf file, e.g. -o model-{kind.name}.gguf")
    if kind.needs_imatrix and calibration is None:
        raise InvalidArgumentError(
            f"GGUF type {kind.name} needs an importance matrix (as llama-quantize does); pass --calibration"
        )
    for path in (calibration, eval_data):
        if path is not None:
            resolve_data_files(path)
    source = resolve_model_input(model)
    windows = None
    if calibration is not None:
        tokenizer = Tokenizer.from_dir(source.tokenizer_folder)
        windows = load_calibration(calibration, tokenizer, samples=samples, seq_len=seq_len, seed=seed)
        log(f"calibration: {windows.samples} windows of {windows.seq_len} tokens from {windows.tokens} tokens")
    if device is None:
        from entrenar.train.setup.model import select_device

        device = select_device()
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-quantize-", dir=_work_parent(target)) as work:
        dense = dense_folder(source, Path(work) / "input")
        imatrix = None if windows is None else _imatrix(dense, windows, device, log)
        log(f"writing {kind.name}: {target}")
        from aprender.format.gguf_export import export_gguf

        export_gguf(dense, target, gguf_type=kind.name, name=target.stem, imatrix=imatrix)
        log(f"wrote {target.stat().st_size / 2**20:.1f} MiB")
        qat = export_line(source.record, kind.name, calibrated=imatrix is not None)
        if qat is not None:
            log(qat)
        mark = mark_of(source.record, os.fspath(model))  # a pruned model, or an adapter trained keeping the zeros
        if mark is None and source.adapter is not None:
            mark = read_mark(source.folder)  # a pruned base under an adapter folded without masks
        if mark is not None:
            log(check_gguf(mark, f"the GGUF file ({kind.name})", target).line())
        quality = None
        if eval_data is not None:
            quality = _compare(dense, target, Path(work) / "dequantized", eval_data, device)
            log(f"{kind.name} against the original on {os.fspath(eval_data)}: {quality.line()}")
    return QuantizeResult(target, kind, windows, quality)


def _work_parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _imatrix(dense: Path, windows: CalibrationData, device: torch.device, log: Report) -> dict[str, torch.Tensor]:
    from entrenar.models import from_pretrained
    from entrenar.quant.imatrix import collect_imatrix

    model = from_pretrained(dense, dtype="float32", device=device).eval()
    imatrix = collect_imatrix(model, windows.windows)
    log(f"importance matrix: {len(imatrix)} weights from {windows.samples * windows.seq_len} tokens")
    return imatrix


def _compare(
    dense: Path, gguf: Path, folder: Path, eval_data: str | os.PathLike[str], device: torch.device
) -> QuantQuality:
    from aprender.format.convert import convert_gguf_to_hf
    from entrenar.quant.quality import compare_models

    convert_gguf_to_hf(gguf, folder)
    return compare_models(dense, folder, eval_data, device=device)
