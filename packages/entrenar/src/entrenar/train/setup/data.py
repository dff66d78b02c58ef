"""The data step of a run: the ``data:`` section's datasets (`entrenar.data.build_datasets`)."""

from __future__ import annotations

from aprender.text import Tokenizer
from entrenar.config import TrainConfig
from entrenar.data import Dataset, build_datasets

__all__ = ["load_data"]


def load_data(cfg: TrainConfig, tokenizer: Tokenizer) -> tuple[Dataset, Dataset | None]:
    """The ``data:`` section's training and validation datasets.

    Args:
        cfg: The config.
        tokenizer: The model's tokenizer.

    Returns:
        (train, val); val is None without ``data.val_path`` or ``data.val_split``.

    Raises:
        DataError, InvalidRecordError: As `entrenar.data.build_datasets`.
    """
    data = cfg.data
    return build_datasets(
        data.train_path,
        tokenizer=tokenizer,
        seq_len=data.seq_len,
        val_path=data.val_path,
        val_split=data.val_split,
        format=data.format,
        train_on="all" if data.train_on == "all" else "completion",
        packing=data.packing,
        skip_invalid=data.skip_invalid,
        seed=cfg.training.seed,
    )
