"""entrenar.quant.linear: frozen NF4Linear and Int8Linear."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aprender.format.safetensors import load_file, open_checkpoint, save_file
from entrenar.errors import QuantizationError
from entrenar.quant import (
    Int8Linear,
    NF4Linear,
    dequantize_int8_rowwise,
    dequantize_nf4,
    double_dequantize,
    double_quantize,
    quantize_int8_rowwise,
    quantize_nf4,
)

Layer = NF4Linear | Int8Linear
# in_features = 70 puts block boundaries (every 64 values) inside rows, so row chunks start mid-block.
OUT, IN = 96, 70


def _weight(out: int = OUT, inp: int = IN, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.02


def _bias(out: int = OUT) -> torch.Tensor:
    return torch.randn(out, generator=torch.Generator().manual_seed(9))


def _input(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, IN, generator=torch.Generator().manual_seed(seed))


def _build(kind: str, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs: object) -> Layer:
    if kind == "nf4":
        return NF4Linear.from_weight(weight, bias, **kwargs)  # type: ignore[arg-type]
    if kind == "nf4-plain":
        return NF4Linear.from_weight(weight, bias, double_quant=False, **kwargs)  # type: ignore[arg-type]
    return Int8Linear.from_weight(weight, bias, **kwargs)  # type: ignore[arg-type]


def _empty_like(layer: Layer) -> Layer:
    bias = layer.bias is not None
    if isinstance(layer, NF4Linear):
        return NF4Linear(layer.in_features, layer.out_features, bias, double_quant=layer.double_quant)
    return Int8Linear(layer.in_features, layer.out_features, bias)


KINDS = ["nf4", "nf4-plain", "int8"]


# --- the stored weight ---------------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_weight_is_the_functional_pipeline(double_quant: bool) -> None:
    # Oracle: quantize_nf4 (+ double_quantize) and dequantize_nf4 from entrenar.quant.nf4.
    weight = _weight()
    layer = NF4Linear.from_weight(weight, double_quant=double_quant)
    packed, absmax = quantize_nf4(weight)
    if double_quant:
        absmax = double_dequantize(*double_quantize(absmax))
    assert torch.equal(layer.weight_packed, packed)
    assert torch.equal(layer.weight_dequantized(), dequantize_nf4(packed, absmax, weight.shape))
    assert layer.weight_dequantized(torch.bfloat16).dtype == torch.bfloat16
    assert (layer.in_features, layer.out_features, layer.double_quant) == (IN, OUT, double_quant)


def test_int8_weight_is_the_functional_pipeline() -> None:
    weight = _weight()
    layer = Int8Linear.from_weight(weight)
    values, scales = quantize_int8_rowwise(weight)
    assert torch.equal(layer.weight_int8, values) and torch.equal(layer.weight_scale, scales)
    assert torch.equal(layer.weight_dequantized(), dequantize_int8_rowwise(values, scales))


@pytest.mark.parametrize(("kind", "bound"), [("nf4", 0.10), ("nf4-plain", 0.10), ("int8", 0.01)])
def test_close_to_the_float_linear(kind: str, bound: float) -> None:
    # Relative Frobenius error of the weight: NF4 ~9.2% of sigma on Gaussian weights (see test_quant_nf4's
    # integral); int8 with 127 levels per row ~0.5%. For an isotropic input the output error is the same ratio.
    weight = _weight(512, IN, seed=4)
    layer = _build(kind, weight)
    weight_error = ((layer.weight_dequantized() - weight).norm() / weight.norm()).item()
    x = _input(4000)
    reference = F.linear(x, weight)
    output_error = ((layer(x) - reference).norm() / reference.norm()).item()
    assert weight_error < bound
    assert output_error == pytest.approx(weight_error, rel=0.1)


# --- forward -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_linear_on_dequantized_weight(kind: str) -> None:
    layer = _build(kind, _weight(), _bias())
    x = _input(3, 5)
    assert torch.equal(layer(x), F.linear(x, layer.weight_dequantized(), layer.bias))
    no_bias = _build(kind, _weight())
    assert no_bias.bias is None
    assert torch.equal(no_bias(x), F.linear(x, no_bias.weight_dequantized()))


@pytest.mark.parametrize("kind", KINDS)
def test_compute_dtype(kind: str) -> None:
    x = _input(2, 3)
    # None: the input's dtype.
    follow = _build(kind, _weight(), _bias())
    x16 = x.bfloat16()
    expected16 = F.linear(x16, follow.weight_dequantized(torch.bfloat16), _bias().bfloat16())
    assert torch.equal(follow(x16), expected16)
    # bfloat16 compute with a float32 input: the matmul runs in bf16, the result comes back as float32.
    fixed = _build(kind, _weight(), _bias(), compute_dtype=torch.bfloat16)
    out = fixed(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, F.linear(x16, fixed.weight_dequantized(torch.bfloat16), _bias().bfloat16()).float())
    assert not torch.equal(out, follow(x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 95])
def test_chunked_rows_match_whole(kind: str, chunk_rows: int) -> None:
    # Chunks of output rows give the same numbers up to matmul reduction order (float32 ulp-level).
    whole = _build(kind, _weight(), _bias())
    chunked = _build(kind, _weight(), _bias(), chunk_rows=chunk_rows)
    x1, x2 = _input(4, 6).requires_grad_(), _input(4, 6).requires_grad_()
    y1, y2 = whole(x1), chunked(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    grad = torch.randn(y1.shape, generator=torch.Generator().manual_seed(5))
    y1.backward(grad)
    y2.backward(grad)
    assert x1.grad is not None and x2.grad is not None
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6)
    # chunk_rows >= out_features is one chunk: exactly the unchunked result.
    assert torch.equal(_build(kind, _weight(), _bias(), chunk_rows=OUT)(x1), y1)


# --- gradients -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_input_only(kind: str) -> None:
    layer = _build(kind, _weight(), _bias(), chunk_rows=40)
    assert list(layer.parameters()) == []
    assert all(not b.requires_grad for b in layer.buffers())
    x = _input(2, 3).requires_grad_()
    grad = torch.randn(2, 3, OUT, generator=torch.Generator().manual_seed(6))
    layer(x).backward(grad)
    # dL/dx = grad @ W (hand derivation of y = x W^T + b).
    assert x.grad is not None
    torch.testing.assert_close(x.grad, grad @ layer.weight_dequantized(), rtol=1e-5, atol=1e-6)
    assert all(b.grad is None for b in layer.buffers())


@pytest.mark.parametrize("kind", KINDS)
def test_a_trainable_adapter_beside_it_gets_gradients(kind: str) -> None:
    # QLoRA: y = base(x) + B(A(x)); only A and B train.
    layer = _build(kind, _weight(), compute_dtype=torch.float32)
    lora_a = torch.nn.Linear(IN, 4, bias=False)
    lora_b = torch.nn.Linear(4, OUT, bias=False)
    torch.nn.init.normal_(lora_b.weight)
    x = _input(8)
    (layer(x) + lora_b(lora_a(x))).square().mean().backward()
    assert lora_a.weight.grad is not None and lora_a.weight.grad.abs().sum() > 0
    assert lora_b.weight.grad is not None and lora_b.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_no_dequantized_weight_is_saved_for_backward(kind: str) -> None:
    saved: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.shape)
        return t

    x = _input(2).requires_grad_()
    layer = _build(kind, _weight(), _bias())
    # Control: the naive F.linear(x, de-quantized W) saves W (transposed) to compute the input gradient.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.linear(x, layer.weight_dequantized()).sum()
    assert any(shape.numel() == OUT * IN for shape in saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x).sum()
    assert all(shape.numel() < OUT * IN for shape in saved)
    out.backward()
    assert x.grad is not None


# --- storage, devices, dtypes, state dicts -------------------------------------------------------------


def _tensor_bytes(layer: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # 96 * 70 = 6720 weights = 105 blocks: 3360 packed bytes; double quant: 105 int8 + 1 scale + mean.
        ("nf4", 3360 + 105 + 4 + 4 + 96 * 4),
        ("nf4-plain", 3360 + 105 * 4 + 96 * 4),
        ("int8", 6720 + 96 * 4 + 96 * 4),
    ],
)
def test_nbytes_hand_computed(kind: str, expected: int) -> None:
    layer = _build(kind, _weight(), _bias())
    assert layer.nbytes() == expected == _tensor_bytes(layer)


@pytest.mark.slow
def test_smollm2_layer_bytes_per_weight(smollm2_hf_dir: Path) -> None:
    with open_checkpoint(smollm2_hf_dir) as reader:
        weight = reader.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert weight.shape == (576, 1536) and weight.dtype == torch.float32
    ref = weakref.ref(weight)
    layer = NF4Linear.from_weight(weight, compute_dtype=torch.float32)
    numel = weight.numel()
    # 884736 weights: 442368 packed bytes + 13824 int8 absmax + 54 fp32 scales + 1 fp32 mean = 456412 bytes.
    assert layer.nbytes() == _tensor_bytes(layer) == 442368 + 13824 + 54 * 4 + 4
    assert layer.nbytes() / numel <= 0.53  # 0.5159 bytes = 4.127 bits per weight
    # No float copy anywhere: no float tensor in the module has the weight's size, and the module holds no
    # reference to the original (it is freed once the caller drops it).
    tensors = [*layer.parameters(), *layer.buffers(), *(v for v in vars(layer).values() if torch.is_tensor(v))]
    assert all(not (t.is_floating_point() and t.numel() >= numel) for t in tensors)
    x = torch.randn(3, 1536, generator=torch.Generator().manual_seed(7))
    reference = F.linear(x, weight)
    assert ((layer(x) - reference).norm() / reference.norm()).item() < 0.1
    del weight
    gc.collect()
    assert ref() is None
    int8 = Int8Linear.from_weight(torch.zeros(576, 1536))
    assert int8.nbytes() / numel == pytest.approx(1 + 4 / 1536)  # int8 weight + one fp32 scale per row


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_state_dict_round_trip_through_safetensors(kind: str, with_bias: bool, tmp_path: Path) -> None:
    layer = _build(kind, _weight(), _bias() if with_bias else None)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    restored = _empty_like(layer)
    assert not torch.equal(restored.weight_dequantized(), layer.weight_dequantized())
    restored.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = _input(5)
    assert torch.equal(restored(x), layer(x))
    assert restored.state_dict().keys() == layer.state_dict().keys()


def test_state_dict_keys() -> None:
    assert list(NF4Linear(IN, OUT).state_dict()) == [
        "bias",
        "weight_packed",
        "weight_absmax_codes",
        "weight_absmax_scales",
        "weight_absmax_mean",
    ]
    assert list(NF4Linear(IN, OUT, bias=False, double_quant=False).state_dict()) == ["weight_packed", "weight_absmax"]
    assert list(Int8Linear(IN, OUT).state_dict()) == ["bias", "weight_int8", "weight_scale"]


def test_loading_the_other_layout_fails() -> None:
    double = NF4Linear.from_weight(_weight())
    with pytest.raises(RuntimeError, match="weight_absmax"):
        NF4Linear(IN, OUT, bias=False, double_quant=False).load_state_dict(double.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_conversion_keeps_float32_state(kind: str) -> None:
    layer = _build(kind, _weight(), _bias())
    before = layer.weight_dequantized()
    for convert in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()):
        convert(layer)
        assert torch.equal(layer.weight_dequantized(), before)
    assert layer.bias is not None and layer.bias.dtype == torch.float64  # the bias converts like any float
    states = {name: t.dtype for name, t in layer.state_dict().items() if name != "bias"}
    assert torch.float16 not in states.values() and torch.bfloat16 not in states.values()


@pytest.mark.parametrize("kind", KINDS)
def test_to_device_moves_every_buffer(kind: str) -> None:
    layer = _build(kind, _weight(), _bias()).to("meta")
    assert {t.device.type for t in layer.buffers()} == {"meta"}
    assert {name: t.dtype for name, t in layer.state_dict().items()} == {
        name: t.dtype for name, t in _build(kind, _weight(), _bias()).state_dict().items()
    }


def test_empty_layer_is_zero_on_the_requested_device() -> None:
    layer = NF4Linear(IN, OUT, device="meta")
    assert {t.device.type for t in layer.buffers()} == {"meta"}
    cpu = Int8Linear(IN, OUT, bias=False)
    assert torch.equal(cpu(_input(2)), torch.zeros(2, OUT))


def test_repr_names_the_settings() -> None:
    text = repr(NF4Linear(IN, OUT, compute_dtype=torch.bfloat16, chunk_rows=8))
    assert "in_features=70, out_features=96, bias=True" in text
    assert "compute_dtype=torch.bfloat16, chunk_rows=8, double_quant=True" in text
    assert "double_quant" not in repr(Int8Linear(IN, OUT))


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NF4Linear, Int8Linear])
def test_constructor_rejects(cls: type[Layer]) -> None:
    with pytest.raises(QuantizationError, match="in_features and out_features must be >= 1, got 0, 4"):
        cls(0, 4)
    with pytest.raises(QuantizationError, match="chunk_rows must be >= 1"):
        cls(4, 4, chunk_rows=0)
    with pytest.raises(QuantizationError, match="compute_dtype must be a float dtype"):
        cls(4, 4, compute_dtype=torch.int8)


@pytest.mark.parametrize("cls", [NF4Linear, Int8Linear])
def test_from_weight_rejects(cls: type[Layer]) -> None:
    with pytest.raises(QuantizationError, match="weight must be a 2-D float tensor"):
        cls.from_weight(torch.ones(4))
    with pytest.raises(QuantizationError, match="weight must be a 2-D float tensor"):
        cls.from_weight(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(QuantizationError, match=r"bias must be a float tensor \(4,\), got torch.float32 \(3,\)"):
        cls.from_weight(torch.ones(4, 4), torch.ones(3))
    with pytest.raises(QuantizationError, match="NaN or inf"):
        cls.from_weight(torch.full((4, 4), float("nan")))


@pytest.mark.parametrize("kind", KINDS)
def test_forward_rejects_bad_inputs(kind: str) -> None:
    layer = _build(kind, _weight())
    with pytest.raises(
        QuantizationError, match=r"input must be a float tensor \(\.\.\., 70\), got torch.float32 \(2, 3\)"
    ):
        layer(torch.ones(2, 3))
    with pytest.raises(QuantizationError, match=r"got torch\.int64"):
        layer(torch.ones(2, IN, dtype=torch.int64))


# --- CUDA ----------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind: str) -> None:
    cpu = _build(kind, _weight(), _bias())
    gpu = _build(kind, _weight().cuda(), _bias().cuda())
    moved = _build(kind, _weight(), _bias()).to("cuda")
    assert {t.device.type for t in [*gpu.buffers(), *moved.buffers()]} == {"cuda"}
    for name, tensor in cpu.state_dict().items():
        assert torch.equal(gpu.state_dict()[name].cpu(), tensor), name
    x = _input(4).cuda().requires_grad_()
    y = moved(x)
    torch.testing.assert_close(y.cpu(), cpu(x.detach().cpu()), rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert x.grad is not None and x.grad.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_chunked_forward_lowers_peak_memory() -> None:
    # A 8192 x 8192 weight de-quantizes to 256 MiB in float32; 512-row chunks need 16 MiB at a time.
    weight = torch.randn(8192, 8192, device="cuda")
    whole = NF4Linear.from_weight(weight)
    chunked = NF4Linear.from_weight(weight, chunk_rows=512)
    del weight
    x = torch.randn(4, 8192, device="cuda")
    peaks = []
    for layer in (whole, chunked):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        layer(x)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[0] >= 256 * 2**20
    assert peaks[1] < peaks[0] / 4
