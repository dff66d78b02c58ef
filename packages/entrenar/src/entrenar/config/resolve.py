"""The resolved config: every default filled in, every path absolute, as a plain mapping or a file.

`config_to_dict` output only holds dicts, lists, strings, numbers, bools and None, so it goes
straight into YAML or JSON (``final_model.json``); `TrainConfig.from_dict` of it gives back an equal
config. Absent optional sections (``lora``, ``quantize``, ``distill``, ``publish``) are left out. Derived
fields (``model.source``, ``distill.source``) are not keys: loading recomputes them.
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from aprender.atomic import atomic_write_text
from entrenar.config.schema import TrainConfig

__all__ = ["CONFIG_FILENAME", "config_to_dict", "write_resolved_config"]

CONFIG_FILENAME = "config.yaml"


def _section_to_dict(section: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(section, f.name)) for f in fields(section) if "spec" in f.metadata}


def _plain(value: Any) -> Any:
    """A key's value as YAML holds it: nested sections as mappings, tuples as lists."""
    if is_dataclass(value):
        return _section_to_dict(value)
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a plain, YAML-able mapping of sections.

    Args:
        cfg: A validated config.

    Returns:
        ``{"model": {...}, "data": {...}, ...}`` in schema order; tuples become lists.
    """
    return {f.name: _section_to_dict(getattr(cfg, f.name)) for f in fields(cfg) if getattr(cfg, f.name) is not None}


def write_resolved_config(cfg: TrainConfig, output_dir: str | os.PathLike[str]) -> Path:
    """Write the resolved config to ``<output_dir>/config.yaml`` atomically (the folder is created).

    Loading the file with `load_config` gives back an equal config.

    Args:
        cfg: A validated config.
        output_dir: The folder to write into.

    Returns:
        The path of the written file.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CONFIG_FILENAME
    header = f"# Resolved entrenar config ({cfg.method}): every default filled in, every path absolute.\n"
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)
    atomic_write_text(target, header + body)
    return target
