"""Quantization-aware training (the ``qat:`` section): fake-quantized linear weights with a straight-through gradient.

Every linear layer inside the decoder layers (attention q/k/v/o, MLP gate/up/down; the embeddings and the LM head
are quantized at export without training for it) runs its forward on the weight as the export will store it:
``dequantize(quantize(W))`` by the exporter's own quantizer (`entrenar.quant.fake`), and its backward passes the
gradient straight through the rounding (Bengio et al. 2013, https://arxiv.org/abs/1308.3432; the QAT of Jacob et al.
2018, https://arxiv.org/abs/1712.05877):

- full fine-tune: the trained weight W itself (the layer becomes a `FakeQuantLinear`, an ``nn.Linear`` holding the
  same parameters, so checkpoints keep their names);
- LoRA: the merged weight ``W + scaling * B @ A`` in W's dtype (`LoRALinear.merged_weight`), the weight
  ``entrenar publish`` folds and quantizes, so the gradient reaches A and B through the rounding.

Which quantizer each weight gets: for a GGUF file type, the type llama-quantize's mixture gives that tensor
(`aprender.format.gguf_export.export_tensor_types`, fallbacks included), quantized by `quantize_rows` without an
importance matrix, as ``entrenar publish --format gguf`` and ``entrenar quantize`` (without ``--calibration``) write
it; for ``nf4``, ``int8`` and ``int4`` one quantizer for every weight. The published weights are the float weights
(the merged ones for LoRA): quantizing them to the format reproduces, bit for bit, the weights the last steps ran on.

The rounding of a weight is cached until the tensors it comes from change (their in-place version counters: the
optimizer's update), so gradient accumulation and activation recomputation quantize once per optimizer step; the
cache holds one float32 copy of every fake-quantized weight. GGUF K-quant searches are slow in Python (seconds per
step for a 135M model), the price of training for the exact format. With ``activations: int8`` each layer's input
is fake-quantized per token (torchao's dynamic int8 numerics) in the forward pass too.

`QatSwitch` (a callback) turns the fake quantization on once ``start_after_steps`` optimizer steps are done, and on
again when a run resumes past them; it has no state of its own (the step decides).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entrenar.config import QatSection
from entrenar.constants import QAT_NON_GGUF_FORMATS
from entrenar.display import Report, silent
from entrenar.errors import QuantizationError
from entrenar.lora.linear import LoRALinear
from entrenar.lora.targeting import lora_modules
from entrenar.models import CausalLM
from entrenar.quant.fake import (
    FakeQuantized,
    WeightQuantizer,
    fake_quantize_activations,
    gguf_weight_quantizer,
    straight_through,
    weight_quantizer,
)
from entrenar.train.callbacks import Callback

if TYPE_CHECKING:
    from entrenar.train.loop import Trainer

__all__ = ["FakeQuantLinear", "LayerFakeQuant", "QatSwitch", "decoder_linears", "prepare_qat", "qat_record"]


class LayerFakeQuant:
    """One layer's fake quantization: its quantizer, the cache of its rounded weight, the run's on/off switch.

    Args:
        quantizer: How the layer's weight is rounded.
        activations: Also fake-quantize the layer's input (int8 per token).
        switch: The run's `QatSwitch` (`active` follows it).
    """

    def __init__(self, quantizer: WeightQuantizer, activations: bool, switch: QatSwitch) -> None:
        self.quantizer = quantizer
        self.activations = activations
        self.switch = switch
        self._key: tuple[tuple[int, int], ...] | None = None
        self._fake: FakeQuantized | None = None

    @property
    def active(self) -> bool:
        """Whether the forward pass fake-quantizes now."""
        return self.switch.active

    def rounded(self, weight: Tensor, sources: Sequence[Tensor]) -> FakeQuantized:
        """`weight` rounded by the quantizer; reused while none of `sources` (what `weight` is made of) changed."""
        key = tuple((id(t), t._version) for t in sources)
        if self._fake is None or key != self._key:
            with torch.inference_mode(False):  # a rounding made under inference mode must serve training too
                self._fake, self._key = self.quantizer(weight.detach()), key
        return self._fake

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, sources: Sequence[Tensor]) -> Tensor:
        """``x @ fq(weight).T + bias`` with the straight-through gradient to `weight` (and what it is made of)."""
        fake = straight_through(weight, self.rounded(weight, sources))
        if self.activations:
            x = fake_quantize_activations(x)
        return F.linear(x, fake.to(x.dtype), None if bias is None else bias.to(x.dtype))


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` of a full fine-tune whose forward runs on its fake-quantized weight while QAT is active.

    Built by `adopt` from an existing layer: the same ``weight`` and ``bias`` parameters, so the checkpoint names and
    the optimizer's parameters do not change.
    """

    fake_quant: LayerFakeQuant

    @classmethod
    def adopt(cls, linear: nn.Linear, fake_quant: LayerFakeQuant) -> FakeQuantLinear:
        """A `FakeQuantLinear` holding `linear`'s parameters."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.fake_quant = fake_quant
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """The plain linear before QAT starts; then on the fake-quantized weight."""
        if not self.fake_quant.active:
            return super().forward(x)
        return self.fake_quant.linear(x, self.weight, self.bias, (self.weight,))


class QatSwitch(Callback):
    """Turns fake quantization on once ``start_after_steps`` optimizer steps are done (module docstring).

    Args:
        section: The ``qat:`` section.
    """

    def __init__(self, section: QatSection) -> None:
        self.section = section
        self.active = section.start_after_steps == 0

    def on_train_begin(self, trainer: Trainer) -> None:
        """On from the start, or when a resumed run is past the start."""
        self.active = trainer.state.step >= self.section.start_after_steps

    def on_optimizer_step(self, trainer: Trainer) -> None:
        """On after the step that completes ``start_after_steps``."""
        self.active = trainer.state.step + 1 >= self.section.start_after_steps


def _quantizers(section: QatSection, names: Sequence[str], model_dir: Path) -> dict[str, WeightQuantizer]:
    """The quantizer of each weight (checkpoint name): the GGUF mixture's type, or the one integer/NF4 quantizer."""
    if section.format in QAT_NON_GGUF_FORMATS:
        quantizer = weight_quantizer(section.format, group_size=section.group_size)
        return dict.fromkeys(names, quantizer)
    from aprender.format.gguf_export import export_tensor_types

    types = export_tensor_types(model_dir, section.format)
    return {name: gguf_weight_quantizer(types[name]) for name in names}


def decoder_linears(model: CausalLM) -> dict[str, nn.Module]:
    """Checkpoint weight name -> the module (``nn.Linear`` or `LoRALinear`) of every linear in the decoder layers."""
    found: dict[str, nn.Module] = {}
    for index, layer in enumerate(model.model.layers):
        adapted = lora_modules(layer)
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) or name in adapted:
                found[f"model.layers.{index}.{name}.weight"] = module
    return found


def prepare_qat(
    section: QatSection, model: CausalLM, model_dir: Path, report: Report = silent
) -> tuple[QatSwitch, dict[str, WeightQuantizer]]:
    """Make every decoder linear of `model` fake-quantize its weight (module docstring), in place.

    Args:
        section: The ``qat:`` section.
        model: The built model (LoRA adapters applied), before the wrapper and the optimizer.
        model_dir: The base model's folder (its checkpoint decides the GGUF mixture's types).
        report: Told what the run trains for.

    Returns:
        The switch callback, and the quantizer of each weight by checkpoint name.

    Raises:
        QuantizationError: A weight the format cannot hold (rows not a multiple of the group size).
    """
    switch = QatSwitch(section)
    linears = decoder_linears(model)
    quantizers = _quantizers(section, list(linears), model_dir)
    for name, module in linears.items():
        if section.format in QAT_NON_GGUF_FORMATS:  # the GGUF mixture's fallbacks always fit
            _check_fits(name, module, quantizers[name])
        fake_quant = LayerFakeQuant(quantizers[name], section.activations == "int8", switch)
        if isinstance(module, LoRALinear):
            module.fake_quant = fake_quant
        else:
            assert isinstance(module, nn.Linear)
            path = name.removesuffix(".weight")
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent), leaf, FakeQuantLinear.adopt(module, fake_quant))
    kinds = sorted({q.describe() for q in quantizers.values()})
    start = f" after {section.start_after_steps} steps" if section.start_after_steps else ""
    acts = ", inputs fake-quantized to int8 per token" if section.activations else ""
    report(f"Quantization-aware training for {section.format}{start}: {len(linears)} decoder linear weights as "
           f"{'; '.join(kinds)}{acts}")  # fmt: skip
    return switch, quantizers


def _check_fits(name: str, module: nn.Module, quantizer: WeightQuantizer) -> None:
    """Round the layer's weight once, so a shape the format cannot hold fails before training, naming the layer."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    try:
        quantizer(weight.detach())
    except QuantizationError as exc:
        raise QuantizationError(f"qat.format {quantizer.name}: {name}: {exc}") from None


def qat_record(section: QatSection, quantizers: dict[str, WeightQuantizer]) -> dict[str, Any]:
    """``final_model.json``'s ``qat`` section: the format and the quantizer of every fake-quantized weight."""
    return {
        "format": section.format,
        "group_size": section.group_size,
        "activations": section.activations,
        "start_after_steps": section.start_after_steps,
        "weights": {name: quantizer.name for name, quantizer in quantizers.items()},
        "quantizers": sorted({quantizer.describe() for quantizer in quantizers.values()}),
    }
