"""Corrupt, truncated and hostile GGUF files: `read_gguf` raises FormatError naming the file, or reads.

Named cases build files byte by byte (layout from docs/gguf.md) to hit each error kind; hypothesis
mutates a small valid file written by `gguf.GGUFWriter` (byte flips, truncation, huge counts and
lengths, random type ids). Field offsets for the targeted mutations come from `gguf.GGUFReader`.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType, GGUFValueType
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aprender.errors import FormatError
from aprender.format.gguf import GGUFFile, read_gguf

T = GGMLQuantizationType
V = GGUFValueType
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- a byte-level GGUF builder -------------------------------------------------------------------


def s(text: str | bytes) -> bytes:
    """A GGUF string: u64 length + bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def arr(itype: int, count: int, payload: bytes) -> bytes:
    return struct.pack("<IQ", itype, count) + payload


def info(name: str | bytes, ne: list[int], ggml_type: int, offset: int, n_dims: int | None = None) -> bytes:
    dims = struct.pack(f"<{len(ne)}Q", *ne)
    return (
        s(name)
        + struct.pack("<I", len(ne) if n_dims is None else n_dims)
        + dims
        + struct.pack("<IQ", ggml_type, offset)
    )


F32_DATA = np.arange(8, dtype=np.float32).tobytes()  # tensor "w": ne [4, 2], 32 bytes at offset 0
Q8_DATA = bytes([0x00, 0x3C]) + bytes(range(32))  # tensor "q": one Q8_0 block (d = 1), 34 bytes at offset 32
BASE_KVS = [kv("general.architecture", V.STRING, s("llama"))]
BASE_INFOS = [info("w", [4, 2], T.F32, 0), info("q", [32], T.Q8_0, 32)]


def build(
    kvs: list[bytes] | None = None,
    infos: list[bytes] | None = None,
    data: bytes | None = None,
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> bytes:
    kvs = BASE_KVS if kvs is None else kvs
    infos = BASE_INFOS if infos is None else infos
    data = F32_DATA + Q8_DATA if data is None else data
    n_tensors = len(infos) if n_tensors is None else n_tensors
    n_kv = len(kvs) if n_kv is None else n_kv
    head = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % alignment) + data


def _write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _fails(tmp_path: Path, data: bytes, match: str) -> FormatError:
    path = _write(tmp_path, data)
    with pytest.raises(FormatError, match=match) as caught:
        read_gguf(path)
    assert str(path) in str(caught.value), "the message must name the file"
    assert "\n" not in str(caught.value)
    return caught.value


def test_builder_base_file_is_valid(tmp_path: Path) -> None:
    """The builder's base file reads with both readers, so each case below breaks exactly one thing."""
    path = _write(tmp_path, build(), "good.gguf")
    reader = gguf.GGUFReader(path)
    with read_gguf(path) as gf:
        assert gf.metadata == {"general.architecture": "llama"}
        assert gf.load_tensor("w").flatten().tolist() == list(range(8))
        assert gf.load_tensor("q").tolist() == list(range(32))  # d = 1, qs = 0..31
        assert [t.data_offset for t in reader.tensors] == [i.offset for i in gf.tensors.values()]


# --- one named case per error kind ------------------------------------------------------------------

BAD_UTF8 = b"\xff\xfe"
CASES = {
    "bad_magic": (build(magic=b"GGML"), r"not a GGUF file \(starts with b'GGML'"),
    "version_1": (build(version=1), r"unsupported GGUF version \(version field 1"),
    "version_4": (build(version=4), r"unsupported GGUF version"),
    "big_endian": (build(version=3 << 24), r"big-endian GGUF files are not supported"),
    "tensor_count_huge": (build(n_tensors=2**64 - 1), r"claims 18446744073709551615 tensors"),
    "kv_count_huge": (build(n_kv=2**40), r"claims 1099511627776 metadata entries"),
    "kv_count_too_high": (build(n_kv=5), r"needs|cannot fit|unknown value type"),
    "key_length_past_eof": (
        build(kvs=[struct.pack("<Q", 2**63) + b"general"]),
        r"metadata key needs 9223372036854775808 bytes",
    ),
    "string_value_past_eof": (
        build(kvs=[kv("k", V.STRING, struct.pack("<Q", 10_000) + b"abc")]),
        r"metadata key 'k' needs 10000 bytes",
    ),
    "numeric_array_past_eof": (build(kvs=[kv("k", V.ARRAY, arr(V.UINT32, 2**61, b""))]), r"metadata key 'k' needs"),
    "string_array_past_eof": (
        build(kvs=[kv("k", V.ARRAY, arr(V.STRING, 10**6, s("a")))]),
        r"metadata key 'k' with 1000000 elements needs 8000000 bytes",
    ),
    "nested_array_past_eof": (build(kvs=[kv("k", V.ARRAY, arr(V.ARRAY, 10**6, b""))]), r"with 1000000 elements"),
    "unknown_value_type": (build(kvs=[kv("k", 13, b"\0" * 8)]), r"metadata key 'k' has unknown value type 13"),
    "unknown_element_type": (build(kvs=[kv("k", V.ARRAY, arr(99, 1, b"\0" * 8))]), r"unknown element type 99"),
    "arrays_nested_too_deep": (
        build(kvs=[kv("k", V.ARRAY, arr(V.ARRAY, 1, b"") * 9 + arr(V.UINT8, 0, b""))]),
        r"nests arrays more than 8 levels deep",
    ),
    "bool_not_0_or_1": (build(kvs=[kv("k", V.BOOL, b"\x02")]), r"metadata key 'k' holds a bool byte other than 0 or 1"),
    "bool_array_not_0_or_1": (build(kvs=[kv("k", V.ARRAY, arr(V.BOOL, 2, b"\x01\x07"))]), r"bool byte"),
    "utf8_key": (build(kvs=[kv(BAD_UTF8, V.UINT8, b"\0")]), r"metadata key is not valid UTF-8"),
    "utf8_value": (build(kvs=[kv("k", V.STRING, s(b"ok" + BAD_UTF8))]), r"metadata key 'k' is not valid UTF-8"),
    "utf8_array_item": (
        build(kvs=[kv("k", V.ARRAY, arr(V.STRING, 2, s("a") + s(BAD_UTF8)))]),
        r"'k'\[1\] is not valid",
    ),
    "utf8_tensor_name": (build(infos=[info(BAD_UTF8, [4, 2], T.F32, 0)]), r"tensor name is not valid UTF-8"),
    "duplicate_key": (build(kvs=BASE_KVS * 2), r"metadata key 'general.architecture' appears twice"),
    "duplicate_tensor": (build(infos=[info("w", [4, 2], T.F32, 0), info("w", [32], T.Q8_0, 32)]), r"'w' appears twice"),
    "unknown_ggml_type": (build(infos=[info("w", [4, 2], 4, 0)]), r"tensor 'w' has unknown GGML type id 4"),
    "ggml_type_huge": (build(infos=[info("w", [4, 2], 2**32 - 1, 0)]), r"unknown GGML type id 4294967295"),
    "five_dims": (build(infos=[info("w", [1, 1, 1, 1, 8], T.F32, 0)]), r"tensor 'w' has 5 dimensions"),
    "zero_dims_count": (build(infos=[info("w", [], T.F32, 0)]), r"tensor 'w' has 0 dimensions"),
    "dims_count_huge": (build(infos=[info("w", [4, 2], T.F32, 0, n_dims=2**32 - 1)]), r"has 4294967295 dimensions"),
    "zero_dim": (build(infos=[info("w", [4, 0], T.F32, 0)]), r"tensor 'w' has invalid dimensions \[4, 0\]"),
    "negative_dim": (
        build(infos=[info("w", [4, 2**64 - 2], T.F32, 0)]),
        r"invalid dimensions \[4, 18446744073709551614\]",
    ),
    "huge_element_count": (build(infos=[info("w", [2**62] * 4, T.F32, 0)]), r"'w' data .* runs past the end"),
    "row_not_whole_blocks": (build(infos=[info("q", [16, 2], T.Q8_0, 0)]), r"'q' \(Q8_0\) has rows of 16 values"),
    "offset_misaligned": (
        build(infos=[info("w", [4, 2], T.F32, 4)]),
        r"'w' data offset 4 is not a multiple of the alignment 32",
    ),
    "offset_out_of_bounds": (
        build(infos=[info("w", [4, 2], T.F32, 2**63)]),
        r"'w' data \(bytes \d+ to \d+\) runs past",
    ),
    "data_truncated": (build(data=F32_DATA + Q8_DATA[:-1]), r"tensor 'q' data .* runs past the end"),
    "tensor_info_truncated": (
        build(data=b"", alignment=1)[:-9],
        r"type of tensor 'q' needs 4 bytes at byte \d+, but only 3",
    ),
    "alignment_wrong_type": (
        build(kvs=[kv("general.alignment", V.UINT64, struct.pack("<Q", 32))]),
        r"must be a uint32",
    ),
    "alignment_not_power_of_two": (
        build(kvs=[kv("general.alignment", V.UINT32, struct.pack("<I", 48))]),
        r"is 48, but",
    ),
    "alignment_zero": (build(kvs=[kv("general.alignment", V.UINT32, struct.pack("<I", 0))]), r"power of two"),
    "too_small": (b"GGUF\x03\0\0\0", r"8 bytes is too small for a GGUF header"),
    "empty": (b"", r"0 bytes is too small"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_named_corruption_raises_format_error(case: str, tmp_path: Path) -> None:
    data, match = CASES[case]
    _fails(tmp_path, data, match)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"nope\.gguf: cannot open the GGUF file \(No such file"):
        read_gguf(tmp_path / "nope.gguf")
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(FormatError, match=r"dir\.gguf: cannot open the GGUF file"):
        read_gguf(tmp_path / "dir.gguf")


def test_header_claiming_2_60_tensors_fails_fast(tmp_path: Path) -> None:
    path = _write(tmp_path, build(n_tensors=2**60))
    start = time.perf_counter()
    with pytest.raises(FormatError, match=r"claims 1152921504606846976 tensors"):
        read_gguf(path)
    assert time.perf_counter() - start < 0.2


def test_unsupported_known_type_reads_but_does_not_load(tmp_path: Path) -> None:
    """Q8_K (256-value blocks of 292 bytes) parses; only decoding fails, naming file, tensor and type."""
    data = build(infos=[info("k", [256], T.Q8_K, 0)], data=bytes(292))
    path = _write(tmp_path, data, "q8k.gguf")
    with read_gguf(path) as gf:
        assert gf.tensors["k"].type_name == "Q8_K" and gf.raw("k").size == 292
        with pytest.raises(FormatError, match=r"q8k\.gguf: tensor 'k' \(Q8_K\): GGML type Q8_K cannot be dequantized"):
            gf.load_tensor("k")


def test_valid_edge_cases_read(tmp_path: Path) -> None:
    """Empty arrays, no tensors and version 2 are valid (gguf.md): they read, matching GGUFReader."""
    kvs = [
        kv("a.empty_u32", V.ARRAY, arr(V.UINT32, 0, b"")),
        kv("a.empty_str", V.ARRAY, arr(V.STRING, 0, b"")),
        kv("a.empty_bool", V.ARRAY, arr(V.BOOL, 0, b"")),
        kv("a.nested_empty", V.ARRAY, arr(V.ARRAY, 1, arr(V.INT8, 0, b""))),
        kv("a.empty_str_value", V.STRING, s("")),
    ]
    path = _write(tmp_path, build(kvs=kvs, infos=[], data=b"", version=2), "edge.gguf")
    with read_gguf(path) as gf:
        assert gf.version == 2 and gf.tensors == {}
        md = gf.metadata
        assert md["a.empty_u32"].dtype == np.uint32 and md["a.empty_u32"].size == 0
        assert md["a.empty_str"] == [] and md["a.empty_bool"].dtype == np.bool_
        assert len(md["a.nested_empty"]) == 1 and md["a.nested_empty"][0].size == 0
        assert md["a.empty_str_value"] == ""
    reader = gguf.GGUFReader(path)
    assert [k for k in reader.fields if not k.startswith("GGUF.")] == list(md)


# --- hypothesis: mutate a small valid file --------------------------------------------------------


def _base_file(path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "bc"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    writer.add_key_value("test.nested", [[1, 2], [3]], V.ARRAY)
    writer.add_tensor("f32", rng.standard_normal((2, 8)).astype(np.float32))
    writer.add_tensor("q8_0", gguf.quants.quantize(rng.standard_normal((2, 32)), T.Q8_0), raw_dtype=T.Q8_0)
    q4k = rng.integers(0, 256, (1, 144), dtype=np.uint8)
    q4k[:, :4] = np.array([0.5, 0.25], dtype=np.float16).view(np.uint8)
    writer.add_tensor("q4_k", q4k, raw_dtype=T.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, int, list[tuple[int, int]], list[int]]:
    """(file bytes, data section start, end of the last tensor, (offset, size) of every u32/u64 header
    field, offsets of every type id field), the offsets taken from gguf.GGUFReader's parsed parts."""
    path = tmp_path_factory.mktemp("base") / "base.gguf"
    _base_file(path)
    reader = gguf.GGUFReader(path)
    origin = reader.data.ctypes.data
    fields: list[tuple[int, int]] = []
    types: list[int] = []
    for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        for part in field.parts:
            if part.dtype.itemsize in (4, 8) and part.dtype.kind == "u":
                fields += [(part.ctypes.data - origin + k * part.itemsize, part.itemsize) for k in range(part.size)]
        if field.name.startswith("GGUF."):
            continue  # version and counts: no type id
        if not field.types:  # a tensor info: parts are name length, name, n_dims, dims, ggml type, offset
            types.append(field.parts[4].ctypes.data - origin)
            continue
        types.append(field.parts[2].ctypes.data - origin)  # key length, key, value type, ...
        if field.types[0] == V.ARRAY:
            types.append(field.parts[3].ctypes.data - origin)  # ..., element type, count, ...
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    return path.read_bytes(), reader.data_offset, end, fields, types


def _read_or_format_error(path: Path, data: bytes) -> bool:
    """The property: parse succeeds (and each tensor loads or raises FormatError) or FormatError; True if parsed."""
    path.write_bytes(data)
    try:
        gf = read_gguf(path)
    except FormatError as exc:
        assert str(path) in str(exc)
        return False
    with gf:
        for name, tensor_info in gf.tensors.items():
            try:
                tensor = gf.load_tensor(name)
            except FormatError as exc:
                assert str(path) in str(exc) and name in str(exc)
            else:
                assert tuple(tensor.shape) == tensor_info.shape
            assert tensor_info.offset + tensor_info.n_bytes <= len(data)
    return True


def _fuzz_case(path: Path, data: bytes) -> bool:
    """`_read_or_format_error`, recording the outcome in hypothesis' statistics (--hypothesis-show-statistics)."""
    parsed = _read_or_format_error(path, data)
    event("read" if parsed else "FormatError on read")
    return parsed


@pytest.fixture(scope="module")
def case_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "case.gguf"


def test_base_file_reads(base: tuple, case_path: Path) -> None:
    data, _, _, fields, types = base
    assert _read_or_format_error(case_path, data)
    assert len(fields) > 30 and len(types) > 10  # the targeted mutations have plenty to aim at


@FUZZ
@given(data=st.data())
def test_fuzz_byte_flips_in_header(base: tuple, case_path: Path, data: st.DataObject) -> None:
    raw, data_start, _, _, _ = base
    mutated = bytearray(raw)
    flips = data.draw(st.lists(st.tuples(st.integers(0, data_start - 1), st.integers(0, 255)), min_size=1, max_size=8))
    for pos, value in flips:
        mutated[pos] = value
    _fuzz_case(case_path, bytes(mutated))


@FUZZ
@given(data=st.data())
def test_fuzz_truncation(base: tuple, case_path: Path, data: st.DataObject) -> None:
    raw, _, end, _, _ = base
    length = data.draw(st.integers(0, len(raw) - 1))
    parsed = _fuzz_case(case_path, raw[:length])
    assert parsed == (length >= end)  # only trailing padding after the last tensor may go


@FUZZ
@given(data=st.data())
def test_fuzz_huge_counts_and_lengths(base: tuple, case_path: Path, data: st.DataObject) -> None:
    raw, _, _, fields, _ = base
    offset, size = data.draw(st.sampled_from(fields))
    special = [2**64 - 1, 2**63, 2**63 - 1, 2**62, 2**32 - 1, 2**31, len(raw), len(raw) + 1, 0, 1]
    value = data.draw(
        st.sampled_from([v for v in special if v < 2 ** (8 * size)]) | st.integers(0, 2 ** (8 * size) - 1)
    )
    mutated = raw[:offset] + value.to_bytes(size, "little") + raw[offset + size :]
    _fuzz_case(case_path, mutated)


@FUZZ
@given(data=st.data())
def test_fuzz_random_type_ids(base: tuple, case_path: Path, data: st.DataObject) -> None:
    raw, _, _, _, types = base
    offset = data.draw(st.sampled_from(types))
    value = data.draw(st.integers(0, 64) | st.sampled_from([2**31, 2**32 - 1]))
    _fuzz_case(case_path, raw[:offset] + struct.pack("<I", value) + raw[offset + 4 :])


def test_gguffile_is_the_reader_type(tmp_path: Path) -> None:
    assert isinstance(read_gguf(_write(tmp_path, build(), "ok.gguf")), GGUFFile)
