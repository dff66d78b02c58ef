"""Which linear layers get an adapter, and putting adapters into a model.

Selection follows PEFT (``tuners/tuners_utils.py: check_target_module_exists`` and
``_maybe_include_all_linear_layers``), so a saved ``adapter_config.json`` selects the same layers there:

- names (``["q_proj", "v_proj"]``): a module whose path equals a name or ends with ``"." + name``;
- a regex string: ``re.fullmatch`` against the whole module path;
- ``"all-linear"``: every linear layer except the output head (``get_output_embeddings()`` /
  ``output_embeddings()`` when the model has one, else a child named ``lm_head``); name ``lm_head`` among
  the targets to adapt it.

Two ways in: `apply_lora` swaps the selected ``nn.Linear`` modules of a built model for `LoRALinear`;
`lora_linear_factory` is handed to the model builder (``entrenar.models``), which calls it with each
projection's full path, so LoRA is chosen at build time (torchtune's component builders).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from torch import Tensor, nn

from entrenar.errors import LoraError
from entrenar.lora.config import ALL_LINEAR, LoraConfig
from entrenar.lora.linear import LoRALinear
from entrenar.models.linear import LinearFactory, make_linear

__all__ = [
    "LoraLinearFactory",
    "TrainableParameters",
    "apply_lora",
    "disable_lora",
    "linear_modules",
    "lora_linear_factory",
    "lora_modules",
    "mark_only_lora_trainable",
    "select_target_modules",
]

ADAPTER_PARAMETERS = ("lora_A", "lora_B", "lora_magnitude_vector")
LM_HEAD = "lm_head"


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) when the module declares both as ints."""
    sizes = (getattr(module, "in_features", None), getattr(module, "out_features", None))
    return (sizes[0], sizes[1]) if isinstance(sizes[0], int) and isinstance(sizes[1], int) else None


def _is_quantized_linear(module: nn.Module) -> bool:
    """A linear layer whose weight is stored quantized: sizes plus ``weight_dequantized`` (NF4Linear, Int8Linear)."""
    if isinstance(module, nn.Linear | LoRALinear):
        return False
    return _features(module) is not None and callable(getattr(module, "weight_dequantized", None))


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, a LoRALinear, or a quantized linear layer."""
    return isinstance(module, nn.Linear | LoRALinear) or _is_quantized_linear(module)


def _modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of every module but the root, skipping what lives inside a LoRALinear."""
    inside: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, LoRALinear):
            inside.append(f"{path}.")
        yield path, module


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer of `model` by path, in model order (an adapted layer counts as its `LoRALinear`).

    Args:
        model: Any module.

    Returns:
        Path -> module for ``nn.Linear``, `LoRALinear` and quantized linear layers.
    """
    return {path: module for path, module in _modules(model) if _is_linear(module)}


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every `LoRALinear` of `model` by path, in model order."""
    return {path: module for path, module in model.named_modules() if isinstance(module, LoRALinear)}


def _output_head_paths(model: nn.Module) -> set[str]:
    """Paths of the module producing logits: as PEFT, the model's output embeddings, else ``lm_head``."""
    for method in ("get_output_embeddings", "output_embeddings"):
        getter = getattr(model, method, None)
        if callable(getter):
            head = getter()
            return {path for path, module in model.named_modules() if head is not None and module is head}
    return {LM_HEAD} if isinstance(getattr(model, LM_HEAD, None), nn.Module) else set()


def _matches(targets: tuple[str, ...] | str, path: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == target or path.endswith(f".{target}") for target in targets)


def _unmatched_error(what: str, linear_paths: list[str]) -> LoraError:
    names = sorted({path.rpartition(".")[2] for path in linear_paths})
    return LoraError(
        f"LoRA target_modules {what} matches no module; linear layers here are named: {', '.join(names) or 'none'}"
    )


def select_target_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """Paths of the linear layers `config.target_modules` selects, in model order (PEFT's rules).

    Args:
        model: Any module.
        config: The LoRA config.

    Returns:
        Module paths, e.g. ``["model.layers.0.self_attn.q_proj", ...]``.

    Raises:
        LoraError: A name or the regex matches nothing (the message lists the linear layers' names), or a
            match is not a linear layer.
    """
    linear = linear_modules(model)
    targets = config.target_modules
    if targets == ALL_LINEAR:
        heads = _output_head_paths(model)
        selected = [path for path in linear if path not in heads]
        if not selected:
            raise _unmatched_error(repr(ALL_LINEAR), list(linear))
        return selected
    matched = [(path, module) for path, module in _modules(model) if _matches(targets, path)]
    for path, module in matched:
        if not _is_linear(module):
            raise LoraError(
                f"LoRA target_modules selects {path!r}, a {type(module).__name__}, not a linear layer; "
                "name the projections inside it instead"
            )
    if isinstance(targets, str):
        if not matched:
            raise _unmatched_error(repr(targets), list(linear))
    else:
        for target in targets:
            if not any(_matches((target,), path) for path, _ in matched):
                raise _unmatched_error(repr(target), list(linear))
    return [path for path, _ in matched]


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Replace the selected linear layers of a built model by `LoRALinear` (in place).

    The adapters are initialised from the weights the model holds now (PiSSA and DoRA read them).

    Args:
        model: A model whose base weights are loaded.
        config: What to adapt and how.

    Returns:
        The paths adapted, in model order.

    Raises:
        LoraError: The model already has adapters, the targets match nothing, or a selected layer shares
            its weight with another module (tied embeddings: merging would change both).
    """
    if lora_modules(model):
        raise LoraError("the model already has LoRA adapters; apply_lora once per model")
    paths = select_target_modules(model, config)
    _check_not_tied(model, paths)
    for path in paths:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), config.for_module(path)))
    return paths


def _check_not_tied(model: nn.Module, paths: list[str]) -> None:
    targets = set(paths)
    others = {
        id(param): path
        for path, module in model.named_modules()
        if path not in targets
        for param in module.parameters(recurse=False)
    }
    for path in paths:
        for param in model.get_submodule(path).parameters(recurse=False):
            if id(param) in others:
                raise LoraError(
                    f"{path!r} shares its weight with {others[id(param)]!r} (tied embeddings); "
                    "LoRA there would change both when merged, so leave it out of target_modules"
                )


class LoraLinearFactory:
    """A `LinearFactory` that returns `LoRALinear` for targeted paths and the base factory's module otherwise.

    The model builder calls it with each projection's full path (``"model.layers.0.self_attn.q_proj"``,
    ``"lm_head"``); ``"all-linear"`` leaves out ``lm_head``. After building, call
    `check_targets` to learn about targets that matched no layer.

    Args:
        config: What to adapt and how.
        base_factory: Builds the base layer (default `entrenar.models.linear.make_linear`: ``nn.Linear``).

    Attributes:
        seen: Every path the builder asked for, in order.
        adapted: The paths that got an adapter.
    """

    def __init__(self, config: LoraConfig, base_factory: LinearFactory = make_linear) -> None:
        self.config = config
        self.base_factory = base_factory
        self.seen: list[str] = []
        self.adapted: list[str] = []

    def __call__(self, name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        """Build the projection `name` (in_features -> out_features), adapted when targeted."""
        base = self.base_factory(name, in_features, out_features, bias)
        self.seen.append(name)
        if not self._targets(name):
            return base
        self.adapted.append(name)
        return LoRALinear(base, self.config.for_module(name))

    def _targets(self, name: str) -> bool:
        if self.config.target_modules == ALL_LINEAR:
            return name != LM_HEAD
        return _matches(self.config.target_modules, name)

    def check_targets(self) -> None:
        """Raise if a target name (or the regex) matched none of the paths built so far.

        Raises:
            LoraError: The message names the target and lists the layers' names.
        """
        targets = self.config.target_modules
        if targets == ALL_LINEAR or isinstance(targets, str):
            if not self.adapted:
                raise _unmatched_error(repr(targets), self.seen)
            return
        for target in targets:
            if not any(_matches((target,), path) for path in self.adapted):
                raise _unmatched_error(repr(target), self.seen)


def lora_linear_factory(config: LoraConfig, base_factory: LinearFactory = make_linear) -> LoraLinearFactory:
    """A linear factory for ``entrenar.models`` that builds LoRA on the targeted projections.

    Args:
        config: What to adapt and how.
        base_factory: Builds every base layer (plain ``nn.Linear`` by default).

    Returns:
        The factory; pass it as ``linear_factory`` when building or loading the model.

    Example:
        >>> factory = lora_linear_factory(LoraConfig(target_modules=["q_proj"]))
        >>> type(factory("model.layers.0.self_attn.q_proj", 8, 8, False)).__name__
        'LoRALinear'
    """
    return LoraLinearFactory(config, base_factory)


class TrainableParameters(NamedTuple):
    """Parameter counts after `mark_only_lora_trainable` (each shared parameter counted once)."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def mark_only_lora_trainable(model: nn.Module) -> TrainableParameters:
    """Freeze every parameter but the adapters' ``lora_A``, ``lora_B`` and DoRA ``lora_magnitude_vector``.

    Args:
        model: A model with `LoRALinear` layers.

    Returns:
        Trainable and total parameter counts. A quantized linear layer keeps its weight in buffers; it counts
        as the out * in (+ bias) parameters it stands for, so QLoRA totals compare with the dense model's.

    Raises:
        LoraError: The model has no adapters.
    """
    adapters = lora_modules(model)
    if not adapters:
        raise LoraError("the model has no LoRA adapters to train; apply_lora or build it with lora_linear_factory")
    for param in model.parameters():
        param.requires_grad_(False)
    for module in adapters.values():
        for name in ADAPTER_PARAMETERS:
            adapter_param = getattr(module, name, None)
            if isinstance(adapter_param, nn.Parameter):
                adapter_param.requires_grad_(True)
    params = list(model.parameters())
    total = sum(p.numel() for p in params) + _quantized_weight_count(model)
    return TrainableParameters(sum(p.numel() for p in params if p.requires_grad), total)


def _quantized_weight_count(model: nn.Module) -> int:
    """Weights (and biases) that quantized linear layers hold as buffers rather than parameters."""
    count = 0
    for module in model.modules():
        features = _features(module)
        if features is not None and _is_quantized_linear(module):
            bias = getattr(module, "bias", None)
            count += features[0] * features[1] + (bias.numel() if isinstance(bias, Tensor) else 0)
    return count


@contextmanager
def disable_lora(model: nn.Module) -> Iterator[None]:
    """Within the block every adapter is off, so `model` computes the base model's output.

    Merged adapters are unmerged on the first forward (as PEFT's ``disable_adapter``); each layer's
    ``disabled`` flag is restored on exit.

    Args:
        model: A model with `LoRALinear` layers (none: the block runs the model unchanged).
    """
    adapters = list(lora_modules(model).values())
    before = [module.disabled for module in adapters]
    for module in adapters:
        module.disabled = True
    try:
        yield
    finally:
        for module, flag in zip(adapters, before, strict=True):
            module.disabled = flag
