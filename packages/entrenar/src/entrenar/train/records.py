"""The records of ``metrics.jsonl``: one typed shape each, shared by the writer and every reader.

The loop writes them (`entrenar.train.loop`), `TrainState.history` keeps them (and checkpoints carry them
as JSON), the progress display and the output summary read them, and so do the model card's loss curve
and the live monitor. They are `TypedDict`s, so a line is plain JSON on disk and a dict in memory while
every key is checked by the type checker where it is written or read.

A ``"train"`` record describes the optimizer steps since the previous one; ``parts`` holds each named part
of the loss (``ce``, later ``kd`` ...), each a mean per target token like ``loss``, which is what was
optimized. An ``"eval"`` record holds one evaluation on the validation data (at step 0: the base model, before
training). A ``"sample"`` record holds a greedy answer to one of ``training.sample_prompts``.

`EpochSummary` is no ``metrics.jsonl`` line: the loop hands it to the callbacks when an epoch ends (the
progress display prints it), built from the `TrainState`'s own epoch window so a resumed run reports
the same numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, TypedDict, cast

from typing_extensions import NotRequired

__all__ = ["EpochSummary", "EvalRecord", "MetricRecord", "SampleRecord", "TrainRecord", "read_metrics"]


class TrainRecord(TypedDict):
    """A ``"train"`` line: the steps since the previous one.

    Keys:
        step: Optimizer steps taken. epoch: Passes over the data (fractional). loss: Token-weighted mean
        loss of the steps (what is optimized). parts: The loss's named parts, same weighting (absent in
        files written before parts existed). lr: Learning rate of the last step. grad_norm: Its global
        gradient norm before clipping. tokens_per_s: Non-padding input tokens per second. tokens:
        Non-padding input tokens so far.
    """

    kind: Literal["train"]
    step: int
    epoch: float
    loss: float
    parts: NotRequired[dict[str, float]]
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens: int


class EvalRecord(TypedDict):
    """An ``"eval"`` line: loss, perplexity and greedy token accuracy on the validation data, and its size;
    with distillation also the model's mean KL to its teacher(s) per token (``eval_kl_to_teacher``)."""

    kind: Literal["eval"]
    step: int
    epoch: float
    eval_loss: float
    eval_perplexity: float
    eval_token_accuracy: float
    eval_tokens: int
    eval_kl_to_teacher: NotRequired[float]


class SampleRecord(TypedDict):
    """A ``"sample"`` line: the greedy answer to one of ``training.sample_prompts`` after optimizer step ``step``
    (0: the base model, before the first step)."""

    kind: Literal["sample"]
    step: int
    prompt: str
    answer: str


MetricRecord = TrainRecord | EvalRecord | SampleRecord


class EpochSummary(TypedDict):
    """One epoch, as ``Epoch 1/3: loss=2.341, lr=2.0e-4`` shows it.

    Keys:
        epoch: The epoch that ended, from 1 (a step that ends several epochs, with ``grad_accum`` above the
        batches per epoch, reports the last). epochs: Epochs the run plans (``ceil(micro-batches / batches
        per epoch)``). steps: Optimizer steps since the previous summary. loss: Their mean loss per target
        token (each step's mean weighted by its target tokens, as in a train record). lr: The learning rate
        the last of them used. complete: The part of the epoch's data they covered:
        1.0, or less for the last summary of a run that ``max_steps`` or early stopping ended mid-epoch.
    """

    epoch: int
    epochs: int
    steps: int
    loss: float
    lr: float
    complete: float


def read_metrics(path: str | os.PathLike[str]) -> list[MetricRecord]:
    """The records of a ``metrics.jsonl`` file, in order; lines of other kinds or not JSON are skipped.

    Args:
        path: The file.

    Returns:
        The train, eval and sample records.

    Raises:
        OSError: The file cannot be read.
    """
    records: list[MetricRecord] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed write
        if isinstance(record, dict) and record.get("kind") in ("train", "eval", "sample"):
            records.append(cast(MetricRecord, record))
    return records
