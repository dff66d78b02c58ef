"""The GGML type of each tensor for a llama-quantize file type (``Q4_K_M``, ``Q5_K_S``, ``Q8_0`` ...).

A file type is a mixture: llama.cpp's ``llama-quantize`` gives most weights the file type's default type and
some more bits where quantization hurts most (the value projections and FFN down projections of the first and
last eighth of the layers and every third one between, the output head, ...). This is a port of its
``llama_tensor_get_type`` (``src/llama-quant.cpp`` of the llama.cpp version the Makefile pins) for the file
types we write: the legacy ``Q4_0 Q4_1 Q5_0 Q5_1 Q8_0``, the K-quant mixtures ``Q2_K Q2_K_S Q3_K_S Q3_K_M
Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K``, and the unquantized ``F32 F16 BF16``. The i-quant branches are
left out (we write no i-quant type, and no file type here picks one), and so are the rules for
mixture-of-experts models and Falcon (architectures we do not export).

As llama-quantize does:

- Tensors are visited in its loader's order (tensors outside the layers by name, then layer by layer, each
  layer's by name), which drives its per-role counters (the n-th ``attn_v`` seen).
- Only weights of two or more dimensions are quantized, never norms (``*_norm.weight``); others keep the
  unquantized file's type (`tensor_types` returns None for them).
- A type whose block does not divide a weight's row falls back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
  Q2_K/Q3_K -> Q4_0), and to F16 when the fallback's 32-value block does not divide it either.
- With tied embeddings (no ``output.weight``) the token embedding gets the output head's type.
- ``pure`` (``llama-quantize --pure``) gives every quantizable weight the default type (with the fallbacks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from aprender.errors import InvalidArgumentError

__all__ = ["FILE_TYPES", "FileType", "ModelShape", "file_type", "file_types", "tensor_types"]

_T = GGMLQuantizationType
_F = LlamaFileType


@dataclass(frozen=True)
class FileType:
    """A llama-quantize file type.

    Attributes:
        name: As llama.cpp names it (``Q4_K_M``); the lower-case form is what users type.
        ftype: ``general.file_type`` (llama.cpp's ``llama_ftype``).
        default: The type most weights get.
        needs_imatrix: Whether llama-quantize refuses it without an importance matrix (``Q2_K_S``).
    """

    name: str
    ftype: LlamaFileType
    default: GGMLQuantizationType
    needs_imatrix: bool = False


FILE_TYPES: dict[str, FileType] = {
    item.name.lower(): item
    for item in (
        FileType("F32", _F.ALL_F32, _T.F32),
        FileType("F16", _F.MOSTLY_F16, _T.F16),
        FileType("BF16", _F.MOSTLY_BF16, _T.BF16),
        FileType("Q8_0", _F.MOSTLY_Q8_0, _T.Q8_0),
        FileType("Q4_0", _F.MOSTLY_Q4_0, _T.Q4_0),
        FileType("Q4_1", _F.MOSTLY_Q4_1, _T.Q4_1),
        FileType("Q5_0", _F.MOSTLY_Q5_0, _T.Q5_0),
        FileType("Q5_1", _F.MOSTLY_Q5_1, _T.Q5_1),
        FileType("Q2_K", _F.MOSTLY_Q2_K, _T.Q2_K),
        FileType("Q2_K_S", _F.MOSTLY_Q2_K_S, _T.Q2_K, needs_imatrix=True),
        FileType("Q3_K_S", _F.MOSTLY_Q3_K_S, _T.Q3_K),
        FileType("Q3_K_M", _F.MOSTLY_Q3_K_M, _T.Q3_K),
        FileType("Q3_K_L", _F.MOSTLY_Q3_K_L, _T.Q3_K),
        FileType("Q4_K_S", _F.MOSTLY_Q4_K_S, _T.Q4_K),
        FileType("Q4_K_M", _F.MOSTLY_Q4_K_M, _T.Q4_K),
        FileType("Q5_K_S", _F.MOSTLY_Q5_K_S, _T.Q5_K),
        FileType("Q5_K_M", _F.MOSTLY_Q5_K_M, _T.Q5_K),
        FileType("Q6_K", _F.MOSTLY_Q6_K, _T.Q6_K),
    )
}
"""Lower-case name (``q4_k_m``) -> file type."""

_UNQUANTIZED = (_T.F32, _T.F16, _T.BF16)
_FALLBACK = {_T.Q2_K: _T.Q4_0, _T.Q3_K: _T.Q4_0, _T.Q4_K: _T.Q5_0, _T.Q5_K: _T.Q5_1, _T.Q6_K: _T.Q8_0}
_LAYER = re.compile(r"blk\.(\d+)\.")


def file_type(name: str) -> FileType:
    """The file type called `name` (any case).

    Raises:
        InvalidArgumentError: An unknown name, with the known ones.
    """
    try:
        return FILE_TYPES[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"GGUF type {name!r} is not supported; use one of {', '.join(FILE_TYPES)}") from None


def file_types(text: str) -> tuple[FileType, ...]:
    """The file types of a comma-separated list (``q4_k_m,q8_0``), each once, in the order given.

    Raises:
        InvalidArgumentError: An empty list or item, an unknown name, or a name given twice.
    """
    names = [item.strip() for item in text.split(",")]
    if not all(names):
        raise InvalidArgumentError(f"GGUF types {text!r} has an empty item; list types like q4_k_m,q8_0")
    kinds = tuple(file_type(name) for name in names)
    twice = next((kind.name for i, kind in enumerate(kinds) if kind in kinds[:i]), None)
    if twice is not None:
        raise InvalidArgumentError(f"GGUF types {text!r} list {twice} twice; list each type once")
    return kinds


@dataclass(frozen=True)
class ModelShape:
    """What the mixture reads from the model's hyperparameters.

    Attributes:
        arch: ``general.architecture`` (``llama``, ``qwen2``, ``qwen3``).
        n_layer: Decoder layers.
        n_head: Attention heads.
        n_head_kv: Key/value heads.
    """

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int

    @property
    def n_gqa(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_head_kv

    @property
    def is_70b(self) -> bool:
        """llama.cpp's ``LLM_TYPE_70B``: 80 layers (Llama with grouped-query attention, or Qwen2)."""
        if self.n_layer != 80:
            return False
        return self.arch == "qwen2" or (self.arch == "llama" and self.n_head != self.n_head_kv)


def _category(name: str) -> str:
    """llama.cpp's ``tensor_get_category``."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, category in (
        ("attn_qkv.weight", "attn_v"),  # llama.cpp's category_is_attn_v: fused QKV, KV_B and V
        ("attn_kv_b.weight", "attn_v"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return category
    return "other"


def _quantizable(name: str, ndim: int) -> bool:
    """llama.cpp's ``tensor_allows_quantization`` for the tensors of the architectures we write."""
    return ndim >= 2 and name.endswith("weight") and "_norm.weight" not in name and "ffn_gate_inp.weight" not in name


def _more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _loader_order(names: Sequence[str]) -> list[int]:
    """Indices of `names` in llama.cpp's loader order: non-layer tensors by name, then by layer, then by name."""

    def key(index: int) -> tuple[int, str]:
        match = _LAYER.match(names[index])
        return (int(match[1]) if match else -1, names[index])

    return sorted(range(len(names)), key=key)


@dataclass
class _State:
    """llama.cpp's ``quantize_state_impl`` counters."""

    n_attention_wv: int
    n_layer: int
    tied: bool
    has_imatrix: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0


def tensor_types(
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    kind: FileType,
    model: ModelShape,
    *,
    has_imatrix: bool = False,
    pure: bool = False,
    fallback: bool = True,
) -> list[GGMLQuantizationType | None]:
    """The type of each tensor in a file of type `kind` (module docstring).

    Args:
        tensors: (GGUF name, shape) of every tensor, shape in torch order (rows, row length): the row length
            is what a block must divide.
        kind: The file type.
        model: The model's hyperparameters.
        has_imatrix: An importance matrix is given (changes Q4_0/Q5_0's first FFN down projections).
        pure: Every quantizable weight gets the default type (``--pure``).
        fallback: Apply the fallbacks for rows that blocks do not divide; False gives the types wanted before
            them (to report which tensors fell back).

    Returns:
        One type per tensor, in the order given; None for a tensor that is not quantized (it keeps the
        unquantized file's type: F32 for 1-D tensors).
    """
    names = [name for name, _ in tensors]
    state = _State(
        n_attention_wv=sum(_category(name) in ("attn_v", "attn_qkv") for name in names),
        n_layer=model.n_layer,
        tied="output.weight" not in names,
        has_imatrix=has_imatrix,
    )
    result: list[GGMLQuantizationType | None] = [None] * len(tensors)
    for index in _loader_order(names):
        name, shape = tensors[index]
        if not _quantizable(name, len(shape)):
            continue
        chosen = kind.default
        if chosen not in _UNQUANTIZED:
            if not pure:
                chosen = _mixture(state, chosen, name, shape[-1], kind, model)
            chosen = _fallback(chosen, shape[-1]) if fallback else chosen
        result[index] = chosen
    return result


def _fallback(chosen: GGMLQuantizationType, row: int) -> GGMLQuantizationType:
    """llama.cpp's ``tensor_type_fallback``: a type whose block fits the row."""
    if row % GGML_QUANT_SIZES[chosen][0] == 0:
        return chosen
    chosen = _FALLBACK.get(chosen, chosen)
    return chosen if row % GGML_QUANT_SIZES[chosen][0] == 0 else _T.F16


def _mixture(
    state: _State, chosen: GGMLQuantizationType, name: str, row: int, kind: FileType, model: ModelShape
) -> GGMLQuantizationType:
    """llama.cpp's ``llama_tensor_get_type_impl`` for our file types (no i-quants)."""
    category, ftype = _category(name), kind.name
    if category == "output" or (state.tied and category == "token_embd"):
        if row % GGML_QUANT_SIZES[chosen][0] != 0:
            return _T.Q8_0
        return chosen if chosen == _T.Q8_0 else _T.Q6_K
    if category in ("token_embd", "attn_k", "attn_q", "ffn_gate", "ffn_up", "other"):
        return chosen  # the i-quant and MoE rules of these roles pick nothing for our file types
    if category == "attn_v":  # fused QKV and KV_B weights too: llama.cpp's QKV rule after this one is never reached
        chosen = _attn_v(state, chosen, ftype, model)
        state.i_attention_wv += 1
        return chosen
    if category == "ffn_down":
        chosen = _ffn_down(state, chosen, ftype, model)
        state.i_ffn_down += 1
        return chosen
    return _attn_output(chosen, ftype)  # category == "attn_output"


def _attn_v(state: _State, chosen: GGMLQuantizationType, ftype: str, model: ModelShape) -> GGMLQuantizationType:
    i, n = state.i_attention_wv, state.n_attention_wv
    if ftype == "Q2_K":
        chosen = _T.Q4_K if model.n_gqa >= 4 else _T.Q3_K
    elif ftype == "Q2_K_S" and model.n_gqa >= 4:
        chosen = _T.Q4_K
    elif ftype == "Q3_K_M":
        chosen = _T.Q5_K if i < 2 else _T.Q4_K
    elif ftype == "Q3_K_L":
        chosen = _T.Q5_K
    elif ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
        chosen = _T.Q6_K
    elif ftype == "Q4_K_S" and i < 4:
        chosen = _T.Q5_K
    if model.is_70b and chosen in (_T.Q3_K, _T.Q4_K):
        chosen = _T.Q5_K
    return chosen


def _ffn_down(state: _State, chosen: GGMLQuantizationType, ftype: str, model: ModelShape) -> GGMLQuantizationType:
    i, n = state.i_ffn_down, state.n_layer
    if ftype == "Q2_K":
        return _T.Q3_K
    if ftype == "Q2_K_S":
        return _T.Q4_K if i < n // 8 else chosen
    if ftype == "Q3_K_M":
        return _T.Q5_K if i < n // 16 else _T.Q4_K  # llama.cpp's Falcon-only Q3_K branch does not apply
    if ftype == "Q3_K_L":
        return _T.Q5_K
    if ftype == "Q4_K_M":
        return _T.Q6_K if _more_bits(i, n) else chosen
    if ftype == "Q5_K_M" and _more_bits(i, n):
        return _T.Q6_K
    if ftype == "Q4_K_S" and i < n // 8:
        return _T.Q5_K
    if ftype in ("Q4_0", "Q5_0") and state.has_imatrix and i < n // 8:
        return _T.Q4_1 if ftype == "Q4_0" else _T.Q5_1
    return chosen


def _attn_output(chosen: GGMLQuantizationType, ftype: str) -> GGMLQuantizationType:
    return {"Q2_K": _T.Q3_K, "Q3_K_M": _T.Q4_K, "Q3_K_L": _T.Q5_K}.get(ftype, chosen)
