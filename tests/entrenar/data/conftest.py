"""Helpers for the data-pipeline tests: tokenizer variants built from the tiny fixture checkpoints."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aprender.text import Tokenizer


@pytest.fixture
def tokenizer_variant(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Callable[..., Tokenizer]:
    """`make(family, **config_overrides)`: the family's tokenizer with some tokenizer_config.json keys changed."""

    def make(family: str, **overrides: Any) -> Tokenizer:
        folder = tmp_path / f"{family}-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        source = tiny_checkpoints[family]
        shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
        config = json.loads((source / "tokenizer_config.json").read_text())
        config.update(overrides)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        return Tokenizer.from_dir(folder)

    return make
