"""`LoraConfig`: one flat, validated description of a LoRA adapter (what to adapt and how).

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) adds ``scaling * B @ A`` to a frozen weight W
(out, in), with A (r, in), B (out, r) and ``scaling = alpha / r``; rsLoRA (Kalajdzievski 2023,
https://arxiv.org/abs/2312.03732) uses ``alpha / sqrt(r)`` so larger ranks keep learning. DoRA
(Liu et al. 2024, https://arxiv.org/abs/2402.09353) adds a per-row magnitude vector on top.

The fields map one to one onto PEFT's ``adapter_config.json`` (see `entrenar.lora.peft_io`):
``rank`` is ``r``, ``alpha`` is ``lora_alpha``, ``init`` is ``init_lora_weights``, ``rank_pattern`` is
``rank_pattern`` (per-layer ranks; `LoraConfig.for_module` gives a layer's settings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from entrenar.constants import ALL_LINEAR, LORA_INITS
from entrenar.errors import LoraError

__all__ = ["ALL_LINEAR", "LORA_INITS", "LoraConfig"]

# LORA_INITS: what each init draws (PEFT's init_lora_weights value in brackets):
#   "default": A Kaiming-uniform (a=sqrt(5)), B zero [True]; the adapter starts as a no-op.
#   "gaussian": A ~ N(0, 1/r), B zero ["gaussian"].
#   "pissa": A, B from the top-r singular triplets of W, W replaced by the residual ["pissa"]
#            (Meng et al. 2024, https://arxiv.org/abs/2404.02948); the model's output is unchanged.
#   "none": A and B both keep nn.Linear's default Kaiming-uniform draw [False]: the adapter changes the
#           output from the start (PEFT's debugging init; useful to test that an adapter matters).


@dataclass(frozen=True)
class LoraConfig:
    """What to adapt and how.

    Attributes:
        rank: r, the inner width of B @ A (>= 1).
        alpha: Numerator of the scaling (> 0).
        dropout: Dropout probability on the adapter's input while training, in [0, 1).
        target_modules: Module names matched as path suffixes (``("q_proj", "v_proj")`` selects
            ``model.layers.0.self_attn.q_proj``, as PEFT), a regex string matched against the whole module
            path (``re.fullmatch``, as PEFT), or ``"all-linear"``: every linear layer but the LM head.
        use_rslora: Scale by ``alpha / sqrt(rank)`` instead of ``alpha / rank``.
        use_dora: Weight-decomposed LoRA: a trainable magnitude per output row.
        init: ``"default"``, ``"gaussian"``, ``"pissa"`` or ``"none"`` (see `LORA_INITS`).
        rank_pattern: Per-layer ranks, PEFT's ``rank_pattern``: a layer whose path matches a key (a regex
            matched against the path's tail, see `for_module`) gets that rank instead of `rank`.

    Raises:
        LoraError: Any field out of range (the message names it).

    Example:
        >>> LoraConfig(rank=16, alpha=32, target_modules="all-linear").scaling
        2.0
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    use_rslora: bool = False
    use_dora: bool = False
    init: str = "default"
    rank_pattern: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise LoraError(f"LoRA rank {self.rank!r} must be an integer >= 1")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 < self.alpha < math.inf:
            raise LoraError(f"LoRA alpha {self.alpha!r} must be a positive finite number")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise LoraError(f"LoRA dropout {self.dropout!r} must lie in [0, 1)")
        if self.init not in LORA_INITS:
            raise LoraError(f"LoRA init {self.init!r} is not supported; use one of {', '.join(LORA_INITS)}")
        object.__setattr__(self, "target_modules", _checked_targets(self.target_modules))
        object.__setattr__(self, "rank_pattern", _checked_rank_pattern(self.rank_pattern))

    @property
    def scaling(self) -> float:
        """``alpha / sqrt(rank)`` with rsLoRA, else ``alpha / rank``."""
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    def for_module(self, path: str) -> LoraConfig:
        """The settings of the layer at `path`: its `rank_pattern` rank, if any, in place of `rank`.

        As PEFT (``utils/other.py: get_pattern_key``): the first key, in order, with
        ``re.match(rf"(.*\\.)?({key})$", path)`` wins.

        Args:
            path: The layer's module path, e.g. ``"model.layers.0.self_attn.k_proj"``.

        Returns:
            This config, or a copy with that rank.
        """
        for key, rank in self.rank_pattern.items():
            if re.match(rf"(.*\.)?({key})$", path):
                return replace(self, rank=rank)
        return self


def _checked_rank_pattern(pattern: object) -> dict[str, int]:
    """A copy of `rank_pattern` once every key compiles as a regex and every rank is an integer >= 1."""
    if not isinstance(pattern, Mapping):
        raise LoraError(f"LoRA rank_pattern {pattern!r} must map layer names or regexes to ranks")
    for key, rank in pattern.items():
        if not isinstance(key, str) or not key:
            raise LoraError(f"LoRA rank_pattern key {key!r} must be a non-empty layer name or regex")
        try:
            re.compile(key)
        except re.error as exc:
            raise LoraError(f"LoRA rank_pattern key {key!r} does not compile ({exc}); fix the pattern") from exc
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise LoraError(f"LoRA rank_pattern[{key!r}] = {rank!r} must be an integer >= 1")
    return dict(pattern)


def _checked_targets(targets: object) -> tuple[str, ...] | str:
    """Normalise `target_modules`: a tuple of names, ``"all-linear"``, or a compiled-checked regex."""
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            return ALL_LINEAR
        try:
            re.compile(targets)
        except re.error as exc:
            raise LoraError(f"LoRA target_modules regex {targets!r} does not compile ({exc}); fix the pattern") from exc
        if not targets:
            raise LoraError("LoRA target_modules is empty; name modules (e.g. ['q_proj', 'v_proj']) or 'all-linear'")
        return targets
    if isinstance(targets, list | tuple) and targets and all(isinstance(t, str) and t for t in targets):
        return tuple(dict.fromkeys(targets))
    raise LoraError(
        f"LoRA target_modules {targets!r} must be a non-empty list of module names, a regex string or 'all-linear'"
    )
