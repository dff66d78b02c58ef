"""Target selection against PEFT's, apply_lora, the build-time factory, trainable marking, disabling.

Oracle: PEFT's own selection (``get_peft_model`` on the same transformers model) and its parameter counts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from entrenar.errors import LoraError
from entrenar.lora import (
    LoraConfig,
    LoRALinear,
    apply_lora,
    disable_lora,
    linear_modules,
    lora_linear_factory,
    lora_modules,
    mark_only_lora_trainable,
    select_target_modules,
)
from entrenar.models.loading import from_pretrained
from entrenar.quant import NF4Linear

TARGETS: list[Any] = [
    ["q_proj", "v_proj"],
    ["model.layers.0.self_attn.k_proj", "down_proj"],
    r"model\.layers\.1\.(self_attn|mlp)\.\w+_proj",
    "all-linear",
]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
PROJECTIONS = "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"  # HF keeps lm_head


@pytest.mark.parametrize("targets", TARGETS, ids=["names", "path+name", "regex", "all-linear"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_selection_equals_peft_on_hf_and_our_model(
    family: str,
    targets: Any,
    load_hf: Callable[[str], Any],
    peft_selection: Callable[..., set[str]],
    tiny_checkpoints: dict[str, Path],
) -> None:
    expected = peft_selection(load_hf(family), target_modules=targets)
    assert expected  # the spec selects something
    config = LoraConfig(target_modules=targets)
    assert set(select_target_modules(load_hf(family), config)) == expected
    ours = from_pretrained(tiny_checkpoints[family])
    assert set(select_target_modules(ours, config)) == expected
    factory = lora_linear_factory(config)
    built = from_pretrained(tiny_checkpoints[family], linear_factory=factory)
    factory.check_targets()
    assert set(factory.adapted) == set(lora_modules(built)) == expected


def test_naming_lm_head_adds_the_untied_head(load_hf: Callable[[str], Any]) -> None:
    model = load_hf("qwen2")
    plain = set(select_target_modules(model, LoraConfig(target_modules="all-linear")))
    assert "lm_head" not in plain  # "all-linear" never adapts the head, as PEFT
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    with_head = select_target_modules(model, LoraConfig(target_modules=names))
    assert set(with_head) == plain | {"lm_head"}
    assert apply_lora(model, LoraConfig(target_modules=names)) == with_head
    assert isinstance(model.lm_head, LoRALinear)
    factory = lora_linear_factory(LoraConfig(target_modules=names))
    assert isinstance(factory("lm_head", 4, 8, False), LoRALinear)


def test_tied_head_is_refused(load_hf: Callable[[str], Any]) -> None:
    model = load_hf("llama")  # tie_word_embeddings: lm_head.weight is embed_tokens.weight
    with pytest.raises(LoraError, match="tied embeddings"):
        apply_lora(model, LoraConfig(target_modules=["lm_head", "q_proj"]))
    assert not lora_modules(model)


@pytest.mark.parametrize(
    ("targets", "needle"),
    [
        (["q_proj", "q_prj"], f"'q_prj' matches no module; linear layers here are named: {PROJECTIONS}"),
        (r".*\.nothing", r"'.*\\.nothing' matches no module"),
        (["mlp"], "selects 'model.layers.0.mlp', a Qwen3MLP, not a linear layer"),
        (r"model\.layers\.0\.mlp", "not a linear layer"),
    ],
)
def test_bad_targets_raise_with_available_names(
    targets: Any, needle: str, load_hf: Callable[[str], Any], peft_selection: Callable[..., set[str]]
) -> None:
    with pytest.raises(LoraError) as info:
        select_target_modules(load_hf("qwen3"), LoraConfig(target_modules=targets))
    assert needle in str(info.value)


def test_peft_rejects_what_we_reject(load_hf: Callable[[str], Any], peft_selection: Callable[..., set[str]]) -> None:
    # The oracle agrees that these are errors (PEFT raises ValueError subclasses for both).
    for targets in (r".*\.nothing", ["mlp"]):
        with pytest.raises(ValueError):
            peft_selection(load_hf("qwen3"), target_modules=targets)


def test_factory_check_targets_reports_unmatched() -> None:
    factory = lora_linear_factory(LoraConfig(target_modules=["q_proj", "qproj"]))
    assert isinstance(factory("model.layers.0.self_attn.q_proj", 8, 8, False), LoRALinear)
    assert isinstance(factory("model.layers.0.mlp.up_proj", 8, 16, False), nn.Linear)
    with pytest.raises(LoraError, match="'qproj' matches no module; linear layers here are named: q_proj, up_proj"):
        factory.check_targets()
    regex = lora_linear_factory(LoraConfig(target_modules=r"x\.y"))
    regex("model.layers.0.mlp.up_proj", 8, 16, False)
    with pytest.raises(LoraError, match="matches no module"):
        regex.check_targets()
    everything = lora_linear_factory(LoraConfig(target_modules="all-linear"))
    assert isinstance(everything("lm_head", 8, 16, False), nn.Linear)  # the LM head is left out
    with pytest.raises(LoraError, match="'all-linear' matches no module; linear layers here are named: lm_head"):
        everything.check_targets()


def test_factory_uses_the_base_factory() -> None:
    calls: list[str] = []

    def base_factory(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        calls.append(name)
        weight = torch.randn(out_features, in_features)
        return NF4Linear.from_weight(weight, torch.zeros(out_features) if bias else None, compute_dtype=torch.float32)

    factory = lora_linear_factory(LoraConfig(target_modules=["q_proj"]), base_factory)
    layer = factory("a.q_proj", 64, 32, True)
    other = factory("a.k_proj", 64, 32, True)
    assert calls == ["a.q_proj", "a.k_proj"]
    assert isinstance(layer, LoRALinear) and isinstance(layer.base_layer, NF4Linear)
    assert isinstance(other, NF4Linear)
    assert factory.seen == ["a.q_proj", "a.k_proj"] and factory.adapted == ["a.q_proj"]


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = NF4Linear.from_weight(torch.randn(64, 64), compute_dtype=torch.float32)
        self.dense = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.lm_head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm_head(self.norm(self.dense(self.proj(x))))
        return out


class _HeadlessAccessor(_Body):
    def get_output_embeddings(self) -> None:
        return None


def test_all_linear_on_a_plain_module_with_a_quantized_layer() -> None:
    model = _Body()
    assert list(linear_modules(model)) == ["proj", "dense", "lm_head"]
    assert apply_lora(model, LoraConfig(target_modules="all-linear")) == ["proj", "dense"]  # lm_head by name
    assert isinstance(model.proj, LoRALinear) and isinstance(model.proj.base_layer, NF4Linear)
    assert list(linear_modules(model)) == ["proj", "dense", "lm_head"]  # base_layer inside is not listed
    with pytest.raises(LoraError, match="already has LoRA adapters"):
        apply_lora(model, LoraConfig(target_modules="all-linear"))
    # A model whose output-embeddings accessor returns None excludes nothing (as PEFT).
    assert select_target_modules(_HeadlessAccessor(), LoraConfig(target_modules="all-linear")) == [
        "proj",
        "dense",
        "lm_head",
    ]
    with pytest.raises(LoraError, match="'all-linear' matches no module; linear layers here are named: none"):
        select_target_modules(nn.Sequential(nn.ReLU()), LoraConfig(target_modules="all-linear"))


@pytest.mark.parametrize("dora", [False, True])
def test_mark_only_lora_trainable_counts_like_peft(
    dora: bool, load_hf: Callable[[str], Any], peft_selection: Callable[..., set[str]]
) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model = load_hf("qwen2")
    reference = get_peft_model(copy.deepcopy(model), PeftLoraConfig(r=4, target_modules="all-linear", use_dora=dora))
    apply_lora(model, LoraConfig(rank=4, target_modules="all-linear", use_dora=dora))
    counts = mark_only_lora_trainable(model)
    assert (counts.trainable, counts.total) == reference.get_nb_trainable_parameters()
    trainable = {name.rpartition(".")[2] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({"lora_A", "lora_B", "lora_magnitude_vector"} if dora else {"lora_A", "lora_B"})
    assert counts.percent == pytest.approx(100 * counts.trainable / counts.total)
    assert str(counts).startswith(f"trainable params: {counts.trainable:,} || all params: {counts.total:,}")
    with pytest.raises(LoraError, match="no LoRA adapters"):
        mark_only_lora_trainable(nn.Linear(2, 2))


def test_quantized_weights_count_as_parameters() -> None:
    model = _Body()
    apply_lora(model, LoraConfig(rank=2, target_modules=["proj"]))
    counts = mark_only_lora_trainable(model)
    # By hand: adapters 2*64 + 64*2 = 256 trainable; dense 64*64+64, norm 2*64, lm_head 64*10+10, and the NF4
    # proj's 64*64 weights (buffers, counted as the parameters they stand for; no bias).
    assert counts.trainable == 256
    assert counts.total == 256 + (64 * 64 + 64) + 128 + 650 + 64 * 64


def test_disable_lora_gives_the_base_model(load_hf: Callable[[str], Any]) -> None:
    model = load_hf("mistral")
    reference = copy.deepcopy(model)
    apply_lora(model, LoraConfig(rank=2, target_modules="all-linear", init="none"))
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        base = reference(ids).logits
        assert not torch.allclose(model(ids).logits, base, atol=1e-3)
        layers = list(lora_modules(model).values())
        layers[0].disabled = True  # a flag set before the block is restored as it was
        with disable_lora(model):
            assert torch.equal(model(ids).logits, base)
        assert [layer.disabled for layer in layers] == [True] + [False] * (len(layers) - 1)
