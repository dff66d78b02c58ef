"""Pruning while training (the ``prune:`` section): the masks, the cubic schedule and the one-shot build step.

What is pruned: the weight of every linear layer inside the decoder layers (attention q/k/v/o, MLP
gate/up/down), as ``entrenar prune`` does; for a full fine-tune the trained weights, for LoRA the frozen
base weight under each adapter. `PruneMasks` holds one boolean keep-mask per weight and, after every
optimizer step, zeroes what it masks, so pruned weights stay exactly zero whatever the optimizer does.

- ``schedule: oneshot``: `prepare_pruning` prunes once while the run is built (`entrenar.prune.oneshot`,
  with calibration windows for WANDA/SparseGPT; a LoRA model is pruned on its base linears), and the
  masks are the weights left non-zero.
- ``schedule: gradual`` (Zhu & Gupta 2017, https://arxiv.org/abs/1710.01878): after optimizer step
  ``t = start_step + k * update_every`` (k = 0, 1, ... while t <= end_step; t = 0 means before the first
  step) every mask is recomputed by weight magnitude within its layer at sparsity `cubic_sparsity` (t);
  the weights already masked are zero, so each update keeps them masked. Between updates and after
  ``end_step`` the masks are fixed.
- ``schedule: keep``: nothing is pruned; the masks are the weights the base model already has non-zero (a model
  `entrenar prune` made, or one pruned elsewhere), so training keeps its zeros.

The masks are `PruneMasks`'s checkpoint state, so a resumed run applies exactly the masks it had (the
LoRA base is rebuilt from the original checkpoint and re-masked). A LoRA output also stores them in
`MASKS_NAME`; publishing re-masks the merged weights with them (`entrenar.lora.merge_adapter_into_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from aprender.errors import PruningError
from aprender.pruning import magnitude_scores, unstructured_mask
from entrenar.config import PruneSection, TrainConfig
from entrenar.display import Report, silent
from entrenar.lora.targeting import lora_modules
from entrenar.models import CausalLM
from entrenar.prune.marks import read_mark
from entrenar.prune.spec import METHODS, PruneMethod, make_spec
from entrenar.train.callbacks import Callback

if TYPE_CHECKING:
    from aprender.text import Tokenizer
    from entrenar.train.loop import Trainer

__all__ = [
    "MASKS_NAME",
    "PruneMasks",
    "cubic_sparsity",
    "prepare_pruning",
    "prunable_weights",
    "prune_record",
    "pruned_base_note",
]

MASKS_NAME = "prune_masks.safetensors"
"""A LoRA output's masks: one bool tensor per pruned base weight, named as in the base checkpoint."""


def cubic_sparsity(step: int, section: PruneSection) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3, with t clamped to [t0, t0 + n Δt].

    Args:
        step: t, the optimizer steps taken.
        section: The gradual ``prune:`` section (``n Δt = end_step - start_step``).
    """
    assert section.sparsity is not None and section.initial_sparsity is not None
    assert section.start_step is not None and section.end_step is not None
    start, span = section.start_step, section.end_step - section.start_step
    progress = min(max((step - start) / span, 0.0), 1.0)
    return section.sparsity + (section.initial_sparsity - section.sparsity) * (1.0 - progress) ** 3


def _update_due(step: int, section: PruneSection) -> bool:
    """Whether the gradual masks are recomputed after optimizer step `step`."""
    assert section.start_step is not None and section.end_step is not None and section.update_every is not None
    start = section.start_step
    return start <= step <= section.end_step and (step - start) % section.update_every == 0


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weight of every dense linear layer in the decoder layers, named as in the checkpoint.

    Args:
        model: A `CausalLM` (plain, or with `LoRALinear` layers whose base weight is what is pruned).

    Returns:
        ``model.layers.{i}.{path}.weight`` -> the weight tensor, in model order.
    """
    assert isinstance(model, CausalLM)
    weights: dict[str, Tensor] = {}
    for index, layer in enumerate(model.model.layers):
        adapted = lora_modules(layer)
        for name, module in layer.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) or (name in adapted and isinstance(weight, Tensor)):
                assert isinstance(weight, Tensor)
                weights[f"model.layers.{index}.{name}.weight"] = weight
    return weights


class PruneMasks(Callback):
    """Keeps pruned weights at zero after every optimizer step and moves the gradual schedule on (module docstring).

    Args:
        section: The ``prune:`` section.
        weights: The weights it masks (`prunable_weights`).
        masks: Keep-masks already decided (one-shot), by the weights' names; None: none yet.
    """

    def __init__(self, section: PruneSection, weights: dict[str, Tensor], masks: dict[str, Tensor] | None = None):
        self.section = section
        self.weights = weights
        self.masks: dict[str, Tensor] = dict(masks or {})
        self.sparsity = _mask_sparsity(self.masks) if masks else 0.0

    def state_dict(self) -> dict[str, Any]:
        """The masks (on the CPU) and the sparsity of the last update."""
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}, "sparsity": self.sparsity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the masks of a checkpoint (applied when training begins)."""
        self.masks = {name: mask.to(self.weights[name].device) for name, mask in state["masks"].items()}
        self.sparsity = float(state["sparsity"])

    def on_train_begin(self, trainer: Trainer) -> None:
        """Apply the masks a checkpoint or the one-shot step gave; a gradual schedule from step 0 starts here."""
        if not self.masks and self.section.schedule == "gradual" and _update_due(0, self.section):
            self.update(0)
        self.apply()

    def on_optimizer_step(self, trainer: Trainer) -> None:
        """Recompute the masks when a gradual update is due after this step, then zero every masked weight."""
        step = trainer.state.step + 1
        if self.section.schedule == "gradual" and _update_due(step, self.section):
            self.update(step)
        self.apply()

    @torch.no_grad()
    def update(self, step: int) -> None:
        """New masks by magnitude within each layer at the schedule's sparsity for `step`."""
        self.sparsity = cubic_sparsity(step, self.section)
        self.masks = {
            name: unstructured_mask(magnitude_scores(weight), self.sparsity, scope="tensor")
            for name, weight in self.weights.items()
        }

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight in place."""
        for name, mask in self.masks.items():
            self.weights[name].masked_fill_(~mask, 0)


def _mask_sparsity(masks: Mapping[str, Tensor]) -> float:
    """The fraction of the masked weights that the masks prune."""
    total = sum(mask.numel() for mask in masks.values())
    return sum(int((~mask).sum()) for mask in masks.values()) / total if total else 0.0


@contextmanager
def _base_linears(model: CausalLM) -> Iterator[None]:
    """Within the block each `LoRALinear` is replaced by a plain ``nn.Linear`` sharing its base weight and bias, so
    the one-shot pruner (which calibrates on ``nn.Linear`` inputs) prunes and calibrates the base."""
    swapped = lora_modules(model)
    for path, module in swapped.items():
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        assert isinstance(module.weight, nn.Parameter)  # a quantized base is refused by the config
        linear.weight = module.weight
        if isinstance(module.bias, nn.Parameter):
            linear.bias = module.bias
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent), leaf, linear)
    try:
        yield
    finally:
        for path, module in swapped.items():
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent), leaf, module)


def prepare_pruning(
    cfg: TrainConfig, model: CausalLM, tokenizer: Tokenizer, report: Report = silent
) -> tuple[PruneMasks, dict[str, Any] | None]:
    """The masking callback of a run; with ``schedule: oneshot`` the model is pruned now.

    Args:
        cfg: The config, with a ``prune:`` section.
        model: The built model (before wrapping and the optimizer).
        tokenizer: Its tokenizer (calibration windows).
        report: Told what is pruned.

    Returns:
        The callback, and the calibration record (None without calibration).

    Raises:
        DataError: A calibration file that is unreadable or too short.
        PruningError: An N:M pattern that does not fit a layer.
    """
    section = cfg.prune
    assert section is not None
    weights = prunable_weights(model)
    if section.schedule == "gradual":
        return PruneMasks(section, weights), None
    if section.schedule == "keep":
        masks = {name: weight != 0 for name, weight in weights.items()}
        pruning = PruneMasks(section, weights, masks)
        if not pruning.sparsity:
            raise PruningError(
                f"prune.schedule keep: {cfg.model.path} has no zero weights in its decoder linear layers, so there "
                "is nothing to keep; prune it first with `entrenar prune`, or use schedule gradual or oneshot"
            )
        share = f"{100 * pruning.sparsity:.2f}%"
        report(f"Keeping the base's zeros: {share} of the weights of {len(masks)} decoder linear layers")
        return pruning, None
    from entrenar.prune.calibration import load_calibration
    from entrenar.prune.oneshot import prune_model

    assert section.method is not None
    spec = make_spec(section.method, sparsity=section.sparsity, pattern=section.pattern)
    calibration, windows = None, None
    if section.calibration is not None:
        assert section.samples is not None and section.seed is not None
        seq_len = section.seq_len or cfg.data.seq_len
        data = load_calibration(
            section.calibration, tokenizer, samples=section.samples, seq_len=seq_len, seed=section.seed
        )
        windows = data.windows
        calibration = {"path": data.path, "files": data.files, "tokens": data.tokens, "samples": data.samples,
                       "seq_len": data.seq_len, "seed": data.seed}  # fmt: skip
    report(f"Pruning ({spec.describe()})...")
    with _base_linears(model):
        model.eval()
        prune_model(model, spec, windows)
        model.train()
    return PruneMasks(section, weights, {name: weight != 0 for name, weight in weights.items()}), calibration


def pruned_base_note(cfg: TrainConfig, model_dir: Path) -> str | None:
    """What a run without ``prune:`` does to a pruned base's zeros (`entrenar.prune.marks`), or None: not pruned, or
    the run has a ``prune:`` section (which decides the masks itself)."""
    mark = read_mark(model_dir)
    if mark is None or cfg.prune is not None:
        return None
    start = f"note: the base model {cfg.model.path} is pruned ({mark.description}, {100 * mark.sparsity:.2f}% zero); "
    if cfg.quantize is not None:
        return start + (
            "QLoRA cannot keep its zeros (prune: does not go with quantize:), so the merged model publish writes will "
            "be dense; to keep them train LoRA (no quantize:) with prune: {schedule: keep}"
        )
    if cfg.lora is None:
        return start + "this run trains every weight and will fill its zeros; add prune: {schedule: keep} to keep them"
    return start + (
        "the adapter's update is dense, so the model publish merges will not keep its zeros; add "
        "prune: {schedule: keep} to keep them"
    )


def prune_record(
    pruning: PruneMasks, model: nn.Module, calibration: dict[str, Any] | None, adapter: bool
) -> dict[str, Any]:
    """``final_model.json``'s ``prune`` section: the schedule, the method and the zeros of every pruned layer."""
    section = pruning.section
    method = METHODS[section.method] if section.method is not None else None  # None: schedule keep
    modules: dict[str, float] = {}
    layers: dict[int, tuple[int, int]] = {}
    for name, weight in pruning.weights.items():
        zeros, total = int((weight == 0).sum()), weight.numel()
        modules[name.removesuffix(".weight")] = zeros / total
        index = int(name.split(".")[2])
        weights_so_far, zeros_so_far = layers.get(index, (0, 0))
        layers[index] = (weights_so_far + total, zeros_so_far + zeros)
    pruned = sum(w for w, _ in layers.values())
    params = [p for name, p in model.named_parameters() if "lora_" not in name]
    return {
        "schedule": section.schedule,
        "method": section.method,
        "title": None if method is None else method.title,
        "reference": None if method is None else method.reference,
        "sparsity": section.sparsity,
        "pattern": section.pattern,
        "comparison_group": _group(section, method),
        "initial_sparsity": section.initial_sparsity,
        "start_step": section.start_step,
        "end_step": section.end_step,
        "update_every": section.update_every,
        "calibration": calibration,
        "pruned_sparsity": sum(z for _, z in layers.values()) / pruned if pruned else 0.0,
        "pruned_weights": pruned,
        "model_sparsity": sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params),
        "layers": [{"layer": i, "weights": w, "zeros": z, "sparsity": z / w} for i, (w, z) in sorted(layers.items())],
        "modules": modules,
        "masks": MASKS_NAME if adapter else None,
    }


def _group(section: PruneSection, method: PruneMethod | None) -> str | None:
    """The comparison group in words; None for ``keep`` (nothing is compared)."""
    if method is None:
        return None
    return method.group if section.pattern is None else f"each group of {section.pattern[-1]} input weights"
