"""Corrupt and truncated safetensors files and indexes: always `FormatError` naming the file, never a crash.

A property test mutates a small valid file (header bytes, length prefix, dtypes, offsets, shapes,
metadata, truncation) and checks that each case either loads or raises `FormatError`, against the
`safetensors` library as oracle: whenever we load, the library loads the same bytes; whenever we
refuse, the library refuses too (except the cases listed in `_STRICTER`).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st_torch
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from aprender.errors import FormatError
from aprender.format import safetensors as sf

_TENSORS = {
    "w1": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "b": torch.tensor([1.5, -2.0, 0.25, 8.0], dtype=torch.bfloat16),
    "idx": torch.tensor([7, -9], dtype=torch.int64),
    "mask": torch.tensor([True, False, True]),
    "z": torch.zeros(0, 2, dtype=torch.float16),
}
_NAMES = list(_TENSORS)
_CODES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64", "C64", "F8_E4M3"]
_JUNK_CODES = ["F33", "", "f32", "F4", "Q4_0", "F8_E8M0", "bf16"]
# Where we refuse what the library accepts: duplicate JSON keys (it keeps the last) and packed
# float4 (torch.float4_e2m1fn_x2, whose storage shape differs from the header shape; not supported).
_STRICTER = ["duplicate key", "unsupported dtype 'F4'"]


def _encode(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode("utf-8")
    return len(raw).to_bytes(8, "little") + raw + data


def _valid_parts() -> tuple[dict[str, Any], bytes]:
    blob = st_torch.save(_TENSORS, {"format": "pt"})  # a valid file, built in memory by the library
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _json_mutation(draw: st.DrawFn, header: dict[str, Any], data: bytes) -> bytes:
    """Edit the decoded header (or the data length) and re-encode with a consistent length prefix."""
    header = json.loads(json.dumps(header))
    name = draw(st.sampled_from(_NAMES))
    kind = draw(st.sampled_from(["none", "dtype", "offset", "offsets", "shape", "metadata", "entry", "data"]))
    event(f"json mutation: {kind}")
    if kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(_CODES + _JUNK_CODES) | _JSON)
    elif kind == "offset":
        header[name]["data_offsets"][draw(st.integers(0, 1))] += draw(st.integers(-12, 12))
    elif kind == "offsets":
        header[name]["data_offsets"] = draw(st.lists(st.integers(-4, 80) | st.integers(2**62, 2**66), max_size=3))
    elif kind == "shape":
        header[name]["shape"] = draw(st.lists(st.integers(-2, 8) | st.integers(2**62, 2**66), max_size=3))
    elif kind == "metadata":
        header["__metadata__"] = draw(_JSON)
    elif kind == "entry":
        header[draw(st.sampled_from([name, "__metadata__", "extra"]))] = draw(_JSON)
    elif kind == "data":
        data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=8))
    return _encode(header, data)


@st.composite
def _corrupted(draw: st.DrawFn, header: dict[str, Any], data: bytes) -> bytes:
    """A JSON-level mutation, then maybe a byte-level one: flips, truncation, a new length prefix."""
    blob = bytearray(draw(_json_mutation(header, data)))
    header_end = 8 + int.from_bytes(blob[:8], "little")
    kind = draw(st.sampled_from(["none", "flip", "flip_data", "truncate", "length", "text"]))
    event(f"byte mutation: {kind}")
    if kind == "flip":  # flip bytes in the length prefix or the header
        for _ in range(draw(st.integers(1, 4))):
            blob[draw(st.integers(0, header_end - 1))] ^= draw(st.integers(1, 255))
    elif kind == "flip_data" and len(blob) > header_end:  # data bytes are opaque: the file still loads
        blob[draw(st.integers(header_end, len(blob) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del blob[draw(st.integers(0, len(blob) - 1)) :]
    elif kind == "length":
        new_length = draw(st.integers(0, len(blob) + 8) | st.integers(0, 2**64 - 1))
        blob[:8] = new_length.to_bytes(8, "little")
    elif kind == "text":  # replace one header character with another printable one
        blob[draw(st.integers(8, header_end - 1))] = ord(draw(st.sampled_from('{}[]",:0123456789 -aF')))
    return bytes(blob)


def _library_load(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        return st_torch.load_file(path)
    except Exception:  # the oracle's verdict only; any failure counts as "refused"
        return None


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    flat_a, flat_b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(flat_a, flat_b)


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corrupt")


_HEADER, _DATA = _valid_parts()


@settings(max_examples=300, deadline=None)
@given(blob=_corrupted(_HEADER, _DATA))
def test_mutated_file_loads_or_raises_format_error(corrupt_dir: Path, blob: bytes) -> None:
    path = corrupt_dir / f"case-{uuid.uuid4().hex}.safetensors"
    path.write_bytes(blob)
    oracle = _library_load(path)
    try:
        ours = sf.load_file(path)
        via_reader = sf.load(path)
    except FormatError as exc:
        event("refused")
        message = str(exc)
        assert str(path) in message and "\n" not in message
        assert oracle is None or any(reason in message for reason in _STRICTER), message  # the library refuses too
        return
    event("loaded")
    assert oracle is not None and list(ours) == list(via_reader) and set(ours) == set(oracle)
    assert all(_same_bits(ours[k], oracle[k]) and _same_bits(via_reader[k], oracle[k]) for k in ours)


# ------------------------------------------------------------------------------------------ named cases


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


_F32_2x3 = _entry("F32", [2, 3], 0, 24)
_NAMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "the file is empty"),
    "short": (b"\x05\x00\x00", "has 3 bytes, fewer than the 8-byte header length"),
    "length_past_end": (
        (100).to_bytes(8, "little") + b"{}",
        "header length 100 runs past the end of the file (10 bytes)",
    ),
    "absurd_length": ((2**63).to_bytes(8, "little") + b"{}", "exceeds the 100000000-byte limit"),
    "not_utf8": ((2).to_bytes(8, "little") + b"\xff\xfe", "the header is not UTF-8"),
    "not_json": ((5).to_bytes(8, "little") + b'{"a":', "the header is not valid JSON"),
    "too_deep": ((100_000).to_bytes(8, "little") + b"[" * 100_000, "the header is not valid JSON"),
    "json_array": ((2).to_bytes(8, "little") + b"[]", "the header is a JSON array, not an object"),
    "duplicate_key": (
        (19).to_bytes(8, "little") + b'{"a":null,"a":null}',
        "duplicate key 'a'",
    ),
    "bad_metadata": (_encode({"__metadata__": {"n": 1}}, b""), "__metadata__ must map strings to strings"),
    "entry_not_object": (_encode({"w": [1, 2]}, b""), "header entry for tensor 'w' is not an object"),
    "unknown_dtype": (_encode({"w": _entry("F33", [2, 3], 0, 24)}, bytes(24)), "unknown or unsupported dtype 'F33'"),
    "bad_shape": (_encode({"w": _entry("F32", [2, -3], 0, 24)}, bytes(24)), "shape [2, -3]"),
    "bad_offsets": (_encode({"w": {**_F32_2x3, "data_offsets": [24, 0]}}, bytes(24)), "data_offsets [24, 0]"),
    "wrong_size": (
        _encode({"w": _entry("F32", [2, 3], 0, 20)}, bytes(20)),
        "(20 bytes) but shape [2, 3] of F32 needs 24",
    ),
    "out_of_bounds": (_encode({"w": _F32_2x3}, bytes(16)), "runs past the end of the data section (16 bytes)"),
    "overlap": (
        _encode({"a": _F32_2x3, "b": _entry("F32", [2], 20, 28)}, bytes(28)),
        "tensor 'b' at data_offsets [20, 28] overlaps the previous tensor, which ends at 24",
    ),
    "gap": (_encode({"w": _entry("F32", [2, 3], 4, 28)}, bytes(28)), "leaves bytes [0, 4) unused"),
    "trailing": (_encode({"w": _F32_2x3}, bytes(30)), "the tensors cover 24 bytes but the data section has 30"),
}


@pytest.mark.parametrize("case", list(_NAMED))
def test_named_corruption(tmp_path: Path, case: str) -> None:
    blob, expected = _NAMED[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(blob)
    for call in (sf.load_file, sf.load, sf.load_metadata, sf.open_checkpoint):
        with pytest.raises(FormatError) as info:
            call(path)
        assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
        assert "\n" not in str(info.value)


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=re.escape(f"{tmp_path}: cannot read the file (Is a directory)")):
        sf.load_file(tmp_path)
    with pytest.raises(FormatError, match=r"nope.safetensors: cannot read the file \(No such file or directory\)"):
        sf.load_file(tmp_path / "nope.safetensors")


def test_file_that_breaks_after_open_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    sf.save_file({"w": torch.ones(4)}, path)
    reader = sf.open_checkpoint(path)  # header validated
    path.write_bytes(b"")  # then the file is truncated behind our back
    with pytest.raises(FormatError, match=re.escape(f"{path}: cannot read tensor 'w' (") + ".*header too small"):
        reader.get_tensor("w")
    reader.close()


def test_library_errors_are_wrapped_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    sf.save_file({"w": torch.ones(4)}, path)

    def broken(*args: object, **kwargs: object) -> None:
        raise SafetensorError("mmap failed:\n  device busy")

    monkeypatch.setattr(sf, "safe_open", broken)
    with pytest.raises(FormatError) as info:
        sf.load_file(path)
    assert str(info.value) == f"{path}: cannot read tensor 'w' (mmap failed: device busy); re-download or re-save it"


# ------------------------------------------------------------------------------------------ indexes


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(4)}  # 400 bytes each, 2 per 800-byte shard
    sf.save(tensors, tmp_path, max_shard_size=800)
    return tmp_path


def _index(folder: Path) -> Path:
    return folder / "model.safetensors.index.json"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "the index is not valid JSON"),
        ("[1, 2]", "the index is a JSON array, not an object"),
        ('{"metadata": {}}', 'the index has no "weight_map" object'),
        ('{"weight_map": {}}', 'the index has no "weight_map" object'),
        ('{"weight_map": {"t0": 5}}', "weight_map maps 't0' to 5, not a file name"),
        ('{"weight_map": {"t0": "../model-00001-of-00002.safetensors"}}', "not a file name in the index's folder"),
        ('{"weight_map": {"t0": "sub\\\\x.safetensors"}}', "not a file name"),
        ('{"weight_map": {"t0": "model-00009-of-00009.safetensors"}}', "shard model-00009-of-00009.safetensors named"),
    ],
)
def test_bad_index(sharded: Path, content: str, expected: str) -> None:
    _index(sharded).write_text(content)
    for call in (sf.load, sf.open_checkpoint, sf.load_metadata):
        with pytest.raises(FormatError) as info:
            call(sharded)
        assert str(info.value).startswith(f"{_index(sharded)}: ") and expected in str(info.value)


def test_missing_shard(sharded: Path) -> None:
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FormatError, match=r"index.json: shard model-00002-of-00002.safetensors named by the index is"):
        sf.load(sharded)


def test_unreadable_index(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(FormatError, match=r"index.json: cannot read the index \(Permission denied\)"):
        sf.open_checkpoint(sharded)


def test_shard_disagrees_with_index(sharded: Path) -> None:
    index = json.loads(_index(sharded).read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    _index(sharded).write_text(json.dumps(index))
    first = sharded / "model-00001-of-00002.safetensors"
    with pytest.raises(
        FormatError, match=re.escape(f"{first}: the index ") + ".* maps tensor 'ghost' to this shard, which lacks it"
    ):
        sf.load(sharded)
    del index["weight_map"]["ghost"]
    del index["weight_map"]["t1"]
    _index(sharded).write_text(json.dumps(index))
    with pytest.raises(
        FormatError, match=re.escape(f"{first}: holds tensor 't1' that the index ") + ".* does not map to it"
    ):
        sf.load(sharded)


def test_corrupt_shard_is_named(sharded: Path) -> None:
    second = sharded / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-1])
    with pytest.raises(
        FormatError,
        match=re.escape(f"{second}: tensor 't3' at data_offsets [400, 800] runs past the end of the data section (799"),
    ):
        sf.load(sharded)
