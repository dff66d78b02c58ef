"""Parameter settings of a merge config and their value for one tensor, as mergekit evaluates them.

A setting (mergekit's ``ParameterSetting``) is a scalar, a gradient (a list of scalars spread over the
layers: numbers interpolate linearly, booleans pick the nearest value at or below), or a list of
``{filter, value}`` conditions whose first match wins (``filter`` is a substring of the tensor name; ``*``
or no filter matches every tensor). Each is stored as a tuple of `Condition` (a scalar or a gradient is one
condition without a filter), which evaluates the same way.

For one tensor a parameter takes the first value found, in order: the input model's own ``parameters``
(per-input parameters only), the slice's ``parameters``, the top-level ``parameters``, the method's default
(mergekit's ``parameter_resolver``). A setting whose conditions all miss the tensor counts as not set there.
Per-input parameters of a method that takes a base apply to the other inputs only (mergekit's ``NON_BASE``
scope); with a method that ignores the base (``base: none``), the base is an ordinary input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from entrenar.config._values import Context, check_keys, describe
from entrenar.errors import MergeError
from entrenar.merge.base import MergeMethod, ParameterSpec, ParameterValue, ResolvedParameters

if TYPE_CHECKING:
    from entrenar.merge.config import MergeConfig, ModelRef

__all__ = [
    "Condition",
    "Setting",
    "applies_to_base",
    "evaluate_setting",
    "group_inputs",
    "layer_t",
    "parse_setting",
    "resolve_parameters",
    "setting_to_yaml",
]

Gradient = tuple[ParameterValue, ...]


@dataclass(frozen=True)
class Condition:
    """One ``{filter, value}`` entry.

    Attributes:
        value: A scalar, or a gradient of at least one value.
        filter: A substring the tensor name must contain; None or ``*`` matches every tensor.
    """

    value: ParameterValue | Gradient
    filter: str | None = None

    def matches(self, tensor_name: str) -> bool:
        """Whether this condition applies to `tensor_name`."""
        return self.filter is None or self.filter == "*" or (bool(tensor_name) and self.filter in tensor_name)


Setting = tuple[Condition, ...]
"""A parameter's setting at one place in the config: its conditions in order (a scalar is one condition)."""


def applies_to_base(method: MergeMethod) -> bool:
    """Whether the base model's input takes per-input parameters: only when the method ignores the base.

    mergekit marks every per-input parameter of a base-aware method ``NON_BASE`` (TIES' ``weight``,
    ``density``) and those of the others ``INPUT`` (linear's ``weight``: the base is one more input).
    """
    return method.base == "none"


def layer_t(index: int, num_layers: int) -> float:
    """The layer position gradients are evaluated at: ``index / (num_layers - 1)``, 1 for a one-layer slice.

    Args:
        index: The layer's index within its slice (``models:`` is one slice over every layer).
        num_layers: The slice's layer count.

    Returns:
        t in [0, 1]; tensors outside the layers (embeddings, final norm, LM head) use 0 instead.
    """
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def parse_setting(raw: object, spec: ParameterSpec, path: str, ctx: Context) -> Setting | None:
    """Check a setting from YAML against the parameter's kind and normalise it to conditions.

    Args:
        raw: The YAML value: a scalar, a list of scalars, a ``{filter, value}`` mapping or a list of them.
        spec: The parameter (its kind: float takes numbers, bool takes true/false).
        path: Its key path, for messages (``models[0].parameters.weight``).
        ctx: Where problems are recorded.

    Returns:
        The setting, or None when a problem was recorded.
    """
    if isinstance(raw, dict):
        condition = _condition(raw, spec, path, ctx)
        return None if condition is None else (condition,)
    if isinstance(raw, list) and raw and all(isinstance(item, dict) for item in raw):
        conditions = [_condition(item, spec, f"{path}[{i}]", ctx) for i, item in enumerate(raw)]
        return None if any(c is None for c in conditions) else tuple(c for c in conditions if c is not None)
    value = _value(raw, spec, path, ctx)
    return None if value is None else (Condition(value),)


def _condition(raw: dict[object, object], spec: ParameterSpec, path: str, ctx: Context) -> Condition | None:
    found = len(ctx.problems)
    check_keys(raw, ["filter", "value"], ["value"], path, ctx)
    filter_ = raw.get("filter")
    if filter_ is not None and (not isinstance(filter_, str) or not filter_):
        ctx.report(
            f"{path}.filter",
            f"expected part of a tensor name like mlp or self_attn, got {describe(filter_)}; "
            "leave filter out (or write '*') to match every tensor",
        )
    value = _value(raw["value"], spec, f"{path}.value", ctx) if "value" in raw else None
    if len(ctx.problems) > found or value is None:
        return None
    return Condition(value, filter_ if isinstance(filter_, str) else None)


def _value(raw: object, spec: ParameterSpec, path: str, ctx: Context) -> ParameterValue | Gradient | None:
    """A scalar or a gradient of the parameter's kind."""
    if isinstance(raw, list):
        if not raw:
            ctx.report(path, f"empty list; give a value or a gradient like [0, 0.5, 1] for {spec.name}")
            return None
        if any(isinstance(item, dict) for item in raw):
            ctx.report(path, "mixes values and {filter, value} entries; write a gradient or a list of conditions")
            return None
        values = [_scalar(item, spec, f"{path}[{i}]", ctx) for i, item in enumerate(raw)]
        return None if any(v is None for v in values) else tuple(v for v in values if v is not None)
    return _scalar(raw, spec, path, ctx)


def _scalar(raw: object, spec: ParameterSpec, path: str, ctx: Context) -> ParameterValue | None:
    if spec.kind is bool:
        if isinstance(raw, bool):
            return raw
        ctx.report(path, f"{spec.name} takes true or false, got {describe(raw)}")
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        return float(raw)
    ctx.report(
        path, f"{spec.name} takes a number, got {describe(raw)}{'; write it without quotes' if _numeric(raw) else ''}"
    )
    return None


def _numeric(raw: object) -> bool:
    """A string that reads as a number (``'0.5'`` quoted in YAML)."""
    try:
        return isinstance(raw, str) and math.isfinite(float(raw))
    except ValueError:
        return False


def evaluate_setting(setting: Setting, tensor_name: str, t: float) -> ParameterValue | None:
    """A setting's value for one tensor (mergekit's ``evaluate_setting``).

    Args:
        setting: The conditions.
        tensor_name: The tensor's name (in the input the value is for).
        t: The layer position (`layer_t`; 0 outside the layers).

    Returns:
        The first matching condition's value: a scalar as it is; a gradient of numbers interpolated linearly
        between its two values around ``t * (len - 1)``; a gradient of booleans at index
        ``int(t * (len - 1))``. None when no condition matches.
    """
    for condition in setting:
        if condition.matches(tensor_name):
            return _at(condition.value, t)
    return None


def _at(value: ParameterValue | Gradient, t: float) -> ParameterValue:
    if not isinstance(value, tuple):
        return value
    if any(isinstance(v, bool) for v in value):
        return value[int(t * (len(value) - 1))]
    # The same arithmetic as mergekit's, so both give the same float.
    scaled = t * (len(value) - 1)
    low = int(scaled)
    high = min(len(value) - 1, low + 1)
    frac = scaled - low
    return (1 - frac) * value[low] + frac * value[high]


def setting_to_yaml(setting: Setting) -> object:
    """The setting as YAML data: a scalar or list for one unfiltered condition, else ``{filter, value}`` entries."""
    if len(setting) == 1 and setting[0].filter is None:
        return _value_to_yaml(setting[0].value)
    return [
        {**({"filter": c.filter} if c.filter is not None else {}), "value": _value_to_yaml(c.value)} for c in setting
    ]


def _value_to_yaml(value: ParameterValue | Gradient) -> object:
    return list(value) if isinstance(value, tuple) else value


def group_inputs(config: MergeConfig, slice_index: int | None) -> tuple[tuple[ModelRef, ...], int | None]:
    """The input models of one slice's tensors, in order, and the base's position among them (mergekit's plan).

    ``models:``: the models in order, the base appended when it is not one of them. ``slices:``: the slice's
    sources in order; the base is the slice's ``base_model`` or the top-level one, if it is a source. The
    embedding takes the first slice's inputs and the final norm and LM head the last slice's.

    Args:
        config: The merge config.
        slice_index: The slice (None or 0 for a ``models:`` config).

    Returns:
        ``(inputs, base_index)``; base_index is None without a base.
    """
    if config.models is not None:
        _check_slice_index(slice_index, 1)
        inputs = tuple(entry.model for entry in config.models)
        base = config.base_model
        if base is not None and base not in inputs:
            inputs = (*inputs, base)
    else:
        assert config.slices is not None  # the loader sets exactly one of models and slices
        _check_slice_index(slice_index, len(config.slices))
        chosen = config.slices[slice_index or 0]
        inputs = tuple(source.model for source in chosen.sources)
        base = chosen.base_model or config.base_model
    return inputs, inputs.index(base) if base is not None and base in inputs else None


def _check_slice_index(slice_index: int | None, count: int) -> None:
    if slice_index is not None and not 0 <= slice_index < count:
        raise IndexError(f"slice_index {slice_index} is outside the config's {count} slices")


def resolve_parameters(
    config: MergeConfig,
    method: MergeMethod,
    *,
    tensor_name: str,
    t: float,
    sources: Sequence[ModelRef],
    slice_index: int | None,
    base_index: int | None,
    input_names: Sequence[str] | None = None,
) -> ResolvedParameters:
    """The method's parameters for one output tensor (mergekit's ``resolve_parameters``).

    Args:
        config: The merge config (checked against `method` when loaded).
        method: The merge method.
        tensor_name: The output tensor's name (shared parameters' filters match it).
        t: The layer position (`layer_t`; 0 outside the layers).
        sources: The inputs, in group order (`group_inputs`).
        slice_index: The tensor's slice (None or 0 for a ``models:`` config).
        base_index: The base's position in `sources`, or None.
        input_names: The tensor's name in each input (per-input filters match it; a slice may take other
            layer numbers than it writes); None: `tensor_name` for every input.

    Returns:
        Shared values by name; per-input values aligned with `sources` (None for the base when
        `applies_to_base` is false).

    Raises:
        MergeError: A parameter without a default has no value for this tensor (its filters all miss it).
    """
    names = list(input_names) if input_names is not None else [tensor_name] * len(sources)
    chosen = config.slices[slice_index or 0] if config.slices is not None else None
    outer = [chosen.parameters if chosen is not None else {}, config.parameters]
    own: dict[ModelRef, Mapping[str, Setting]] = (
        {entry.model: entry.parameters for entry in config.models}
        if chosen is None and config.models is not None
        else {source.model: source.parameters for source in (chosen.sources if chosen is not None else ())}
    )
    shared = {
        spec.name: _resolve(spec, outer, tensor_name, t, method, tensor_name)
        for spec in method.parameters
        if not spec.per_input
    }
    per_input = {
        spec.name: tuple(
            None
            if index == base_index and not applies_to_base(method)
            else _resolve(spec, [own.get(model, {}), *outer], names[index], t, method, f"{model}: {names[index]}")
            for index, model in enumerate(sources)
        )
        for spec in method.parameters
        if spec.per_input
    }
    return ResolvedParameters(shared=shared, per_input=per_input)


def _resolve(
    spec: ParameterSpec,
    scopes: Sequence[Mapping[str, Setting]],
    tensor_name: str,
    t: float,
    method: MergeMethod,
    where: str,
) -> ParameterValue:
    for scope in scopes:
        if spec.name in scope:
            value = evaluate_setting(scope[spec.name], tensor_name, t)
            if value is not None:
                return value
    if spec.default is None:
        raise MergeError(
            f"{where}: {method.name} needs {spec.name}, and no filter of its settings matches this tensor; "
            f"add a value without a filter"
        )
    return spec.default
