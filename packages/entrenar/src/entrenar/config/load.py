"""Read a YAML training config, apply command-line overrides and validate it into a `TrainConfig`.

The YAML dialect is `entrenar.config._yaml.ConfigLoader` (``lr: 2e-4`` is a float, duplicate keys are
errors). Every problem becomes one line that names the file and the key path (or ``file:line:column``
for syntax errors). A file that cannot be read or parsed is one problem; otherwise every key is
checked and one `ConfigError` reports all the problems found, malformed overrides first, then in
the order of the document (at most `MAX_REPORTED` lines, then how many more there are).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entrenar.config import _sections as sections
from entrenar.config._values import Context, check_keys, config_error, describe, make_section
from entrenar.config._yaml import parse_yaml
from entrenar.config.overrides import apply_overrides
from entrenar.config.schema import (
    DataSection,
    DistillSection,
    LoraSection,
    ModelSection,
    OptimizerSection,
    PruneSection,
    PublishSection,
    QatSection,
    QuantizeSection,
    SchedulerSection,
    TrainConfig,
    TrainingSection,
)
from entrenar.errors import ConfigError

__all__ = ["MAX_REPORTED", "config_from_mapping", "load_config", "parse_yaml"]

SECTIONS = (
    "model",
    "data",
    "optimizer",
    "scheduler",
    "lora",
    "quantize",
    "distill",
    "prune",
    "qat",
    "training",
    "publish",
)
_REQUIRED = ("model", "data")
MAX_REPORTED = 20  # problems listed in one error; the rest are counted


def read_config_text(path: Path, source: str) -> str:
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
        ConfigError: The file is missing, unreadable, empty, not YAML or not a mapping (one line); or the
            problems of the overrides and the keys, one line each; lines caused by an override end with
            ``(from the command line)``.
    """
    file = Path(path)
    source = str(path)
    data = parse_yaml(read_config_text(file, source), source)
    if data is None:
        raise config_error(f"{source}: the file is empty; it needs at least model.path and data.train_path")
    if not isinstance(data, dict):
        raise config_error(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {describe(data)}")
    data, from_cli, malformed = apply_overrides(data, overrides, source)
    ctx = _context(source, str(file.parent), from_cli)
    ctx.problems.extend(("", line) for line in malformed)  # no key path: they come first
    return _validate(data, ctx)


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
        ConfigError: Every problem found, one line each (see `load_config`).
    """
    return _validate(data, _context(source, base_dir, from_cli))


def _context(source: str, base_dir: str | None, from_cli: Sequence[str]) -> Context:
    return Context(source, os.path.abspath(base_dir if base_dir is not None else os.getcwd()), tuple(from_cli))


def _validate(data: object, ctx: Context) -> TrainConfig:
    if not isinstance(data, dict):
        raise ctx.error("", f"expected a mapping of sections ({', '.join(SECTIONS)}), got {describe(data)}")
    check_keys(data, list(SECTIONS), [], "", ctx)
    for name in _REQUIRED:
        if data.get(name) is None:
            ctx.report(f"{name}.{'path' if name == 'model' else 'train_path'}", "missing required key")
    cfg = _build(data, ctx)
    if cfg is None:
        raise problems_error(data, ctx)
    return cfg


def _build(data: dict[Any, Any], ctx: Context) -> TrainConfig | None:
    """Check the sections in dependency order (later rules need facts from earlier ones); None after any problem.

    The facts other sections depend on come from what the file says, so a broken section does not make
    its neighbours report follow-up errors.
    """
    raw_data = data.get("data")
    if isinstance(raw_data, dict):
        has_val = raw_data.get("val_path") is not None or raw_data.get("val_split") is not None
    else:
        has_val = raw_data is not None  # a data section that is not a mapping: do not blame early stopping on it
    has_lora = data.get("lora") is not None
    model = sections.build_model(data["model"], ctx) if data.get("model") is not None else {}
    dataset = sections.build_data(raw_data, ctx) if raw_data is not None else {}
    training = sections.build_training(data.get("training"), has_val, ctx)
    lora = sections.build_lora(data["lora"], ctx) if has_lora else None
    quantize = sections.build_quantize(data["quantize"], has_lora, ctx) if data.get("quantize") is not None else None
    optimizer = sections.build_optimizer(data.get("optimizer"), has_lora, ctx)
    scheduler = sections.build_scheduler(data.get("scheduler"), training.get("max_steps"), ctx)
    distill = sections.build_distill(data["distill"], ctx) if data.get("distill") is not None else None
    prune = None
    if data.get("prune") is not None:
        prune = sections.build_prune(data["prune"], data.get("quantize") is not None, training.get("max_steps"), ctx)
    qat = None
    if data.get("qat") is not None:
        qat = sections.build_qat(data["qat"], data, training.get("max_steps"), ctx)
    publish = None
    if data.get("publish") is not None:
        trained = qat.get("format") if qat is not None else None
        publish = sections.build_publish(data["publish"], has_lora, ctx, trained)
    if ctx.problems:
        return None
    return TrainConfig(
        model=ModelSection(**model),
        data=DataSection(**dataset),
        optimizer=OptimizerSection(**optimizer),
        scheduler=SchedulerSection(**scheduler),
        lora=LoraSection(**lora) if lora is not None else None,
        quantize=QuantizeSection(**quantize) if quantize is not None else None,
        distill=make_section(DistillSection, distill) if distill is not None else None,
        prune=PruneSection(**prune) if prune is not None else None,
        qat=QatSection(**qat) if qat is not None else None,
        training=TrainingSection(**training),
        publish=PublishSection(**publish) if publish is not None else None,
    )


def problems_error(data: dict[Any, Any], ctx: Context) -> ConfigError:
    """One `ConfigError` with a line per problem, in document order, at most `MAX_REPORTED` of them."""
    lines = [line for _, line in sorted(ctx.problems, key=lambda problem: _position(data, problem[0]))]
    if len(lines) > MAX_REPORTED:
        lines = [*lines[:MAX_REPORTED], f"... and {len(lines) - MAX_REPORTED} more errors in {ctx.source}"]
    return ConfigError("\n".join(lines))


def _position(data: dict[Any, Any], path: str) -> tuple[int, ...]:
    """Where key `path` (``lora.rank``, ``optimizer.betas[1]``) sits in the mapping: its index level by level.

    A key the mapping lacks (a missing required key) sorts after its siblings; ``""`` sorts first.
    """
    position: list[int] = []
    node: object = data
    for part in path.split(".") if path else []:
        if not isinstance(node, dict):
            break
        keys = [str(key) for key in node]
        name = part.split("[")[0]
        if name not in keys:
            return (*position, len(keys))
        position.append(keys.index(name))
        node = list(node.values())[position[-1]]
    return tuple(position)
