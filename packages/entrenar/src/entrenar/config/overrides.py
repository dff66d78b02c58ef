"""``key.path=value`` overrides from the command line, applied to the raw mapping before validation.

Values are YAML in the config dialect: ``training.max_steps=10`` is an int, ``lr=1e-4`` a float,
``publish.private=true`` a bool, ``lora.target_modules=[q_proj,v_proj]`` a list, ``quantize=null``
removes a section. Because they land in the mapping before validation, an override gets exactly the
checks (and messages) a key in the file gets, marked ``(from the command line)``. Missing sections on
the way are created (``quantize.bits=4`` on a LoRA config turns it into QLoRA).

Example:
    >>> data, keys, problems = apply_overrides({"training": {"epochs": 3}}, ["training.max_steps=10"], "config.yaml")
    >>> data["training"], keys, problems
    ({'epochs': 3, 'max_steps': 10}, ['training.max_steps'], [])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from entrenar.config._values import config_error, describe
from entrenar.config._yaml import parse_yaml
from entrenar.errors import ConfigError

__all__ = ["apply_overrides", "parse_override"]

_CLI = " (from the command line)"


def parse_override(text: str, source: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and its YAML-parsed value.

    Args:
        text: One override as typed.
        source: The config file's label, for messages.

    Returns:
        ``(["a", "b", "c"], value)``.

    Raises:
        ConfigError: No ``=``, an empty key part, an empty value, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise config_error(f"{source}: override {text!r}: expected key=value, e.g. training.max_steps=10{_CLI}")
    parts = key.split(".")
    if any(not part.strip() or part != part.strip() for part in parts):
        raise config_error(f"{source}: {key}: malformed key path; write section.key, e.g. lora.rank{_CLI}")
    if not raw.strip():
        raise config_error(f"{source}: {key}: empty value; write {key}=null to unset it{_CLI}")
    try:
        value = parse_yaml(raw, "value")
    except ConfigError as exc:
        raise config_error(f"{source}: {key}: {exc}{_CLI}") from exc
    return parts, value


def apply_overrides(
    data: dict[Any, Any], overrides: Sequence[str], source: str
) -> tuple[dict[Any, Any], list[str], list[str]]:
    """Apply overrides, in order, to a copy of `data`; skip (and describe) the malformed ones.

    Args:
        data: The mapping parsed from the config file (left unchanged).
        overrides: ``key.path=value`` strings.
        source: The config file's label, for messages.

    Returns:
        The new mapping; the dotted key paths that were set (for ``(from the command line)`` marks); and
        one error line per override that was skipped: malformed (see `parse_override`), or a key path
        that runs through a value that is not a section (``training.epochs.x=1``).
    """
    result = copy.deepcopy(data)
    keys: list[str] = []
    problems: list[str] = []
    for text in overrides:
        try:
            parts, value = parse_override(text, source)
            node = _parent(result, parts, source)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        node[parts[-1]] = value
        keys.append(".".join(parts))
    return result, keys, problems


def _parent(data: dict[Any, Any], parts: list[str], source: str) -> dict[Any, Any]:
    """The mapping that holds key ``parts[-1]``; missing sections on the way are created."""
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise config_error(
                f"{source}: {'.'.join(parts)}: {where} is {describe(child)}, not a section; "
                f"set {where}=... instead{_CLI}"
            )
        node = child
    return node
