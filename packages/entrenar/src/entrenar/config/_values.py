"""Generic checks driven by each field's `Spec`: unknown and missing keys, types, choices and ranges.

Every problem is one line built by `Context.error`:
``<source>: <key path>: <what is wrong>[; what to do][ (from the command line)]``. The checks record
problems in the `Context` and go on, so one pass finds them all; the loader raises them together.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from entrenar.config.schema import ALL_LINEAR, AUTO_LAYERS, Spec
from entrenar.errors import ConfigError

T = TypeVar("T")

_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "pair": "a list of two numbers",
    "strs": "a list of strings",
    "targets": "'all-linear', a regex string or a list of module names",
    "layer_pairs": "'auto' or a list of [student_layer, teacher_layer] pairs",
    "section": "a mapping of keys",
    "sections": "a list of mappings",
}


@dataclass(frozen=True)
class Context:
    """Where the mapping came from, for error messages and relative paths.

    Attributes:
        source: Label that starts each message (the config file as the user named it, or ``<dict>``).
        base_dir: Absolute folder that relative paths are resolved against.
        from_cli: Key paths set by command-line overrides; errors at, under or above them say so.
        problems: ``(key path, message line)`` of every problem found so far, in the order found.
    """

    source: str
    base_dir: str
    from_cli: Collection[str] = ()
    problems: list[tuple[str, str]] = field(default_factory=list)

    def error(self, path: str, message: str, *related: str) -> ConfigError:
        """A `ConfigError` for `path` (also marked as from the command line when a `related` path was)."""
        suffix = " (from the command line)" if any(self._from_cli(p) for p in (path, *related)) else ""
        where = f"{path}: " if path else ""
        return config_error(f"{self.source}: {where}{message}{suffix}")

    def report(self, path: str, message: str, *related: str) -> None:
        """Record a problem at `path` (see `error`) and go on checking."""
        self.record(path, self.error(path, message, *related))

    def record(self, path: str, error: ConfigError) -> None:
        """Record an error raised while checking the key at `path`."""
        self.problems.append((path, str(error)))

    def ok(self, *paths: str) -> bool:
        """No problem was recorded at any of `paths` or under it: rules that combine keys run only on valid keys."""
        return not any(
            found == path or found.startswith((path + ".", path + "[")) for found, _ in self.problems for path in paths
        )

    def _from_cli(self, path: str) -> bool:
        """`path` was set by an override, lies under one, or holds one (``lorra`` for ``lorra.rank=4``)."""
        if not path:
            return False
        return any(
            path == key or path.startswith((key + ".", key + "[")) or key.startswith(path + ".")
            for key in self.from_cli
        )


def config_error(message: str) -> ConfigError:
    """A `ConfigError` whose message is one printable line (control characters and line breaks escaped)."""
    return ConfigError("".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message))


def describe(value: object) -> str:
    """A short, YAML-flavoured rendering of `value` for messages (``'three'``, ``null``, ``a list``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(value: object) -> str:
    """`describe`, telling an empty list apart (a check that wants a non-empty one)."""
    return "an empty list" if isinstance(value, list | tuple) and not value else describe(value)


def join_path(parent: str, key: object) -> str:
    """``parent.key`` (or ``key`` at the top level)."""
    return f"{parent}.{key}" if parent else str(key)


def check_keys(raw: dict[Any, Any], valid: list[str], required: list[str], path: str, ctx: Context) -> None:
    """Report every key not in `valid` (suggesting the closest) and every missing required key.

    Problems: ``<path>.<key>: unknown key; did you mean <close>?`` or ``missing required key``.
    """
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]}?" if close else f"valid keys: {', '.join(valid)}"
            ctx.report(join_path(path, key), f"unknown key; {hint}")
    for key in required:
        if key not in raw:
            ctx.report(join_path(path, key), "missing required key")


def read_section(cls: type, raw: object, path: str, ctx: Context) -> dict[str, Any]:
    """Validate one section mapping against the specs of dataclass `cls`.

    Args:
        cls: The section dataclass; fields without a ``spec`` in their metadata are derived, not keys.
        raw: The section's value from YAML (None counts as an empty mapping).
        path: The section's key path (``lora``).
        ctx: Error context.

    Returns:
        The converted values of the valid keys present: absent keys are left for the caller's defaults,
        invalid ones are left out and their problems recorded in `ctx` (a section that is not a mapping,
        unknown, missing or invalid keys).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        ctx.report(path, f"expected a mapping of keys, got {describe(raw)}")
        return {}
    specs = {f.name: f.metadata["spec"] for f in fields(cls) if "spec" in f.metadata}
    required = [f.name for f in fields(cls) if "spec" in f.metadata and f.default is MISSING]
    check_keys(raw, list(specs), required, path, ctx)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in specs:
            key_path = join_path(path, key)
            try:
                values[key] = convert(value, specs[key], key_path, ctx)
            except ConfigError as exc:
                ctx.record(key_path, exc)
    return values


def make_section(cls: type[T], values: dict[str, Any]) -> T:
    """The section dataclass `cls` of checked `values`, nested sections (``Spec.section``) built too."""
    nested = {}
    for f in fields(cls):  # type: ignore[arg-type]  # `cls` is a dataclass
        spec, value = f.metadata.get("spec"), values.get(f.name)
        if spec is not None and spec.section is not None and value is not None:
            many = spec.kind == "sections"
            nested[f.name] = (
                tuple(make_section(spec.section, v) for v in value) if many else make_section(spec.section, value)
            )
    return cls(**{**values, **nested})


def convert(value: object, spec: Spec, path: str, ctx: Context) -> Any:
    """Check `value` against `spec` and return it in its Python form (ints to floats, lists to tuples).

    Raises:
        ConfigError: Wrong type, not one of the choices, or out of range.
    """
    if value is None:
        if spec.nullable:
            return None
        raise ctx.error(path, f"expected {_EXPECTED[spec.kind]}, got null")
    result = _CONVERTERS[spec.kind](value, spec, path, ctx)
    if spec.choices and spec.kind != "strs" and result not in spec.choices:
        raise ctx.error(path, _not_a_choice(result, spec.choices))
    return result


def _not_a_choice(value: object, choices: tuple[object, ...]) -> str:
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{describe(value)} is not one of {', '.join(names)}{hint}"


def _to_int(value: object, spec: Spec, path: str, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(path, f"expected an integer, got {describe(value)}")
    _check_range(value, spec, path, ctx)
    return value


def _to_float(value: object, spec: Spec, path: str, ctx: Context) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(path, f"expected a number, got {describe(value)}")
    if not math.isfinite(value):
        raise ctx.error(path, f"expected a finite number, got {describe(value)}")
    _check_range(value, spec, path, ctx)
    return float(value)


def _to_bool(value: object, spec: Spec, path: str, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(path, f"expected true or false, got {describe(value)}")
    return value


def _to_str(value: object, spec: Spec, path: str, ctx: Context) -> str:
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, int | float) else ""
        raise ctx.error(path, f"expected a string, got {describe(value)}{hint}")
    if not value.strip():
        raise ctx.error(path, "expected a non-empty string")
    return value


def _to_pair(value: object, spec: Spec, path: str, ctx: Context) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ctx.error(path, f"expected a list of two numbers like [0.9, 0.999], got {describe(value)}")
    first, second = (_to_float(item, spec, f"{path}[{i}]", ctx) for i, item in enumerate(value))
    return first, second


def _to_strs(value: object, spec: Spec, path: str, ctx: Context) -> tuple[str, ...]:
    """A list of non-empty strings (each one of `spec.choices` when there are choices), each kept once."""
    if not isinstance(value, list | tuple):
        raise ctx.error(path, f"expected {_EXPECTED['strs']} like [a, b], got {describe(value)}")
    items = tuple(_to_str(item, spec, f"{path}[{i}]", ctx) for i, item in enumerate(value))
    for i, item in enumerate(items):
        if spec.choices and item not in spec.choices:
            raise ctx.error(f"{path}[{i}]", _not_a_choice(item, spec.choices))
    return tuple(dict.fromkeys(items))


def _to_targets(value: object, spec: Spec, path: str, ctx: Context) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return _target_pattern(value, path, ctx)
    if not isinstance(value, list | tuple) or not value:
        raise ctx.error(path, f"expected {_EXPECTED['targets']}, got {describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ctx.error(f"{path}[{i}]", f"expected a module name like q_proj, got {describe(item)}")
    return tuple(dict.fromkeys(value))


def _target_pattern(value: str, path: str, ctx: Context) -> str:
    if value.lower() == ALL_LINEAR:
        return ALL_LINEAR
    if not value.strip():
        raise ctx.error(path, f"expected {_EXPECTED['targets']}, got ''")
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ctx.error(path, f"regex {describe(value)} does not compile ({exc}); fix the pattern") from exc
    return value


def _to_layer_pairs(value: object, spec: Spec, path: str, ctx: Context) -> str | tuple[tuple[int, int], ...]:
    if value == AUTO_LAYERS:
        return AUTO_LAYERS
    if not isinstance(value, list | tuple) or not value:
        raise ctx.error(path, f"expected {_EXPECTED['layer_pairs']} like [[0, 0], [1, 2]], got {_shown(value)}")
    pairs = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(type(v) is int and v >= 0 for v in pair)):
            shown = repr(list(pair))[:60] if isinstance(pair, list | tuple) else describe(pair)
            raise ctx.error(f"{path}[{i}]", f"expected [student_layer, teacher_layer], two integers >= 0, got {shown}")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _to_section(value: object, spec: Spec, path: str, ctx: Context) -> dict[str, Any]:
    assert spec.section is not None  # the schema names the dataclass of every nested section
    return read_section(spec.section, value, path, ctx)


def _to_sections(value: object, spec: Spec, path: str, ctx: Context) -> tuple[dict[str, Any], ...]:
    assert spec.section is not None
    if not isinstance(value, list | tuple) or not value:
        raise ctx.error(path, f"expected {_EXPECTED['sections']}, got {_shown(value)}")
    return tuple(read_section(spec.section, item, f"{path}[{i}]", ctx) for i, item in enumerate(value))


def _check_range(value: float, spec: Spec, path: str, ctx: Context) -> None:
    low_ok = spec.low is None or (value > spec.low if spec.low_open else value >= spec.low)
    high_ok = spec.high is None or (value < spec.high if spec.high_open else value <= spec.high)
    if not (low_ok and high_ok):
        raise ctx.error(path, f"must be {_interval(spec)}, got {describe(value)}")


def _interval(spec: Spec) -> str:
    assert spec.low is not None  # the schema gives every upper bound a lower one
    if spec.high is None:
        return f"{'>' if spec.low_open else '>='} {_number(spec.low)}"
    left, right = "(" if spec.low_open else "[", ")" if spec.high_open else "]"
    return f"in {left}{_number(spec.low)}, {_number(spec.high)}{right}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


_CONVERTERS: dict[str, Callable[[Any, Spec, str, Context], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "str": _to_str,
    "pair": _to_pair,
    "strs": _to_strs,
    "targets": _to_targets,
    "layer_pairs": _to_layer_pairs,
    "section": _to_section,
    "sections": _to_sections,
}
