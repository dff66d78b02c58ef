"""Quantization for QLoRA: NF4 with double quantization, row-wise int8, and frozen quantized linear layers.

- `entrenar.quant.nf4`: the 16 NF4 code values, block-wise quantize/de-quantize, 4-bit packing, double
  quantization of the block absmax values (https://arxiv.org/abs/2305.14314).
- `entrenar.quant.int8`: per-output-channel absmax int8 (https://arxiv.org/abs/2208.07339).
- `entrenar.quant.linear`: `NF4Linear` and `Int8Linear`, frozen layers that store only the quantized
  weight and pass gradients to their input, so LoRA adapters beside them train.
- `entrenar.quant.swap`: `quantize_linears(model, "nf4", filter_fn=...)` swaps the dense linear layers a
  filter selects for those (QLoRA: all but the LM head).

Example::

    layer = NF4Linear.from_weight(linear.weight, linear.bias, compute_dtype=torch.bfloat16)
    y = layer(x)                            # = F.linear(x, layer.weight_dequantized(x.dtype), bias)
    merged = layer.weight_dequantized() + delta  # merge adapters in float32, never in 4 bits
"""

from entrenar.quant.int8 import Int8Quantized, dequantize_int8_rowwise, quantize_int8_rowwise
from entrenar.quant.linear import Int8Linear, NF4Linear
from entrenar.quant.nf4 import (
    ABSMAX_BLOCK_SIZE,
    NF4_BLOCK_SIZE,
    NF4_CODE,
    NF4_OFFSET,
    DoubleQuantized,
    NF4Quantized,
    dequantize_nf4,
    dequantize_nf4_blocks,
    double_dequantize,
    double_quantize,
    nf4_code,
    pack_4bit,
    quantize_nf4,
    unpack_4bit,
)
from entrenar.quant.swap import (
    QUANT_TYPES,
    LinearFilter,
    not_output_head,
    quantize_linears,
    release_checkpoint_pages,
)

__all__ = [
    "ABSMAX_BLOCK_SIZE",
    "NF4_BLOCK_SIZE",
    "NF4_CODE",
    "NF4_OFFSET",
    "QUANT_TYPES",
    "DoubleQuantized",
    "Int8Linear",
    "Int8Quantized",
    "LinearFilter",
    "NF4Linear",
    "NF4Quantized",
    "dequantize_int8_rowwise",
    "dequantize_nf4",
    "dequantize_nf4_blocks",
    "double_dequantize",
    "double_quantize",
    "nf4_code",
    "not_output_head",
    "pack_4bit",
    "quantize_int8_rowwise",
    "quantize_linears",
    "quantize_nf4",
    "release_checkpoint_pages",
    "unpack_4bit",
]
