"""The merge config of ``entrenar merge``: mergekit's YAML, checked in one pass like a training config.

mergekit's keys: ``merge_method``, ``base_model``, ``models`` (each ``model`` with optional ``parameters``)
or ``slices`` (each with ``sources``: ``model``, ``layer_range: [start, end]``, optional ``parameters``; and
optional ``base_model`` and ``parameters``), ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source``
(``base``, ``union`` or a model) and ``chat_template`` (``auto``, a built-in name or a Jinja template).
Ours: ``eval_data``, ``keep_worse``, ``seed`` and ``publish`` (the training config's section). mergekit keys
we do not implement (``modules``, ``tokenizer``, ``residual_weight``) are errors, never ignored.

A model is named as mergekit names it: a local folder (or ``.gguf`` file), a Hub id, ``id@revision``, and
``model+adapter`` for a PEFT adapter folded into the model first. Local paths are relative to the YAML
file's folder; references are classified (`aprender.reference`) but not downloaded here.

Every problem is one line naming the file and key path (``merge.yaml: models[1].parameters.wieght: ...``),
and one `entrenar.errors.ConfigError` reports them all; parameter values are resolved per tensor by
`entrenar.merge.params`.

Example:
    >>> cfg = load_merge_config("merge.yaml", ["parameters.normalize=false"])  # doctest: +SKIP
    >>> inputs, base_index = group_inputs(cfg, None)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aprender.constants import DTYPE_NAMES
from aprender.errors import ChatTemplateError, ModelReferenceError
from aprender.reference import classify_model_reference
from entrenar.config._sections import absolute_path, build_publish, model_path_problem
from entrenar.config._values import Context, check_keys, config_error, convert, describe
from entrenar.config._yaml import parse_yaml
from entrenar.config.load import problems_error, read_config_text
from entrenar.config.overrides import apply_overrides
from entrenar.config.schema import MAX_SEED, PublishSection, Spec
from entrenar.constants import ADAPTER_CONFIG_NAME
from entrenar.errors import ConfigError
from entrenar.merge.base import MergeMethod, ParameterSpec
from entrenar.merge.methods.registry import METHODS
from entrenar.merge.params import Setting, applies_to_base, parse_setting, setting_to_yaml

__all__ = [
    "CHAT_TEMPLATE_NAMES",
    "DEFAULT_SEED",
    "TOKENIZER_SOURCES",
    "InputModel",
    "MergeConfig",
    "ModelRef",
    "OutputSlice",
    "SliceSource",
    "load_merge_config",
]

CHAT_TEMPLATE_NAMES = ("alpaca", "chatml", "exaone", "llama3", "mistral")
"""``chat_template`` names of mergekit's built-in templates (``auto``: the one most input models use)."""
TOKENIZER_SOURCES = ("base", "union")
DEFAULT_SEED = 42

_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "chat_template",
    "eval_data",
    "keep_worse",
    "seed",
    "publish",
)
_UNSUPPORTED = {
    "modules": "mergekit's modules syntax (multi-module models) is not supported; use models or slices",
    "tokenizer": "mergekit's tokenizer block is not supported; use tokenizer_source: base, union or a model",
    "residual_weight": "mergekit's residual_weight is not supported; remove it",
}
_SPECS = {
    "merge_method": Spec("str"),
    "dtype": Spec("str", choices=DTYPE_NAMES, nullable=True),
    "out_dtype": Spec("str", choices=DTYPE_NAMES, nullable=True),
    "chat_template": Spec("str", nullable=True),
    "eval_data": Spec("str", nullable=True),
    "keep_worse": Spec("bool"),
    "seed": Spec("int", low=0, high=MAX_SEED),
}
_REF_EXAMPLE = "org/name, ./folder, org/name@revision or model+adapter"
_MIN_JINJA = 20  # mergekit's rule: shorter text, or text without '{', is no template


@dataclass(frozen=True)
class ModelRef:
    """A model as the config names it (mergekit's ``model@revision+adapter``).

    Attributes:
        reference: The absolute path of a local folder or ``.gguf`` file, or a Hub repo id.
        revision: Hub only: the branch, tag or commit after ``@``; None for the default branch.
        adapter: A PEFT adapter to fold into the model first (after ``+``): an absolute folder or a Hub id.
    """

    reference: str
    revision: str | None = None
    adapter: str | None = None

    def __str__(self) -> str:
        text = self.reference if self.revision is None else f"{self.reference}@{self.revision}"
        return text if self.adapter is None else f"{text}+{self.adapter}"


@dataclass(frozen=True)
class InputModel:
    """One entry of ``models:``: a model and its own parameter settings."""

    model: ModelRef
    parameters: Mapping[str, Setting] = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    """One source of a slice: the layers ``[start, end)`` of a model, and its own parameter settings."""

    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Mapping[str, Setting] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSlice:
    """One entry of ``slices:``: output layers merged from the same number of layers of each source.

    Attributes:
        sources: The sources, in order.
        base_model: This slice's base (None: the top-level ``base_model``).
        parameters: Settings for every source of the slice.
    """

    sources: tuple[SliceSource, ...]
    base_model: ModelRef | None = None
    parameters: Mapping[str, Setting] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Layers the slice writes (each source gives as many)."""
        start, end = self.sources[0].layer_range
        return end - start


@dataclass(frozen=True)
class MergeConfig:
    """A checked merge config. Exactly one of `models` and `slices` is set.

    Attributes:
        merge_method: A registered method's name.
        models: ``models:`` entries, or None.
        slices: ``slices:`` entries, or None.
        base_model: The base model, or None.
        parameters: Top-level settings (for every input and slice).
        dtype: mergekit's ``dtype``, the dtype inputs are merged in (None: their own).
        out_dtype: The dtype written (None: as mergekit, `dtype`).
        tokenizer_source: ``"base"``, ``"union"``, a `ModelRef`, or None (no vocabulary merge).
        chat_template: ``"auto"``, one of `CHAT_TEMPLATE_NAMES`, a Jinja template, or None.
        eval_data: Absolute path of a text or JSONL file for the perplexity check, or None for no check.
        keep_worse: Keep a merged model that the perplexity check refuses (far worse than every input,
            `entrenar.merge.evaluate.check_not_worse`); true only with `eval_data`.
        seed: The seed of a random method (DARE, DELLA): `DEFAULT_SEED` unless set; None for a method that
            draws no random numbers (setting it there is an error).
        publish: Upload the result to the Hub, as after training; None to skip.
    """

    merge_method: str
    models: tuple[InputModel, ...] | None
    slices: tuple[OutputSlice, ...] | None
    base_model: ModelRef | None = None
    parameters: Mapping[str, Setting] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | ModelRef | None = None
    chat_template: str | None = None
    eval_data: str | None = None
    keep_worse: bool = False
    seed: int | None = None
    publish: PublishSection | None = None

    def referenced_models(self) -> tuple[ModelRef, ...]:
        """Every model the merge reads, once each, in order of appearance (the base last if not an input)."""
        if self.models is not None:
            found = [entry.model for entry in self.models]
        else:
            assert self.slices is not None
            found = [ref for out in self.slices for ref in (*(s.model for s in out.sources), out.base_model) if ref]
        return tuple(dict.fromkeys([*found, *([self.base_model] if self.base_model else [])]))

    def to_yaml(self) -> str:
        """The resolved config as YAML (absolute paths; loading it gives back an equal config)."""
        data: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            data["base_model"] = str(self.base_model)
        if self.models is not None:
            data["models"] = [{"model": str(m.model), **_parameters_yaml(m.parameters)} for m in self.models]
        if self.slices is not None:
            data["slices"] = [_slice_yaml(out) for out in self.slices]
        data.update(_parameters_yaml(self.parameters))
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template", "eval_data"):
            value = getattr(self, key)
            if value is not None:
                data[key] = str(value)
        if self.eval_data is not None:
            data["keep_worse"] = self.keep_worse
        if self.seed is not None:
            data["seed"] = self.seed
        if self.publish is not None:
            data["publish"] = {k: v for k, v in dataclasses.asdict(self.publish).items() if v is not None}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)


def _parameters_yaml(parameters: Mapping[str, Setting]) -> dict[str, Any]:
    return {"parameters": {k: setting_to_yaml(v) for k, v in parameters.items()}} if parameters else {}


def _slice_yaml(out: OutputSlice) -> dict[str, Any]:
    sources = [
        {"model": str(s.model), "layer_range": list(s.layer_range), **_parameters_yaml(s.parameters)}
        for s in out.sources
    ]
    base = {"base_model": str(out.base_model)} if out.base_model is not None else {}
    return {"sources": sources, **base, **_parameters_yaml(out.parameters)}


def load_merge_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    methods: Mapping[str, MergeMethod] | None = None,
) -> MergeConfig:
    """Load, override and check a mergekit YAML merge config.

    Args:
        path: The YAML file; messages name it as given here, relative paths inside start at its folder.
        overrides: ``key.path=value`` strings (``parameters.normalize=false``, ``seed=7``), applied in order
            before the checks, as for training configs.
        methods: The merge methods by name; None: `entrenar.merge.methods.registry.METHODS`.

    Returns:
        The checked config.

    Raises:
        ConfigError: The file is missing, unreadable or not a YAML mapping (one line); or every problem of
            the overrides and keys, one line each, naming the key path.
    """
    file = Path(path)
    source = str(path)
    if not file.exists():
        raise config_error(f"{source}: no such file; check the path of the merge config")
    data = parse_yaml(read_config_text(file, source), source)
    if data is None:
        raise config_error(f"{source}: the file is empty; it needs merge_method and models (or slices)")
    if not isinstance(data, dict):
        raise config_error(f"{source}: expected a mapping of keys ({', '.join(_KEYS)}), got {describe(data)}")
    data, from_cli, malformed = apply_overrides(data, overrides, source)
    ctx = Context(source, os.path.abspath(file.parent), tuple(from_cli))
    ctx.problems.extend(("", line) for line in malformed)
    config = _build(data, ctx, METHODS if methods is None else methods)
    if config is None:
        raise problems_error(data, ctx)
    return config


def _build(data: dict[Any, Any], ctx: Context, methods: Mapping[str, MergeMethod]) -> MergeConfig | None:
    """Check every key (later checks need earlier facts); None after any problem."""
    _check_keys(data, list(_KEYS), "", ctx)
    values = {key: _convert(data, key, ctx) for key in _SPECS if key in data}
    method = _method(values.get("merge_method"), methods, ctx)
    if "merge_method" not in data:
        ctx.report("merge_method", f"missing required key; one of: {', '.join(sorted(methods))}")
    base = _model_ref(data["base_model"], "base_model", ctx) if data.get("base_model") is not None else None
    models, slices = _inputs(data, method, base, ctx)
    parameters = _parameters(data.get("parameters"), "parameters", method, ctx)
    if method is not None and method.base == "required" and not _has_base(data):
        ctx.report("base_model", f"missing; {method.name} needs a base model (the one the others are compared to)")
    if method is not None and ctx.ok("base_model", "models", "slices"):
        _check_groups(method, models, slices, base, parameters, ctx)
    tokenizer_source = _tokenizer_source(data, base, ctx)
    if values.get("chat_template") is not None:
        _check_chat_template(values["chat_template"], ctx)
    eval_data = _eval_data(values, ctx)
    seed = _seed(values, method, ctx)
    publish = _publish(data["publish"], ctx) if data.get("publish") is not None else None
    if ctx.problems or method is None:
        return None
    return MergeConfig(
        merge_method=method.name,
        models=models,
        slices=slices,
        base_model=base,
        parameters=parameters,
        dtype=values.get("dtype"),
        out_dtype=values.get("out_dtype"),
        tokenizer_source=tokenizer_source,
        chat_template=values.get("chat_template"),
        eval_data=eval_data,
        keep_worse=values.get("keep_worse", False),
        seed=seed,
        publish=publish,
    )


def _check_keys(raw: dict[Any, Any], valid: list[str], path: str, ctx: Context, required: Sequence[str] = ()) -> None:
    """`check_keys`, with mergekit keys we do not implement named as such."""
    known = {key: value for key, value in raw.items() if key not in _UNSUPPORTED}
    for key in raw:
        if key in _UNSUPPORTED:
            ctx.report(f"{path}.{key}" if path else key, _UNSUPPORTED[key])
    check_keys(known, valid, list(required), path, ctx)


def _convert(data: dict[Any, Any], key: str, ctx: Context) -> Any:
    try:
        return convert(data[key], _SPECS[key], key, ctx)
    except ConfigError as exc:
        ctx.record(key, exc)
        return None


def _method(name: str | None, methods: Mapping[str, MergeMethod], ctx: Context) -> MergeMethod | None:
    if name is None:
        return None
    if name in methods:
        return methods[name]
    close = difflib.get_close_matches(name, list(methods), n=1)
    hint = f"did you mean {close[0]}?" if close else f"one of: {', '.join(sorted(methods))}"
    ctx.report("merge_method", f"unknown merge method {name!r}; {hint}")
    return None


def _model_ref(raw: object, path: str, ctx: Context) -> ModelRef | None:
    """Parse and classify ``model[@revision][+adapter]``; None after a recorded problem."""
    if not isinstance(raw, str) or not raw.strip():
        ctx.report(path, f"expected a model reference like {_REF_EXAMPLE}, got {describe(raw)}")
        return None
    parts = raw.split("+")
    if len(parts) > 2:
        ctx.report(path, f"{raw!r} has more than one '+'; write model+adapter")
        return None
    found = len(ctx.problems)
    model = _located(parts[0], path, ctx)
    adapter = _located(parts[1], path, ctx) if len(parts) == 2 else None
    if adapter is not None:
        _check_adapter(*adapter, path, ctx)
    if len(ctx.problems) > found or model is None:
        return None
    return ModelRef(model[0], model[2], adapter[0] if adapter is not None else None)


def _located(text: str, path: str, ctx: Context) -> tuple[str, str, str | None] | None:
    """``(location, kind, revision)`` of ``reference[@revision]``."""
    reference, at, revision = text.partition("@")
    if not reference or (at and not revision) or "@" in revision:
        ctx.report(path, f"{text!r} is not a model reference like {_REF_EXAMPLE}")
        return None
    try:
        located = classify_model_reference(reference, base_dir=ctx.base_dir)
    except ModelReferenceError as exc:
        ctx.report(path, model_path_problem(reference, exc, ctx))
        return None
    if at and located.kind != "hub":
        ctx.report(
            path, f"@{revision} applies to Hub repo ids only, and {reference} is the local path {located.location}"
        )
        return None
    return located.location, located.kind, revision or None


def _check_adapter(location: str, kind: str, revision: str | None, path: str, ctx: Context) -> None:
    if revision is not None:
        ctx.report(path, f"a revision on the adapter ({location}@{revision}) is not supported; download it first")
    elif kind == "gguf":
        ctx.report(path, f"the adapter {location} is a .gguf file; pass a PEFT adapter folder or Hub id")
    elif kind == "folder" and not os.path.isfile(os.path.join(location, ADAPTER_CONFIG_NAME)):
        ctx.report(path, f"the adapter folder {location} has no {ADAPTER_CONFIG_NAME}; pass a PEFT adapter folder")


def _inputs(
    data: dict[Any, Any], method: MergeMethod | None, base: ModelRef | None, ctx: Context
) -> tuple[tuple[InputModel, ...] | None, tuple[OutputSlice, ...] | None]:
    """``models`` or ``slices``: exactly one of them."""
    has_models, has_slices = data.get("models") is not None, data.get("slices") is not None
    if has_models and has_slices:
        ctx.report("slices", "cannot be used with models; keep one of the two", "models")
        return None, None
    if has_models:
        return _models(data["models"], method, base, ctx), None
    if has_slices:
        return None, _slices(data["slices"], method, base, ctx)
    ctx.report("models", "missing; list the models to merge under models (or layer ranges under slices)")
    return None, None


def _entries(raw: object, path: str, example: str, ctx: Context) -> list[tuple[int, dict[Any, Any]]] | None:
    """The mappings of a non-empty list with their indices (other items reported); None for no such list."""
    if not isinstance(raw, list) or not raw:
        ctx.report(path, f"expected a non-empty list like [{example}], got {describe(raw)}")
        return None
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            ctx.report(f"{path}[{i}]", f"expected a mapping like {example}, got {describe(item)}")
    return [(i, item) for i, item in enumerate(raw) if isinstance(item, dict)]


def _models(
    raw: object, method: MergeMethod | None, base: ModelRef | None, ctx: Context
) -> tuple[InputModel, ...] | None:
    items = _entries(raw, "models", "{model: org/name, parameters: {weight: 0.5}}", ctx)
    if items is None:
        return None
    models = []
    for i, item in items:
        path = f"models[{i}]"
        _check_keys(item, ["model", "parameters"], path, ctx, required=["model"])
        model = _model_ref(item["model"], f"{path}.model", ctx) if "model" in item else None
        parameters = _parameters(item.get("parameters"), f"{path}.parameters", method, ctx, model, base)
        if model is not None:
            models.append(InputModel(model, parameters))
    _check_unique([m.model for m in models], "models[{}].model", ctx)
    return tuple(models) if ctx.ok("models") else None


def _slices(
    raw: object, method: MergeMethod | None, base: ModelRef | None, ctx: Context
) -> tuple[OutputSlice, ...] | None:
    items = _entries(raw, "slices", "{sources: [{model: org/name, layer_range: [0, 16]}]}", ctx)
    if items is None:
        return None
    slices = []
    for i, item in items:
        path = f"slices[{i}]"
        _check_keys(item, ["sources", "base_model", "parameters"], path, ctx, required=["sources"])
        own_base = _model_ref(item["base_model"], f"{path}.base_model", ctx) if item.get("base_model") else None
        sources = _sources(item.get("sources"), path, method, own_base or base, ctx) if "sources" in item else None
        parameters = _parameters(item.get("parameters"), f"{path}.parameters", method, ctx)
        if sources is not None:
            slices.append(OutputSlice(sources, own_base, parameters))
    return tuple(slices) if ctx.ok("slices") else None


def _sources(
    raw: object, path: str, method: MergeMethod | None, base: ModelRef | None, ctx: Context
) -> tuple[SliceSource, ...] | None:
    items = _entries(raw, f"{path}.sources", "{model: org/name, layer_range: [0, 16]}", ctx)
    if items is None:
        return None
    sources = []
    for k, item in items:
        where = f"{path}.sources[{k}]"
        _check_keys(item, ["model", "layer_range", "parameters"], where, ctx, required=["model", "layer_range"])
        model = _model_ref(item["model"], f"{where}.model", ctx) if "model" in item else None
        layers = _layer_range(item["layer_range"], f"{where}.layer_range", ctx) if "layer_range" in item else None
        parameters = _parameters(item.get("parameters"), f"{where}.parameters", method, ctx, model, base)
        if model is not None and layers is not None:
            sources.append(SliceSource(model, layers, parameters))
    _check_unique([s.model for s in sources], f"{path}.sources[{{}}].model", ctx)
    counts = {s.layer_range[1] - s.layer_range[0] for s in sources}
    if len(counts) > 1:
        ctx.report(
            f"{path}.sources",
            f"layer ranges of {sorted(counts)} layers; every source of a slice gives the same number of layers",
        )
    return tuple(sources) if ctx.ok(f"{path}.sources") else None


def _layer_range(raw: object, path: str, ctx: Context) -> tuple[int, int] | None:
    if isinstance(raw, list) and len(raw) == 2 and all(type(v) is int for v in raw) and 0 <= raw[0] < raw[1]:
        return raw[0], raw[1]
    ctx.report(path, f"expected [start, end] with 0 <= start < end (layers start..end-1), got {describe(raw)}")
    return None


def _check_unique(models: list[ModelRef], path: str, ctx: Context) -> None:
    for i, model in enumerate(models):
        if model in models[:i]:
            first = models.index(model)
            ctx.report(path.format(i), f"{model} is already {path.format(first)}; list each model once")


def _parameters(
    raw: object,
    path: str,
    method: MergeMethod | None,
    ctx: Context,
    model: ModelRef | None = None,
    base: ModelRef | None = None,
) -> dict[str, Setting]:
    """Check one ``parameters`` mapping against the method; `model` is set for an input's own parameters.

    An input's own parameters take per-input parameters only, and none when the input is the base of a
    method whose per-input parameters skip it.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ctx.report(path, f"expected a mapping of parameter names to values, got {describe(raw)}")
        return {}
    if method is None:
        return {}  # the method's problem is reported; its parameters cannot be checked
    specs = {spec.name: spec for spec in method.parameters}
    settings: dict[str, Setting] = {}
    for name, value in raw.items():
        key = f"{path}.{name}"
        spec = specs.get(str(name))
        if spec is None:
            close = difflib.get_close_matches(str(name), list(specs), n=1)
            hint = f"did you mean {close[0]}?" if close else f"it takes: {', '.join(specs) or 'none'}"
            ctx.report(key, f"{method.name} has no parameter {name!r}; {hint}")
        elif model is not None and not spec.per_input:
            ctx.report(key, f"{name} is one value for all inputs of {method.name}; set it under parameters")
        elif model is not None and model == base and not applies_to_base(method):
            ctx.report(key, f"{method.name} takes no {name} for the base model {model}; remove it")
        else:
            setting = parse_setting(value, spec, key, ctx)
            if setting is not None:
                settings[spec.name] = setting
    return settings


def _has_base(data: dict[Any, Any]) -> bool:
    """A top-level ``base_model``, or one in every slice (as written: a bad one is reported on its own)."""
    if data.get("base_model") is not None:
        return True
    slices = data.get("slices")
    return (
        isinstance(slices, list) and bool(slices) and all(isinstance(s, dict) and s.get("base_model") for s in slices)
    )


@dataclass(frozen=True)
class _Group:
    """The inputs of one slice (``models:`` is one): (key path, model, own parameters) each, and their base."""

    path: str
    inputs: list[tuple[str, ModelRef, Mapping[str, Setting]]]
    base: ModelRef | None
    parameters: Mapping[str, Setting]


def _check_groups(
    method: MergeMethod,
    models: tuple[InputModel, ...] | None,
    slices: tuple[OutputSlice, ...] | None,
    base: ModelRef | None,
    parameters: Mapping[str, Setting],
    ctx: Context,
) -> None:
    """The base among the inputs, the number of inputs and the parameters without a default, for each group."""
    if models is not None:
        inputs = [(f"models[{i}]", m.model, m.parameters) for i, m in enumerate(models)]
        if base is not None and base not in [m.model for m in models]:
            inputs.append(("base_model", base, {}))  # mergekit merges it as one more input
        groups = [_Group("models", inputs, base, {})]
    else:
        groups = [
            _Group(
                f"slices[{i}].sources",
                [(f"slices[{i}].sources[{k}]", s.model, s.parameters) for k, s in enumerate(out.sources)],
                out.base_model or base,
                out.parameters,
            )
            for i, out in enumerate(slices or ())
        ]
    for group in groups:
        refs = [model for _, model, _ in group.inputs]
        if method.base == "required" and group.base is not None and group.base not in refs:
            ctx.report(group.path, f"the base model {group.base} is not among them; add it as a source")
        _check_count(method, len(refs), group.base in refs and method.base != "none", group.path, ctx)
        if not ctx.ok("parameters"):
            continue  # a misspelt or invalid setting is reported once, not again as a missing one
        for spec in method.parameters:
            if spec.default is None and spec.name not in group.parameters and spec.name not in parameters:
                _check_required(method, spec, group, ctx)


def _check_required(method: MergeMethod, spec: ParameterSpec, group: _Group, ctx: Context) -> None:
    """Report where a parameter without a default has no setting (top-level and slice settings are absent)."""
    if not spec.per_input:
        ctx.report("parameters", f"missing {spec.name}; {method.name} needs it (set parameters.{spec.name})")
        return
    for where, model, own in group.inputs:
        if spec.name not in own and (model != group.base or applies_to_base(method)):
            ctx.report(where, f"no {spec.name}; {method.name} needs one per input: set it here or under parameters")


def _check_count(method: MergeMethod, count: int, has_base: bool, path: str, ctx: Context) -> None:
    """The method's input counts, with and without the base (`MergeMethod.min_inputs` ...)."""
    for low, high, got, which in (
        (method.min_inputs, method.max_inputs, count, "the base included"),
        (method.min_non_base, method.max_non_base, count - has_base, "besides the base"),
    ):
        if got < low or (high is not None and got > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            ctx.report(path, f"{method.name} merges {wanted} models ({which}), got {got}")
            return


def _tokenizer_source(data: dict[Any, Any], base: ModelRef | None, ctx: Context) -> str | ModelRef | None:
    raw = data.get("tokenizer_source")
    if raw is None:
        return None
    if raw in TOKENIZER_SOURCES:
        if raw == "base" and data.get("base_model") is None:
            ctx.report("tokenizer_source", "base needs base_model (its tokenizer); set base_model or name a model")
        return str(raw)
    return _model_ref(raw, "tokenizer_source", ctx)


def _check_chat_template(template: str, ctx: Context) -> None:
    """mergekit's rule: a built-in name, ``auto``, or text with ``{`` (at least 20 characters) that compiles."""
    if template == "auto" or template in CHAT_TEMPLATE_NAMES:
        return
    if "{" not in template or len(template) < _MIN_JINJA:
        close = difflib.get_close_matches(template, ["auto", *CHAT_TEMPLATE_NAMES], n=1)
        hint = (
            f"did you mean {close[0]}?" if close else f"use auto, {', '.join(CHAT_TEMPLATE_NAMES)} or a Jinja template"
        )
        ctx.report("chat_template", f"{describe(template)} is no template name nor Jinja template; {hint}")
        return
    from aprender.text.chat import compile_chat_template

    try:
        compile_chat_template(template)
    except ChatTemplateError as exc:
        ctx.report("chat_template", str(exc))


def _eval_data(values: dict[str, Any], ctx: Context) -> str | None:
    if values.get("eval_data") is None:
        if values.get("keep_worse"):
            ctx.report("keep_worse", "applies with eval_data only (the perplexity check); set eval_data or remove it")
        return None
    path = absolute_path(values["eval_data"], ctx)
    if not os.path.isfile(path):
        what = "is a folder; pass a .txt or .jsonl file" if os.path.isdir(path) else "does not exist"
        ctx.report("eval_data", f"{path} {what} (relative paths start at the config's folder)")
    return path


def _seed(values: dict[str, Any], method: MergeMethod | None, ctx: Context) -> int | None:
    if method is None or not method.random:
        if values.get("seed") is not None and method is not None:
            ctx.report("seed", f"{method.name} draws no random numbers; remove seed")
        return None
    seed = values.get("seed")
    return DEFAULT_SEED if seed is None else int(seed)


def _publish(raw: object, ctx: Context) -> PublishSection | None:
    """``publish:`` as after training; a merge writes a full model, so there are no adapters to merge."""
    if isinstance(raw, dict) and raw.get("merge_adapters") is not None:
        ctx.report("publish.merge_adapters", "a merge writes a full model, with no adapters to merge; remove it")
        raw = {key: value for key, value in raw.items() if key != "merge_adapters"}
    found = len(ctx.problems)
    values = build_publish(raw, False, ctx)
    return PublishSection(**values) if len(ctx.problems) == found else None
