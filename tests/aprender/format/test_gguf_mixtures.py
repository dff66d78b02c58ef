"""aprender.format.gguf_mixtures: the type of every tensor equals what llama.cpp's llama-quantize picks.

The oracle (``llamacpp`` tests, skipped without llama-cpp-python): an F16 GGUF file of a random Llama written
with the `gguf` package is quantized by llama.cpp's own ``llama_model_quantize`` to each file type, and the types
of its tensors are compared with `tensor_types`. The shapes cover the mixture's branches: grouped-query
attention (n_gqa >= 4) or not, tied or separate output head, rows that K-quant blocks do not divide (the
fallbacks: 96 columns -> Q5_0/Q5_1/Q8_0/Q4_0, 40 columns -> F16), 80 layers (llama.cpp's 70B rule), with and
without an importance matrix. The unit tests spell a few rules out by hand, so they run without llama.cpp.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from aprender.errors import InvalidArgumentError
from aprender.format.gguf import read_gguf
from aprender.format.gguf_mixtures import FILE_TYPES, ModelShape, file_type, file_types, tensor_types


def _tensors(shape: ModelShape, hidden: int, ff: int, vocab: int, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    head = hidden // shape.n_head
    names: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (vocab, hidden))]
    for i in range(shape.n_layer):
        names += [
            (f"blk.{i}.attn_norm.weight", (hidden,)),
            (f"blk.{i}.attn_q.weight", (hidden, hidden)),
            (f"blk.{i}.attn_k.weight", (shape.n_head_kv * head, hidden)),
            (f"blk.{i}.attn_v.weight", (shape.n_head_kv * head, hidden)),
            (f"blk.{i}.attn_output.weight", (hidden, hidden)),
            (f"blk.{i}.ffn_norm.weight", (hidden,)),
            (f"blk.{i}.ffn_gate.weight", (ff, hidden)),
            (f"blk.{i}.ffn_up.weight", (ff, hidden)),
            (f"blk.{i}.ffn_down.weight", (hidden, ff)),
        ]
    names.append(("output_norm.weight", (hidden,)))
    if not tied:
        names.append(("output.weight", (vocab, hidden)))
    return names


def _write_f16(path: Path, shape: ModelShape, tensors: list[tuple[str, tuple[int, ...]]], hidden: int, ff: int) -> None:
    writer = gguf.GGUFWriter(path, shape.arch)
    writer.add_block_count(shape.n_layer)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // shape.n_head)
    writer.add_vocab_size(tensors[0][1][0])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)
    for name, dims in tensors:
        values = (rng.standard_normal(dims) * 0.02).astype(np.float32)
        writer.add_tensor(name, values if len(dims) == 1 else values.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _llama_quantize(source: Path, out: Path, ftype: int, imatrix: dict[str, int] | None) -> dict[str, int]:
    """llama.cpp's types for each tensor of `source` quantized to `ftype` (with an all-ones importance matrix)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make llama-cpp`")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 1
    keep: list[object] = []
    if imatrix is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for entry, (name, size) in zip(entries, imatrix.items(), strict=False):
            data = (ctypes.c_float * size)(*([1.0] * size))
            keep.append(data)
            entry.name, entry.data, entry.size = name.encode(), ctypes.cast(data, ctypes.POINTER(ctypes.c_float)), size
        params.imatrix = entries
        keep.append(entries)
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    with read_gguf(out) as gguf_file:
        return {name: info.ggml_type for name, info in gguf_file.tensors.items()}


MIXTURES = Path(__file__).resolve().parents[2] / "data" / "gguf_mixtures.json"
CASES = {
    # name: (shape, hidden, ff, vocab, tied)
    "gqa4-tied": (ModelShape("llama", 16, 8, 2), 256, 512, 512, True),
    "mha-untied": (ModelShape("llama", 12, 4, 4), 256, 768, 256, False),
    "fallbacks": (ModelShape("llama", 10, 4, 2), 96, 160, 64, False),
    "f16-fallback": (ModelShape("llama", 3, 2, 1), 40, 64, 64, True),
}


def _runs() -> list[tuple[str, bool]]:
    """(file type, with an importance matrix) pairs llama-quantize accepts."""
    return [
        (name, imatrix)
        for name, kind in FILE_TYPES.items()
        for imatrix in ((False, True) if kind.default not in (T.F32, T.F16, T.BF16) else (False,))
        if imatrix or not kind.needs_imatrix
    ]


def _ours(case: str) -> dict[str, list[int]]:
    """Our types of the case's tensors for every run, the F16 file's types where not quantized: ``"q4_k_m-True"``
    -> one type id per tensor in the order `_tensors` lists them."""
    shape, hidden, ff, vocab, tied = CASES[case]
    tensors = _tensors(shape, hidden, ff, vocab, tied)
    kept = [T.F32 if len(dims) == 1 else T.F16 for _, dims in tensors]  # what the F16 file stores
    return {
        f"{name}-{imatrix}": [
            int(t if t is not None else k)
            for t, k in zip(tensor_types(tensors, FILE_TYPES[name], shape, has_imatrix=imatrix), kept, strict=True)
        ]
        for name, imatrix in _runs()
    }


@pytest.mark.llamacpp
@pytest.mark.parametrize("case", list(CASES))
def test_every_file_type_picks_llama_quantizes_types(case: str, tmp_path: Path) -> None:
    shape, hidden, ff, vocab, tied = CASES[case]
    tensors = _tensors(shape, hidden, ff, vocab, tied)
    _write_f16(tmp_path / "f16.gguf", shape, tensors, hidden, ff)
    weights = {name: dims[-1] for name, dims in tensors if len(dims) == 2}
    theirs = {}
    for name, imatrix in _runs():
        out = tmp_path / f"{name}-{imatrix}.gguf"  # one file per run: a file rewritten under a live mmap faults
        types = _llama_quantize(tmp_path / "f16.gguf", out, FILE_TYPES[name].ftype, weights if imatrix else None)
        theirs[f"{name}-{imatrix}"] = [types[n] for n, _ in tensors]
    assert _ours(case) == theirs
    # llama.cpp's answers are recorded in tests/data for the test that runs without llama.cpp: still its own?
    if os.environ.get("APRENDER_WRITE_MIXTURES"):
        recorded = json.loads(MIXTURES.read_text()) if MIXTURES.is_file() else {}
        MIXTURES.write_text(json.dumps({**recorded, case: theirs}, sort_keys=True) + "\n")
    assert json.loads(MIXTURES.read_text())[case] == theirs


@pytest.mark.parametrize("case", list(CASES))
def test_every_file_type_picks_the_recorded_llama_quantize_types(case: str) -> None:
    # llama.cpp's answers, recorded by the test above (APRENDER_WRITE_MIXTURES=1), which checks they are its own
    assert _ours(case) == json.loads(MIXTURES.read_text())[case]


@pytest.mark.llamacpp
def test_the_70b_rule(tmp_path: Path) -> None:
    shape = ModelShape("llama", 80, 8, 2)
    tensors = _tensors(shape, 256, 256, 256, True)
    _write_f16(tmp_path / "f16.gguf", shape, tensors, 256, 256)
    for name in ("q3_k_m", "q2_k"):
        theirs = _llama_quantize(tmp_path / "f16.gguf", tmp_path / f"{name}.gguf", FILE_TYPES[name].ftype, None)
        ours = tensor_types(tensors, FILE_TYPES[name], shape)
        assert {n: int(t) for (n, _), t in zip(tensors, ours, strict=True) if t is not None} == {
            n: t for n, t in theirs.items() if t != T.F32
        }


def test_q4_k_m_by_hand() -> None:
    shape = ModelShape("llama", 16, 8, 2)
    tensors = _tensors(shape, 256, 512, 512, True)
    types = dict(zip((n for n, _ in tensors), tensor_types(tensors, FILE_TYPES["q4_k_m"], shape), strict=True))
    # more bits (Q6_K) for attn_v and ffn_down in layers 0-1, 14-15 and every third from 4: i < 2, i >= 14, (i-2)%3 == 2
    more = [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(16) if types[f"blk.{i}.attn_v.weight"] == T.Q6_K] == more
    assert [i for i in range(16) if types[f"blk.{i}.ffn_down.weight"] == T.Q6_K] == more
    assert types["token_embd.weight"] == T.Q6_K  # tied: the output head's type
    assert types["blk.3.attn_q.weight"] == T.Q4_K and types["blk.3.attn_norm.weight"] is None
    pure = tensor_types(tensors, FILE_TYPES["q4_k_m"], shape, pure=True)
    assert {t for t in pure if t is not None} == {T.Q4_K}


def test_fallbacks_and_seventy_b_by_hand() -> None:
    rows = [("blk.0.attn_q.weight", (8, 96)), ("blk.0.ffn_down.weight", (8, 40)), ("blk.0.attn_v.weight", (8, 256))]
    one = ModelShape("llama", 1, 1, 1)
    assert tensor_types(rows, FILE_TYPES["q4_k_s"], one) == [T.Q5_0, T.F16, T.Q5_K]
    assert tensor_types(rows, FILE_TYPES["q6_k"], one) == [T.Q8_0, T.F16, T.Q6_K]
    assert tensor_types(rows, FILE_TYPES["q6_k"], one, fallback=False) == [T.Q6_K, T.Q6_K, T.Q6_K]
    assert tensor_types(rows, FILE_TYPES["f16"], one) == [T.F16, T.F16, T.F16]
    seventy = ModelShape("llama", 80, 8, 1)
    assert seventy.is_70b and not ModelShape("llama", 80, 8, 8).is_70b and ModelShape("qwen2", 80, 8, 8).is_70b
    values = [(f"blk.{i}.attn_v.weight", (8, 256)) for i in range(3)]  # Q3_K_M: Q5_K for the first two, then Q4_K
    assert tensor_types(values, FILE_TYPES["q3_k_m"], ModelShape("llama", 80, 8, 8)) == [T.Q5_K, T.Q5_K, T.Q4_K]
    assert tensor_types(values, FILE_TYPES["q3_k_m"], seventy) == [T.Q5_K, T.Q5_K, T.Q5_K]


def test_file_type_names() -> None:
    assert file_type("Q4_K_M") is FILE_TYPES["q4_k_m"] and file_type("q4_k_m").default == T.Q4_K
    assert FILE_TYPES["q2_k_s"].needs_imatrix and not FILE_TYPES["q2_k"].needs_imatrix
    with pytest.raises(InvalidArgumentError, match=r"GGUF type 'q4_k_x' is not supported; use one of f32, f16"):
        file_type("q4_k_x")


def test_file_type_lists() -> None:
    assert file_types("Q4_K_M, q8_0") == (FILE_TYPES["q4_k_m"], FILE_TYPES["q8_0"])
    with pytest.raises(InvalidArgumentError, match=r"GGUF types 'q8_0,,f16' has an empty item"):
        file_types("q8_0,,f16")
    with pytest.raises(InvalidArgumentError, match=r"GGUF types 'q8_0,Q8_0' list Q8_0 twice"):
        file_types("q8_0,Q8_0")
    with pytest.raises(InvalidArgumentError, match=r"GGUF type 'q9' is not supported"):
        file_types("q8_0,q9")
