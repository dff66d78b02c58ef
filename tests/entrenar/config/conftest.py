"""A project folder with data files, a local model folder and a helper that writes config.yaml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

MINIMAL: dict[str, Any] = {"model": {"path": "Qwen/Qwen2.5-0.5B"}, "data": {"train_path": "data/train.jsonl"}}

WriteConfig = Callable[..., Path]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """``proj/`` with ``data/{train,val,more}.jsonl`` and a local model folder ``models/tiny``."""
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    for name in ("train", "val", "more"):
        (root / "data" / f"{name}.jsonl").write_text('{"text": "hello"}\n')
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "config.json").write_text("{}")
    return root


@pytest.fixture
def write_config(project: Path) -> WriteConfig:
    """Write ``proj/config.yaml`` from a mapping (merged section-wise into `MINIMAL`) or raw text."""

    def write(content: dict[str, Any] | str | None = None, *, name: str = "config.yaml") -> Path:
        path = project / name
        if isinstance(content, str):
            path.write_text(content)
            return path
        data = {k: dict(v) for k, v in MINIMAL.items()}
        for section, values in (content or {}).items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
