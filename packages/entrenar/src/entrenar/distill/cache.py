"""The teacher cache (``distill.cache``, ``entrenar distill-cache``): the teacher run once over the data.

For every labelled position of every sample the cache keeps the teacher's ``distill.cache_top_k`` most
likely next tokens, their log-probabilities and the log of the mass left over (the tail), as
`aprender.loss.topk_teacher_heads` computes them (a mixture of teachers is cached as its mixture).
Training from the cache loads no teacher: the divergence is taken over the k tokens plus the tail bucket
(`aprender.loss.chunked_distillation_loss` with a `TopKTeacher`), exactly the dense divergence when k
covers the vocabulary, a lower bound otherwise. The training split is stored at ``distill.temperature``;
the validation split at temperature 1, which is where evaluation measures the KL to the teacher.

The folder::

    cache.json                    the key below, the sizes; written last: a folder without it is incomplete
    <split>.ids.npy               (P, k) int32: the top-k token ids of the split's P labelled positions
    <split>.logprobs.npy          (P, k) float32: their log-probabilities
    <split>.tail.npy              (P,) float32: log(1 - their total probability), -inf when none is left
    <split>.starts.npy            (S,) int64: where each of the split's S samples' positions start

with ``<split>`` ``train`` and, with validation data, ``validation``. Positions are stored per sample, in
the order of its labelled tokens, so the cache does not depend on batching or packing.

The key: the teachers (each one's sha256 over its ``config.json`` and safetensors weights, and its
mixture weight), ``teacher_quantize``, ``model.dtype``, the student's tokenizer (sha256 of its files),
its vocabulary size, the temperature, k and each split's data (sha256 of every sample's token ids and
target mask). A cache whose key differs from the run's is stale: it is refused with what differs and how
to rebuild it. A build writes into a temporary sibling folder that replaces the old one at the end, so
an interrupted build leaves the previous cache (or none) as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aprender.atomic import atomic_write_json
from aprender.constants import CONFIG_NAME, TOKENIZER_FILE_PATTERNS
from aprender.loss import TeacherHead, TopKTeacher, topk_teacher_heads
from aprender.reference import resolve_model_folder
from aprender.text import Tokenizer
from entrenar.autograd import PrecisionPolicy
from entrenar.config import TrainConfig
from entrenar.data import DataLoader, Dataset
from entrenar.display import Report, human_size, shown_path, silent
from entrenar.distill.teacher import load_teachers
from entrenar.errors import ConfigError
from entrenar.models import IGNORE_INDEX, ModelConfig

__all__ = ["CACHE_FILE", "CacheSplit", "TeacherCache", "cache_key", "prepare_teacher_cache", "write_teacher_cache"]

CACHE_FILE = "cache.json"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")
_ARRAYS = ("ids", "logprobs", "tail", "starts")
_BLOB = re.compile(r"[0-9a-f]{64}")  # a Hugging Face cache blob: named by the sha256 of an LFS file's content
_READ_BYTES = 1 << 20


def _file_digest(path: Path) -> str:
    """The sha256 of a file; a Hugging Face cache snapshot's LFS symlink names it, so it is not read."""
    target = path.resolve()
    if path.is_symlink() and _BLOB.fullmatch(target.name):
        return target.name
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_digest(folder: Path, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{_file_digest(folder / name)}\0".encode())
    return digest.hexdigest()


def weights_digest(folder: Path) -> str:
    """A model folder's sha256 over its ``config.json`` and safetensors files (names and contents)."""
    names = [CONFIG_NAME, *sorted(p.name for p in folder.glob("*.safetensors"))]
    return _folder_digest(folder, [name for name in names if (folder / name).is_file()])


def tokenizer_digest(folder: Path) -> str:
    """The sha256 over the tokenizer files of a model folder (`aprender.constants.TOKENIZER_FILE_PATTERNS`)."""
    names = sorted(
        {p.relative_to(folder).as_posix() for pattern in TOKENIZER_FILE_PATTERNS for p in folder.glob(pattern)}
    )
    return _folder_digest(folder, [name for name in names if (folder / name).is_file()])


def data_digest(dataset: Dataset) -> str:
    """The sha256 of a dataset's samples in order: each one's token ids and target mask."""
    digest = hashlib.sha256()
    for sample in dataset.samples:
        digest.update(len(sample).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(sample.ids, dtype=np.int64).tobytes())
        digest.update(np.packbits(sample.targets).tobytes())
    return digest.hexdigest()


def cache_key(
    cfg: TrainConfig, model_dir: Path, vocab_size: int, splits: Mapping[str, Dataset | None]
) -> dict[str, Any]:
    """What a cache built for this run must match (module docstring); resolves each teacher (a download at most).

    Args:
        cfg: The run's config, with ``distill.cache``.
        model_dir: The student's folder (its tokenizer).
        vocab_size: The student's vocabulary size.
        splits: ``train`` and ``validation`` (None when there is no validation data).
    """
    section = cfg.distill
    assert section is not None and section.cache_top_k is not None
    teachers = []
    for entry in section.teacher_models:
        folder = resolve_model_folder(entry.path, entry.revision if entry.source == "hub" else None)
        teachers.append({"path": entry.path, "weights_sha256": weights_digest(folder), "weight": entry.weight})
    return {
        "format": FORMAT_VERSION,
        "teachers": teachers,
        "teacher_quantize": section.teacher_quantize,
        "dtype": cfg.model.dtype,
        "tokenizer_sha256": tokenizer_digest(model_dir),
        "vocab_size": vocab_size,
        "temperature": section.temperature,
        "top_k": section.cache_top_k,
        "data_sha256": {name: None if data is None else data_digest(data) for name, data in splits.items()},
    }


_KEY_NAMES = {
    "format": "the cache format",
    "teacher_quantize": "distill.teacher_quantize",
    "dtype": "model.dtype",
    "tokenizer_sha256": "the student's tokenizer",
    "vocab_size": "the student's vocabulary size",
    "temperature": "distill.temperature",
    "top_k": "distill.cache_top_k",
}


def key_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a cache's key and the run's, one clause each (empty when the cache fits)."""
    found = []
    saved_teachers, teachers = saved.get("teachers", []), current["teachers"]
    saved_paths, paths = [str(t.get("path")) for t in saved_teachers], [t["path"] for t in teachers]
    if saved_paths != paths:
        found.append(f"the teachers differ (built with {', '.join(saved_paths)}, now {', '.join(paths)})")
    else:
        found += [
            f"the weights of teacher {t['path']} differ"
            for s, t in zip(saved_teachers, teachers, strict=True)
            if s.get("weights_sha256") != t["weights_sha256"]
        ]
        if [t.get("weight") for t in saved_teachers] != [t["weight"] for t in teachers]:
            found.append("the teachers' mixture weights differ")
    for name, words in _KEY_NAMES.items():
        if saved.get(name) != current[name]:
            shown = "" if name.endswith("sha256") else f" (built with {saved.get(name)}, now {current[name]})"
            found.append(f"{words} differs{shown}")
    saved_data = saved.get("data_sha256", {})
    found += [
        f"the {split} data differ"
        for split, digest in current["data_sha256"].items()
        if saved_data.get(split) != digest
    ]
    return found


@dataclass(frozen=True)
class CacheSplit:
    """One split of a cache, read from memory-mapped arrays and bound to the run's dataset of that split.

    Attributes:
        dataset: The split's data (its units name the samples of each batch row).
        ids, logprobs, tail, starts: The stored arrays (module docstring).
        counts: Labelled positions per sample.
    """

    dataset: Dataset
    ids: np.ndarray
    logprobs: np.ndarray
    tail: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    def lookup(self, unit_ids: Tensor, device: torch.device) -> TopKTeacher:
        """The cached teacher at a batch's labelled positions, in the batch's order (rows, then positions).

        Args:
            unit_ids: The batch's ``unit_ids`` (`entrenar.data.loader`).
            device: Where the student is.
        """
        samples = [s for unit in unit_ids.tolist() for s in self.dataset.units[unit]]
        rows = np.concatenate([np.arange(self.starts[s], self.starts[s] + self.counts[s]) for s in samples])
        return TopKTeacher(
            torch.from_numpy(self.ids[rows].astype(np.int64)).to(device),
            torch.from_numpy(np.ascontiguousarray(self.logprobs[rows])).to(device),
            torch.from_numpy(np.ascontiguousarray(self.tail[rows])).to(device),
        )


@dataclass(frozen=True)
class TeacherCache:
    """An opened cache: its key and info (``cache.json``), and its splits bound to the run's datasets."""

    folder: Path
    info: dict[str, Any]
    train: CacheSplit
    validation: CacheSplit | None

    @classmethod
    def open(cls, folder: Path, train: Dataset, validation: Dataset | None) -> TeacherCache:
        """Open a cache whose key was checked against the run (`prepare_teacher_cache`)."""
        info = json.loads((folder / CACHE_FILE).read_text())

        def split(name: str, dataset: Dataset) -> CacheSplit:
            arrays = {a: np.load(folder / f"{name}.{a}.npy", mmap_mode="r") for a in _ARRAYS}
            counts = np.array([sample.n_targets for sample in dataset.samples], dtype=np.int64)
            if arrays["starts"].shape != counts.shape or arrays["tail"].shape[0] != int(counts.sum()):
                raise ConfigError(f"distill.cache: {folder}'s {name} split does not fit the data; rebuild it")
            return CacheSplit(dataset, arrays["ids"], arrays["logprobs"], arrays["tail"], arrays["starts"], counts)

        return cls(folder, info, split("train", train), None if validation is None else split("validation", validation))

    @property
    def size(self) -> int:
        """Bytes of the stored arrays."""
        return sum(p.stat().st_size for p in self.folder.glob("*.npy"))


@torch.no_grad()
def write_teacher_cache(
    folder: Path,
    key: Mapping[str, Any],
    cfg: TrainConfig,
    splits: Mapping[str, Dataset | None],
    *,
    tokenizer: Tokenizer,
    student_config: ModelConfig,
    device: torch.device,
    precision: PrecisionPolicy,
) -> None:
    """Load the teachers, run them over every split and write the cache to `folder` (replacing it at the end).

    Args:
        folder: ``distill.cache``.
        key: `cache_key` of the run.
        cfg: The run's config (``distill:``, ``data.batch_size``, ``model.dtype``).
        splits: ``train`` and ``validation`` datasets (None: no validation data).
        tokenizer: The student's tokenizer (the teachers' vocabulary is checked against it).
        student_config: The student's architecture (its vocabulary size).
        device: Where to run the teachers.
        precision: The autocast policy of the training run, so cached and online teachers compute alike.
    """
    section = cfg.distill
    assert section is not None and section.cache_top_k is not None
    teachers = load_teachers(section, tokenizer, student_config, device=device, dtype=cfg.model.dtype)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        positions = {}
        for name, dataset in splits.items():
            if dataset is None:
                continue
            temperature = section.temperature if name == "train" else 1.0
            arrays = _open_split(staging, name, dataset, section.cache_top_k)
            cursor = 0
            for batch in DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False).batches(0):
                on = {name: tensor.to(device) for name, tensor in batch.items()}
                keep = on["labels"] != IGNORE_INDEX
                heads = []
                with precision.autocast():
                    for teacher in teachers:
                        hidden = teacher.model.forward_hidden(
                            on["input_ids"], on.get("attention_mask"), on.get("position_ids"), on.get("seq_ids")
                        )[keep]
                        heads.append(TeacherHead(hidden, teacher.head_weight().to(hidden.dtype), teacher.weight))
                entries = topk_teacher_heads(heads, section.cache_top_k, temperature=temperature)
                end = cursor + entries.ids.shape[0]
                arrays["ids"][cursor:end] = entries.ids.cpu().numpy()
                arrays["logprobs"][cursor:end] = entries.logprobs.cpu().numpy()
                arrays["tail"][cursor:end] = entries.tail_logmass.cpu().numpy()
                for unit in batch["unit_ids"].tolist():
                    for sample in dataset.units[unit]:
                        arrays["starts"][sample] = cursor
                        cursor += dataset.samples[sample].n_targets
                assert cursor == end, "a batch's labelled positions are its samples' targets"
            for array in arrays.values():
                array.flush()
            positions[name] = cursor
        atomic_write_json(staging / CACHE_FILE, {"key": dict(key), "positions": positions})
        _replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        del teachers


def _open_split(staging: Path, name: str, dataset: Dataset, k: int) -> dict[str, np.memmap]:
    positions = dataset.n_target_tokens
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "ids": ((positions, k), np.int32),
        "logprobs": ((positions, k), np.float32),
        "tail": ((positions,), np.float32),
        "starts": ((len(dataset.samples),), np.int64),
    }
    return {
        array: np.lib.format.open_memmap(staging / f"{name}.{array}.npy", mode="w+", dtype=dtype, shape=shape)
        for array, (shape, dtype) in shapes.items()
    }


def _replace_folder(staging: Path, folder: Path) -> None:
    """Put the finished `staging` folder in `folder`'s place; the old one is removed only after the switch."""
    if not folder.exists():
        staging.rename(folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
    os.replace(folder, old / folder.name)
    try:
        staging.rename(folder)
    except OSError:
        os.replace(old / folder.name, folder)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _saved_key(folder: Path) -> dict[str, Any] | None:
    """The key of the cache in `folder`; None when there is none (no folder, or an empty one), {} when unreadable."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    path = folder / CACHE_FILE
    if not path.is_file():
        raise ConfigError(
            f"distill.cache: {folder} is not empty and holds no {CACHE_FILE}, so it is not a teacher cache; "
            "choose a new or empty folder"
        )
    try:
        key = json.loads(path.read_text())["key"]
    except (ValueError, KeyError, TypeError):
        return {}
    return key if isinstance(key, dict) else {}


def prepare_teacher_cache(
    cfg: TrainConfig,
    *,
    model_dir: Path,
    tokenizer: Tokenizer,
    student_config: ModelConfig,
    splits: Mapping[str, Dataset | None],
    device: torch.device,
    precision: PrecisionPolicy,
    rebuild: bool = False,
    report: Report = silent,
) -> TeacherCache:
    """The run's teacher cache: opened when it fits the run, built when there is none (or `rebuild`).

    Args:
        cfg: The run's config, with ``distill.cache``.
        model_dir: The student's folder.
        tokenizer: The student's tokenizer.
        student_config: The student's architecture.
        splits: ``train`` and ``validation`` datasets.
        device: Where to run the teachers.
        precision: The training run's autocast policy.
        rebuild: Rebuild a stale cache instead of refusing it (``entrenar distill-cache``).
        report: Told whether the cache is used or built, and its size.

    Raises:
        ConfigError: The folder holds a stale cache (and not `rebuild`), or something that is not a cache;
            ``distill.cache_top_k`` exceeds the vocabulary.
    """
    section = cfg.distill
    assert section is not None and section.cache is not None
    folder = Path(section.cache)
    if section.cache_top_k is not None and section.cache_top_k > student_config.vocab_size:
        raise ConfigError(
            f"distill.cache_top_k: {section.cache_top_k} is more than the {student_config.vocab_size} tokens of "
            f"the vocabulary; use at most {student_config.vocab_size} (which keeps the whole distribution)"
        )
    key = cache_key(cfg, model_dir, student_config.vocab_size, splits)
    saved = _saved_key(folder)
    differences = (
        None if saved is None else key_differences(saved, key) if saved else [f"its {CACHE_FILE} is unreadable"]
    )
    if differences and not rebuild:
        raise ConfigError(
            f"distill.cache: {folder} does not fit this run: {'; '.join(differences)}; rebuild it with "
            "`entrenar distill-cache` on this config, or delete the folder and training builds it again"
        )
    if differences is None or differences:
        report(f"Running the teacher over the data into {shown_path(folder)} (top {section.cache_top_k})...")
        write_teacher_cache(
            folder,
            key,
            cfg,
            splits,
            tokenizer=tokenizer,
            student_config=student_config,
            device=device,
            precision=precision,
        )
    cache = TeacherCache.open(folder, splits["train"], splits.get("validation"))  # type: ignore[arg-type]
    state = "built" if differences is None or differences else "up to date"
    positions = sum(cache.info["positions"].values())
    report(f"Teacher cache {shown_path(folder)}: {state}, {positions} positions, {human_size(cache.size)}")
    return cache
