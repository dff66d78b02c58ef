"""entrenar.quant.swap: quantize the linear layers a filter selects (QLoRA: all but the LM head)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from aprender.errors import InvalidArgumentError
from entrenar.models import from_pretrained
from entrenar.quant import Int8Linear, NF4Linear, not_output_head, quantize_linears, release_checkpoint_pages


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64, bias=False))
        self.lm_head = nn.Linear(64, 32, bias=False)


def test_the_filter_chooses_and_weights_dequantize_to_their_codes() -> None:
    torch.manual_seed(0)
    model = Tiny()
    dense = model.body[0].weight.detach().clone()
    assert quantize_linears(model, "nf4") == ["body.0", "body.2"]
    assert isinstance(model.body[0], NF4Linear) and isinstance(model.body[2], NF4Linear)
    assert type(model.lm_head) is nn.Linear  # the default filter keeps the head dense
    # 4-bit codes: each weight within half the widest gap between NF4 levels (~0.16) of its block's absmax
    error = (model.body[0].weight_dequantized(torch.float32) - dense).abs().max()
    assert 0 < float(error) < 0.16 * float(dense.abs().max())
    assert model.body[0].bias is not None and model.body[2].bias is None
    only_head = Tiny()
    assert quantize_linears(only_head, "int8", filter_fn=lambda path, module: path == "lm_head") == ["lm_head"]
    assert isinstance(only_head.lm_head, Int8Linear) and type(only_head.body[0]) is nn.Linear


def test_double_quant_and_meta_layers() -> None:
    with torch.device("meta"):
        model = Tiny()
    quantize_linears(model, "nf4", double_quant=False)
    assert isinstance(model.body[0], NF4Linear) and model.body[0].double_quant is False
    assert all(t.is_meta for t in model.body[0].buffers())
    assert not_output_head("model.layers.0.mlp.up_proj", nn.Linear(1, 1)) and not not_output_head(
        "lm_head", nn.Linear(1, 1)
    )


def test_unknown_type() -> None:
    with pytest.raises(InvalidArgumentError, match="quant_type 'fp8' is not one of nf4, int8"):
        quantize_linears(Tiny(), "fp8")


def test_release_checkpoint_pages_copies_out_of_the_file(tiny_checkpoints: dict[str, Path]) -> None:
    model = from_pretrained(tiny_checkpoints["qwen2"], dtype="float32")
    embedding = model.model.embed_tokens.weight
    before = embedding.detach().clone()
    storage = embedding.untyped_storage().data_ptr()
    release_checkpoint_pages(model)
    assert model.model.embed_tokens.weight is embedding  # same parameter, new memory, same values
    assert embedding.untyped_storage().data_ptr() != storage and torch.equal(embedding.detach(), before)
