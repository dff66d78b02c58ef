"""Read GGUF files: metadata, tensor infos, raw tensor bytes and dequantized tensors.

Format spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3, little-endian):

    "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv_count x (string key, u32 type, value)
    | tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    | padding to `general.alignment` (default 32) | tensor data, each tensor at an aligned offset

Strings are a u64 byte length followed by UTF-8 bytes; an array value is a u32 element type, a u64
count and the elements (arrays may nest). Every count and length is checked against the bytes left
in the file before anything is read or allocated, so a corrupt file raises `FormatError` at once
instead of crashing, hanging or allocating memory the file cannot back.

Metadata values become Python values: ints, floats, bools and strs for scalars; a 1-D numpy array
(native byte order, dtype of the GGUF element type, `bool` for bools) for an array of numbers or bools;
a `list` of `str` for an array of strings; a `list` of such values for an array of arrays.

Example:
    >>> with read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf") as gf:  # doctest: +SKIP
    ...     emb = gf.load_tensor("token_embd.weight", torch.bfloat16)
    ...     print(gf.metadata["general.architecture"], gf.tensors["token_embd.weight"].shape, emb.dtype)
    llama (49152, 576) torch.bfloat16
"""

from __future__ import annotations

import difflib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from aprender.errors import FormatError
from aprender.format.gguf_quants import decode, dequantize, ggml_type_name

__all__ = ["GGUFFile", "GGUFTensorInfo", "dequantize", "read_gguf"]

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4
_MAX_ARRAY_DEPTH = 8
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dimension, type, offset
_HEADER_BYTES = 4 + 4 + 8 + 8
_ADVICE = "the file is truncated or corrupt: download or convert it again"

_V = GGUFValueType
_NUMERIC: dict[int, np.dtype] = {
    _V.UINT8: np.dtype("u1"),
    _V.INT8: np.dtype("i1"),
    _V.UINT16: np.dtype("<u2"),
    _V.INT16: np.dtype("<i2"),
    _V.UINT32: np.dtype("<u4"),
    _V.INT32: np.dtype("<i4"),
    _V.FLOAT32: np.dtype("<f4"),
    _V.UINT64: np.dtype("<u8"),
    _V.INT64: np.dtype("<i8"),
    _V.FLOAT64: np.dtype("<f8"),
    _V.BOOL: np.dtype("u1"),  # one byte, 0 or 1
}
# Smallest encoding of one array element of a variable-size type: string = u64 length, array = u32 type + u64 count.
_MIN_ELEMENT_BYTES: dict[int, int] = {_V.STRING: 8, _V.ARRAY: 12}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where a tensor lives in a GGUF file and how it is encoded.

    Attributes:
        name: tensor name, e.g. `"blk.0.attn_q.weight"`.
        shape: row-major (torch) shape, the reverse of GGML's `ne`; `token_embd.weight` is `(n_vocab, n_embd)`.
        ggml_type: a `gguf.GGMLQuantizationType` value.
        type_name: the type's name, e.g. `"Q4_1"`.
        offset: absolute byte offset of the tensor's data in the file.
        n_bytes: size of the tensor's data in bytes.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    n_bytes: int


class _Cursor:
    """Bounds-checked little-endian reads from the file's bytes; every error names the file."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0
        self.size = len(buf)

    def error(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}; {_ADVICE}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.error(f"{what} needs {n} bytes at byte {self.pos}, but only {self.size - self.pos} remain")

    def take(self, n: int, what: str) -> int:
        """Advance past `n` bytes and return where they start."""
        self.need(n, what)
        self.pos += n
        return self.pos - n

    def u32(self, what: str) -> int:
        value: int = struct.unpack_from("<I", self.buf, self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack_from("<Q", self.buf, self.take(8, what))[0]
        return value

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        start = self.take(n, what)
        try:
            return str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"{what} is not valid UTF-8 ({exc.reason} at byte {start + exc.start})") from None

    def numbers(self, vtype: int, count: int, what: str) -> np.ndarray:
        """`count` values of a numeric or bool GGUF type, copied into a native-order array."""
        dtype = _NUMERIC[vtype]
        start = self.take(count * dtype.itemsize, what)
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).astype(dtype.newbyteorder("="))
        if vtype != _V.BOOL:
            return values
        if count and values.max() > 1:
            raise self.error(f"{what} holds a bool byte other than 0 or 1")
        return values.astype(bool)


def _read_value(cur: _Cursor, vtype: int, what: str, depth: int) -> Any:
    """One metadata value of type `vtype` (see the module docstring for the Python types)."""
    if vtype == _V.STRING:
        return cur.string(what)
    if vtype == _V.ARRAY:
        return _read_array(cur, what, depth)
    if vtype in _NUMERIC:
        return cur.numbers(vtype, 1, what)[0].item()
    raise cur.error(f"{what} has unknown value type {vtype} (known: 0 to 12)")


def _read_array(cur: _Cursor, what: str, depth: int) -> Any:
    if depth >= _MAX_ARRAY_DEPTH:
        raise cur.error(f"{what} nests arrays more than {_MAX_ARRAY_DEPTH} levels deep")
    itype = cur.u32(f"element type of {what}")
    count = cur.u64(f"element count of {what}")
    if itype in _NUMERIC:
        return cur.numbers(itype, count, what)
    if itype not in _MIN_ELEMENT_BYTES:
        raise cur.error(f"{what} has unknown element type {itype} (known: 0 to 12)")
    cur.need(count * _MIN_ELEMENT_BYTES[itype], f"{what} with {count} elements")
    return [_read_value(cur, itype, f"{what}[{i}]", depth + 1) for i in range(count)]


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    """Magic, version and the two counts, with the counts checked against the file size."""
    magic = bytes(cur.buf[cur.take(4, "magic") : cur.pos])
    if magic != _MAGIC:
        raise cur.error(f"not a GGUF file (starts with {magic!r}, expected {_MAGIC!r})")
    version = cur.u32("version")
    if version not in _VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        kind = "big-endian GGUF files are not supported" if swapped in _VERSIONS else "unsupported GGUF version"
        raise FormatError(
            f"{cur.path}: {kind} (version field {version}; supported: 2 and 3 little-endian); "
            "convert the model again with a current llama.cpp"
        )
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("metadata count")
    if tensor_count * _MIN_TENSOR_INFO_BYTES > cur.size - cur.pos:
        raise cur.error(f"the header claims {tensor_count} tensors, which cannot fit in a {cur.size}-byte file")
    if kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > cur.size - cur.pos:
        raise cur.error(f"the header claims {kv_count} metadata entries, which cannot fit in a {cur.size}-byte file")
    return version, tensor_count, kv_count


def _read_metadata(cur: _Cursor, count: int) -> tuple[dict[str, Any], dict[str, int]]:
    """`count` key/value pairs -> (values, GGUF value types), both in file order."""
    values: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(count):
        key = cur.string("metadata key")
        if key in values:
            raise cur.error(f"metadata key {key!r} appears twice")
        types[key] = cur.u32(f"value type of metadata key {key!r}")
        values[key] = _read_value(cur, types[key], f"metadata key {key!r}", 0)
    return values, types


def _alignment(cur: _Cursor, metadata: dict[str, Any], types: dict[str, int]) -> int:
    key = "general.alignment"
    if key not in metadata:
        return _DEFAULT_ALIGNMENT
    value = metadata[key]
    if types[key] != _V.UINT32:
        raise cur.error(f"{key} must be a uint32, found value type {types[key]}")
    if value == 0 or value & (value - 1):
        raise cur.error(f"{key} is {value}, but must be a power of two")
    return int(value)


def _read_tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    """One tensor info -> (name, torch-order shape, ggml type, offset relative to the data section)."""
    name = cur.string("tensor name")
    what = f"tensor {name!r}"
    n_dims = cur.u32(f"dimension count of {what}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise cur.error(f"{what} has {n_dims} dimensions; GGUF tensors have 1 to {_MAX_DIMS}")
    ne = cur.numbers(_V.UINT64, n_dims, f"dimensions of {what}").tolist()
    if any(not 1 <= d < 2**63 for d in ne):
        raise cur.error(f"{what} has invalid dimensions {ne} (GGML order); each must be between 1 and 2**63 - 1")
    ggml_type = cur.u32(f"type of {what}")
    if ggml_type not in GGML_QUANT_SIZES:
        raise cur.error(f"{what} has unknown GGML type id {ggml_type}")
    offset = cur.u64(f"data offset of {what}")
    return name, tuple(reversed(ne)), ggml_type, offset


def _locate(cur: _Cursor, raw: tuple[str, tuple[int, ...], int, int], data_start: int, align: int) -> GGUFTensorInfo:
    """Check a tensor's row size, alignment and bounds; return its info with an absolute offset."""
    name, shape, ggml_type, rel_offset = raw
    type_name = GGMLQuantizationType(ggml_type).name
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    if shape[-1] % block_size:
        raise cur.error(f"tensor {name!r} ({type_name}) has rows of {shape[-1]} values, not whole {block_size}-blocks")
    if rel_offset % align:
        raise cur.error(f"tensor {name!r} data offset {rel_offset} is not a multiple of the alignment {align}")
    n_bytes = math.prod(shape) // block_size * type_size
    start = data_start + rel_offset
    if start + n_bytes > cur.size:
        raise cur.error(
            f"tensor {name!r} data (bytes {start} to {start + n_bytes}) runs past the end of the {cur.size}-byte file"
        )
    return GGUFTensorInfo(name, shape, ggml_type, type_name, start, n_bytes)


def _open_map(path: Path) -> np.ndarray:
    """Memory-map the whole file read-only."""
    try:
        size = path.stat().st_size
        if size < _HEADER_BYTES:
            raise FormatError(f"{path}: {size} bytes is too small for a GGUF header; {_ADVICE}")
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as exc:
        raise FormatError(f"{path}: cannot open the GGUF file ({exc.strerror or exc}); check the path") from exc


class GGUFFile:
    """An open GGUF file: parsed metadata and tensor infos over a read-only memory map.

    Use as a context manager (or call `close`). Parsing reads only the header; tensor data is read
    on demand by `raw` and `load_tensor`.

    Attributes:
        path: the file.
        version: GGUF version (2 or 3).
        alignment: data alignment in bytes (`general.alignment`, default 32).
        metadata: key -> value in file order (types in the module docstring).
        tensors: name -> `GGUFTensorInfo` in file order.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open and parse `path`; see `read_gguf`."""
        self.path = Path(path)
        self._map: np.ndarray | None = _open_map(self.path)
        cur = _Cursor(self._map.data, self.path)
        self.version, tensor_count, kv_count = _read_header(cur)
        self.metadata, types = _read_metadata(cur, kv_count)
        self.alignment = _alignment(cur, self.metadata, types)
        raw_infos = [_read_tensor_info(cur) for _ in range(tensor_count)]
        data_start = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for raw in raw_infos:
            if raw[0] in self.tensors:
                raise cur.error(f"tensor {raw[0]!r} appears twice")
            self.tensors[raw[0]] = _locate(cur, raw, data_start, self.alignment)

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, tensors={len(self.tensors)})"

    def _info(self, name: str) -> tuple[GGUFTensorInfo, np.ndarray]:
        if self._map is None:
            raise FormatError(f"{self.path}: the GGUF file is closed; open it again with read_gguf")
        info = self.tensors.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(self.tensors), n=3)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"it has {len(self.tensors)} tensors"
            raise FormatError(f"{self.path}: no tensor named {name!r}; {hint}")
        return info, self._map

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the memory map (no copy).

        Args:
            name: tensor name.

        Returns:
            uint8 array of `tensors[name].n_bytes` bytes, valid even after `close`.

        Raises:
            FormatError: no such tensor, or the file is closed.
        """
        info, mapped = self._info(name)
        return mapped[info.offset : info.offset + info.n_bytes].view(np.ndarray)

    def load_tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode a tensor into a new torch tensor (see `aprender.format.gguf_quants.decode`).

        Args:
            name: tensor name.
            dtype: result dtype. Plain types (F32, F16, BF16, F64, I8..I64) are cast directly from
                their stored values; quantized types are dequantized to float32, then cast.

        Returns:
            Tensor of `tensors[name].shape` and `dtype`.

        Raises:
            FormatError: no such tensor, the file is closed, or the type cannot be dequantized.
        """
        info, _ = self._info(name)
        try:
            return decode(self.raw(name), info.ggml_type, info.shape, dtype)
        except FormatError as exc:
            raise FormatError(f"{self.path}: tensor {name!r} ({ggml_type_name(info.ggml_type)}): {exc}") from exc

    def close(self) -> None:
        """Drop the memory map; arrays returned by `raw` keep their part alive until they are freed."""
        self._map = None


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Open a GGUF file and parse its header, metadata and tensor infos.

    Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md

    Args:
        path: the `.gguf` file.

    Returns:
        An open `GGUFFile`; use it as a context manager or call `close`.

    Raises:
        FormatError: the file cannot be opened, is not GGUF, has an unsupported version, or is corrupt
            (the message names the file and the first problem found).
    """
    return GGUFFile(path)
