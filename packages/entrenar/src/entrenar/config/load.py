"""Read a YAML training config, apply command-line overrides and validate it into a `TrainConfig`.

The YAML dialect is `entrenar.config._yaml.ConfigLoader` (``lr: 2e-4`` is a float, duplicate keys are
errors). Every problem becomes one `ConfigError` line that names the file and the key path (or
``file:line:column`` for syntax errors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entrenar.config import _sections as sections
from entrenar.config._values import Context, check_keys, config_error, describe
from entrenar.config._yaml import parse_yaml
from entrenar.config.overrides import apply_overrides
from entrenar.config.schema import TrainConfig

__all__ = ["config_from_mapping", "load_config", "parse_yaml"]

SECTIONS = ("model", "data", "optimizer", "scheduler", "lora", "quantize", "training", "publish")
_REQUIRED = ("model", "data")


def _read_text(path: Path, source: str) -> str:
    """The file's text, with one-line errors for a missing, unreadable or non-UTF-8 file."""
    if path.is_dir():
        raise config_error(f"{source}: is a folder; pass the YAML config file inside it")
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise config_error(f"{source}: no such file; check the path or write one with `entrenar init`") from exc
    except UnicodeDecodeError as exc:
        raise config_error(f"{source}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise config_error(f"{source}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Load, override and validate a YAML training config.

    Relative paths inside the file are resolved against the file's folder, not the current directory.

    Args:
        path: The YAML file; messages name it as given here.
        overrides: ``key.path=value`` strings from the command line (``training.max_steps=10``,
            ``optimizer.betas=[0.9,0.95]``); values are YAML. Applied in order, before validation.

    Returns:
        The validated config.

    Raises:
        ConfigError: The file is missing, unreadable, empty, not YAML, not a mapping, or fails validation;
            errors caused by an override end with ``(from the command line)``.
    """
    file = Path(path)
    source = str(path)
    data = parse_yaml(_read_text(file, source), source)
    if data is None:
        raise config_error(f"{source}: the file is empty; it needs at least model.path and data.train_path")
    if not isinstance(data, dict):
        raise config_error(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {describe(data)}")
    data, from_cli = apply_overrides(data, overrides, source)
    return config_from_mapping(data, source=source, base_dir=str(file.parent), from_cli=from_cli)


def config_from_mapping(
    data: object, *, source: str = "<dict>", base_dir: str | None = None, from_cli: Sequence[str] = ()
) -> TrainConfig:
    """Validate a mapping of sections and build the `TrainConfig` (see `TrainConfig.from_dict`).

    Args:
        data: The mapping (YAML-shaped: dicts, lists, scalars).
        source: Label that starts each message.
        base_dir: Folder for relative paths; None uses the current directory.
        from_cli: Key paths that came from command-line overrides (marked in messages).

    Returns:
        The validated config.

    Raises:
        ConfigError: The first problem, in section order.
    """
    ctx = Context(source, os.path.abspath(base_dir if base_dir is not None else os.getcwd()), tuple(from_cli))
    if not isinstance(data, dict):
        raise ctx.error("", f"expected a mapping of sections ({', '.join(SECTIONS)}), got {describe(data)}")
    check_keys(data, list(SECTIONS), [], "", ctx)
    for name in _REQUIRED:
        if data.get(name) is None:
            key = "path" if name == "model" else "train_path"
            raise ctx.error(f"{name}.{key}", "missing required key")
    return _build(data, ctx)


def _build(data: dict[Any, Any], ctx: Context) -> TrainConfig:
    """The sections in dependency order (later rules need facts from earlier sections)."""
    model = sections.build_model(data["model"], ctx)
    dataset = sections.build_data(data["data"], ctx)
    has_val = dataset.val_path is not None or dataset.val_split is not None
    training = sections.build_training(data.get("training"), has_val, ctx)
    lora = sections.build_lora(data["lora"], ctx) if data.get("lora") is not None else None
    has_lora = lora is not None
    quantize = sections.build_quantize(data["quantize"], has_lora, ctx) if data.get("quantize") is not None else None
    return TrainConfig(
        model=model,
        data=dataset,
        optimizer=sections.build_optimizer(data.get("optimizer"), has_lora, ctx),
        scheduler=sections.build_scheduler(data.get("scheduler"), training.max_steps, ctx),
        lora=lora,
        quantize=quantize,
        training=training,
        publish=sections.build_publish(data["publish"], has_lora, ctx) if data.get("publish") is not None else None,
    )
