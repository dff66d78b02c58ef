"""CausalLM against transformers on the tiny Llama/Qwen2/Qwen3/Mistral checkpoints.

Oracle: ``AutoModelForCausalLM.from_pretrained(folder, dtype=float32)`` with SDPA and eager attention, on
the same inputs: logits (no padding, left and right padding, packed rows) and gradients. Our own
decoding with a KV cache and with gradient checkpointing is checked against our plain forward pass,
itself checked against transformers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from entrenar.errors import ModelInputError
from entrenar.models import CausalLM, KVCache, from_pretrained

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
LENGTH = 40  # longer than mistral's 16-token sliding window


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def folder(family: str, tiny_checkpoints: dict[str, Path]) -> Path:
    return tiny_checkpoints[family]


def _padding_mask(kind: str, batch: int, length: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate((0, 7, 19)[:batch]):
        if kind == "left":
            mask[row, :pad] = 0
        else:
            mask[row, length - pad :] = 0
    return mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_logits_match_transformers(folder: Path, attn: str, padding: str, oracle: Any) -> None:
    ours = from_pretrained(folder, dtype="float32")
    reference = oracle.load_reference(folder, attn=attn)
    ids = oracle.random_ids(3, LENGTH, seed=1)
    mask = _padding_mask(padding, 3, LENGTH)
    with torch.no_grad():
        logits = ours(ids, attention_mask=mask)
        expected = reference(ids, attention_mask=mask).logits
    real = torch.ones(3, LENGTH, dtype=torch.bool) if mask is None else mask.bool()
    assert logits.shape == expected.shape == (3, LENGTH, 1024)
    assert (logits - expected)[real].abs().max().item() <= 1e-4
    assert torch.isfinite(logits).all()  # padding rows attend to themselves: finite, never NaN


def _packed(
    lengths: list[list[int]], oracle: Any
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples of the given lengths, packed into rows (zero-padded on the right), with positions and seq ids."""
    samples: list[torch.Tensor] = []
    width = max(sum(row) for row in lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    positions = torch.zeros_like(ids)
    seq_ids = torch.full_like(ids, -1)
    for r, row in enumerate(lengths):
        start = 0
        for s, n in enumerate(row):
            sample = oracle.random_ids(1, n, seed=100 * r + s)[0]
            samples.append(sample)
            ids[r, start : start + n] = sample
            positions[r, start : start + n] = torch.arange(n)
            seq_ids[r, start : start + n] = s
            start += n
    return samples, ids, positions, seq_ids


def _spans(lengths: list[list[int]]) -> list[tuple[int, int, int]]:
    spans = []
    for r, row in enumerate(lengths):
        start = 0
        for n in row:
            spans.append((r, start, start + n))
            start += n
    return spans


LENGTHS = [[5, 18, 3], [12, 9]]  # row 0 is 26 tokens wide, row 1 is 21 (padded)


def test_packed_rows_equal_samples_one_by_one(folder: Path, oracle: Any) -> None:
    ours = from_pretrained(folder)
    samples, ids, positions, seq_ids = _packed(LENGTHS, oracle)
    mask = (seq_ids >= 0).long()
    with torch.no_grad():
        by_positions = ours(ids, attention_mask=mask, position_ids=positions)
        by_seq_ids = ours(ids, attention_mask=mask, position_ids=positions, seq_ids=seq_ids)
        # With positions that do not restart, only seq_ids keeps the samples apart; RoPE is relative, so
        # the logits still equal the separate runs (up to float32 angle rounding).
        continuing = ours(ids, attention_mask=mask, seq_ids=seq_ids)
        for sample, (row, start, end) in zip(samples, _spans(LENGTHS), strict=True):
            alone = ours(sample[None])[0]
            assert (by_positions[row, start:end] - alone).abs().max().item() <= 1e-5
            assert (by_seq_ids[row, start:end] - alone).abs().max().item() <= 1e-5
            assert (continuing[row, start:end] - alone).abs().max().item() <= 1e-4


def test_packed_rows_match_transformers(folder: Path, oracle: Any) -> None:
    # transformers detects packing from restarting position_ids when neither an attention mask nor a cache is used.
    ours = from_pretrained(folder)
    reference = oracle.load_reference(folder)
    _, ids, positions, _ = _packed([[5, 18, 3], [12, 9, 5]], oracle)
    with torch.no_grad():
        difference = ours(ids, position_ids=positions) - reference(ids, position_ids=positions, use_cache=False).logits
    assert difference.abs().max().item() <= 1e-4


def _loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Position t predicts token t + 1; both must be real tokens (padding positions carry meaningless states).
    labels = ids[:, 1:].masked_fill((mask[:, 1:] == 0) | (mask[:, :-1] == 0), -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1))


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def test_gradients_match_transformers(folder: Path, oracle: Any) -> None:
    ours = from_pretrained(folder)
    reference = oracle.load_reference(folder)
    ids = oracle.random_ids(3, 24, seed=3)
    ids[:, 5] = 0  # the pad token: its embedding row gets no gradient from the input side in either model
    mask = _padding_mask("left", 3, 24)
    assert mask is not None
    _loss(ours(ids, attention_mask=mask), ids, mask).backward()
    _loss(reference(ids, attention_mask=mask).logits, ids, mask).backward()
    ours_grads, reference_grads = _gradients(ours), _gradients(reference)
    assert ours_grads.keys() == reference_grads.keys()
    worst = max(oracle.relative_error(ours_grads[name], reference_grads[name]) for name in ours_grads)
    assert worst <= 1e-4


def test_gradient_checkpointing_gives_the_same_gradients(folder: Path, oracle: Any) -> None:
    model = from_pretrained(folder).train()
    ids = oracle.random_ids(2, 20, seed=4)
    mask = torch.ones_like(ids)
    _loss(model(ids), ids, mask).backward()
    plain = _gradients(model)
    model.zero_grad()
    calls: list[int] = []
    mlp: Any = model.model.layers[0].mlp
    forward = mlp.forward

    def counted(x: torch.Tensor) -> torch.Tensor:  # module hooks do not fire during recomputation; this does
        calls.append(1)
        return forward(x)

    mlp.forward = counted
    model.set_gradient_checkpointing(True)
    loss = _loss(model(ids), ids, mask)
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2  # the layer ran again in backward: its activations were not kept
    checkpointed = _gradients(model)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        model(ids)
    assert len(calls) == 3  # no recomputation without gradients
    model.set_gradient_checkpointing(False)
    _loss(model(ids), ids, mask).backward()
    assert len(calls) == 4


@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_decoding_equals_the_full_forward_pass(folder: Path, padded: bool, oracle: Any) -> None:
    model = from_pretrained(folder)
    ids = oracle.random_ids(2, 30, seed=5)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :6] = 0  # left padding, as for batched generation
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_kv_cache()
        steps = [model(ids[:, :20], attention_mask=mask[:, :20], kv_cache=cache)]
        for t in range(20, 25):  # one token at a time
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache))
        steps.append(model(ids[:, 25:], attention_mask=mask, kv_cache=cache))  # a chunk of 5 after the cache
    assert cache.length == 30
    incremental = torch.cat(steps, dim=1)
    real = mask.bool()
    assert (incremental - full)[real].abs().max().item() <= 1e-5


def test_hidden_states_times_head_weight_are_the_logits(folder: Path, oracle: Any) -> None:
    model = from_pretrained(folder)
    ids = oracle.random_ids(2, 9, seed=6)
    with torch.no_grad():
        hidden = model.forward_hidden(ids)
        logits = model(ids)
    assert hidden.shape == (2, 9, 64)
    torch.testing.assert_close(hidden @ model.lm_head_weight.T, logits)
    head = model.output_embeddings()
    if model.config.tie_word_embeddings:
        assert model.lm_head is None and head is model.model.embed_tokens
    else:
        assert head is model.lm_head
    assert model.lm_head_weight is head.weight


def test_attention_dropout_applies_in_training_only(tiny_checkpoints: dict[str, Path], oracle: Any) -> None:
    base = from_pretrained(tiny_checkpoints["llama"])
    model = CausalLM(replace(base.config, attention_dropout=0.5))
    model.load_state_dict(base.state_dict())
    ids = oracle.random_ids(1, 12, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), base(ids), rtol=0, atol=0)
        model.train()
        torch.manual_seed(0)
        first = model(ids)
        torch.manual_seed(1)
        second = model(ids)
    assert (first - second).abs().max().item() > 1e-3


def test_linear_factory_builds_every_projection(tiny_checkpoints: dict[str, Path], oracle: Any) -> None:
    built: list[tuple[str, int, int, bool]] = []

    class Counting(nn.Linear):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return super().forward(x)

    def factory(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        built.append((name, in_features, out_features, bias))
        return Counting(in_features, out_features, bias=bias)

    folder = tiny_checkpoints["qwen2"]  # untied head, q/k/v biases
    model = from_pretrained(folder, linear_factory=factory)
    per_layer = [
        ("self_attn.q_proj", 64, 64, True),
        ("self_attn.k_proj", 64, 32, True),
        ("self_attn.v_proj", 64, 32, True),
        ("self_attn.o_proj", 64, 64, False),
        ("mlp.gate_proj", 64, 128, False),
        ("mlp.up_proj", 64, 128, False),
        ("mlp.down_proj", 128, 64, False),
    ]
    expected = [(f"model.layers.{i}.{n}", a, b, c) for i in range(2) for n, a, b, c in per_layer]
    assert built == [*expected, ("lm_head", 64, 1024, False)]
    modules = dict(model.named_modules())
    assert all(isinstance(modules[name], Counting) for name, *_ in built)
    ids = oracle.random_ids(1, 6, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), from_pretrained(folder)(ids), rtol=0, atol=0)
    assert Counting.calls == len(built)


def test_bfloat16_logits_match_transformers_in_bfloat16(tiny_checkpoints: dict[str, Path], oracle: Any) -> None:
    folder = tiny_checkpoints["qwen3"]
    ours = from_pretrained(folder, dtype="bfloat16")
    reference = oracle.load_reference(folder, dtype=torch.bfloat16)
    ids = oracle.random_ids(2, 16, seed=9)
    with torch.no_grad():
        logits, expected = ours(ids), reference(ids).logits
    assert logits.dtype == torch.bfloat16
    # Same operations in the same order: equal up to a few bf16 rounding steps (bf16 epsilon 2^-8).
    assert (logits.float() - expected.float()).abs().max().item() <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": torch.zeros(4, dtype=torch.long)}, "input_ids must be integer token ids of shape (B, T)"),
        ({"input_ids": torch.zeros(1, 4)}, "input_ids must be integer token ids"),
        ({"attention_mask": torch.ones(2, 3)}, "attention_mask has shape (2, 3); expected (2, 4)"),
        (
            {"position_ids": torch.zeros(3, 4, dtype=torch.long)},
            "position_ids has shape (3, 4); expected (2, 4) or (1, 4)",
        ),
        ({"seq_ids": torch.zeros(2, 5, dtype=torch.long)}, "seq_ids has shape (2, 5); expected (2, 4)"),
        ({"seq_ids": torch.zeros(2, 4, dtype=torch.long), "kv_cache": KVCache(2)}, "seq_ids (packed samples) cannot"),
        ({"kv_cache": KVCache(3)}, "kv_cache has 3 layers but the model 2"),
    ],
)
def test_inconsistent_inputs_are_refused(
    tiny_checkpoints: dict[str, Path], kwargs: dict[str, Any], message: str
) -> None:
    model = from_pretrained(tiny_checkpoints["llama"])
    arguments = {"input_ids": torch.zeros(2, 4, dtype=torch.long)} | kwargs
    with pytest.raises(ModelInputError) as error:
        model(**arguments)
    assert message in str(error.value)


def test_position_ids_of_shape_one_by_t_broadcast(tiny_checkpoints: dict[str, Path], oracle: Any) -> None:
    model = from_pretrained(tiny_checkpoints["mistral"])
    ids = oracle.random_ids(2, 8, seed=10)
    with torch.no_grad():
        shifted = model(ids, position_ids=torch.arange(3, 11)[None])
        expected = model(ids, position_ids=torch.arange(3, 11).expand(2, 8))
        default = model(ids)
    torch.testing.assert_close(shifted, expected, rtol=0, atol=0)
    # RoPE sees relative positions only: shifting every position by 3 leaves the logits unchanged.
    assert (shifted - default).abs().max().item() <= 1e-5


VARIANTS: dict[str, dict[str, Any]] = {
    # Options the tiny fixtures do not use: plain multi-head attention, llama biases, linear RoPE scaling ...
    "llama-mha-biases-linear": {
        "model_type": "llama",
        "num_key_value_heads": 4,
        "attention_bias": True,
        "mlp_bias": True,
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    },
    # ... Qwen2 sliding window on the upper layers only, yarn RoPE, one KV head ...
    "qwen2-sliding-yarn": {
        "model_type": "qwen2",
        "num_key_value_heads": 1,
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 1e4,
        },
    },
    # ... and Qwen3 with attention biases and a wide head.
    "qwen3-bias-wide-head": {"model_type": "qwen3", "num_key_value_heads": 2, "attention_bias": True, "head_dim": 24},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variants_match_transformers(variant: str, tmp_path: Path, oracle: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    raw: dict[str, Any] = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    raw |= {"num_attention_heads": 4, "max_position_embeddings": 256, "tie_word_embeddings": False}
    torch.manual_seed(30)
    reference = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw, **VARIANTS[variant]), dtype=torch.float32)
    with torch.no_grad():  # like the fixtures: norms away from 1, biases away from 0
        for name, param in reference.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.normal_(1.0 if "norm" in name else 0.0, 0.1)
    reference.save_pretrained(tmp_path)
    reference.eval()
    ours = from_pretrained(tmp_path)
    ids = oracle.random_ids(3, 30, seed=31, vocab=256)
    for kind in ("none", "left", "right"):
        mask = _padding_mask(kind, 3, 30)
        with torch.no_grad():
            difference = ours(ids, attention_mask=mask) - reference(ids, attention_mask=mask).logits
        real = torch.ones(3, 30, dtype=torch.bool) if mask is None else mask.bool()
        assert difference[real].abs().max().item() <= 1e-4
