"""The YAML dialect of config files and command-line override values.

PyYAML's safe loader with two fixes for configs: floats written without a dot or without an exponent
sign (``lr: 2e-4``, valid YAML 1.2) are floats, not strings, and a key repeated in one mapping is an
error instead of silently keeping the last value.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from entrenar.config._values import config_error, describe

# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot or without a sign.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 exponent floats and duplicate-key detection."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build a mapping, rejecting a key that appears twice (merge keys ``<<`` excepted)."""
        seen: list[object] = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {describe(key)}; keep only one", key_node.start_mark
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


# A deep copy first: `add_implicit_resolver` appends to the per-character lists, which SafeLoader would
# otherwise share with us (and every other SafeLoader user would get our float rule).
ConfigLoader.yaml_implicit_resolvers = {ch: list(rs) for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML `text` with `ConfigLoader`.

    Args:
        text: The document.
        source: Label for messages (the file name).

    Returns:
        The parsed value (None for an empty document).

    Raises:
        ConfigError: ``<source>:<line>:<column>: invalid YAML: <problem>`` (1-based positions).
    """
    try:
        return yaml.load(text, Loader=ConfigLoader)  # ConfigLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        parts = [exc.problem, f"({exc.context})" if exc.context else None]
        problem = " ".join(" ".join(p for p in parts if p).split()) or "unreadable"
        raise config_error(f"{where}: invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise config_error(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise config_error(f"{source}: invalid YAML: nested too deeply for a config") from exc
