"""Safetensors files and Hugging Face sharded checkpoints: save, load and lazy reading.

File layout (spec: https://github.com/huggingface/safetensors#format): an 8-byte little-endian
header length N, N bytes of UTF-8 JSON ``{"__metadata__": {str: str}, name: {"dtype": "F32",
"shape": [...], "data_offsets": [begin, end]}}``, then the data section, in which each tensor is a
row-major little-endian run of bytes ``[begin, end)`` and the runs tile the section exactly.

Sharded checkpoints use the layout transformers writes and reads
(https://huggingface.co/docs/transformers/big_models): ``model-00001-of-00003.safetensors`` ...
plus ``model.safetensors.index.json`` = ``{"metadata": {"total_size": N}, "weight_map": {name: shard}}``.

Writing is done here, one tensor at a time (no second copy of the model in memory), into a temp
file that replaces the target atomically. `CheckpointWriter` streams a checkpoint: it holds one
shard in memory and gives the files their final names only when finalized; `save` feeds it a whole
dict. Reading validates every header here first, then hands the file to ``safetensors.safe_open``
(mmap: one tensor is read without reading the rest). Any problem with a file surfaces as
`FormatError` naming the file.

Example:
    >>> save({"w": torch.ones(2, 3)}, "out", max_shard_size="5GB")  # doctest: +SKIP
    [PosixPath('out/model.safetensors')]
    >>> load("out")["w"].shape  # doctest: +SKIP
    torch.Size([2, 3])
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeGuard

import torch
from safetensors import SafetensorError, safe_open

from aprender.atomic import atomic_write, atomic_write_json, temp_path
from aprender.errors import AprenderError, FormatError, InvalidArgumentError

__all__ = [
    "CheckpointReader",
    "CheckpointWriter",
    "load",
    "load_file",
    "load_metadata",
    "open_checkpoint",
    "parse_size",
    "save",
    "save_file",
]

_MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too
_MAX_DIM = 2**63 - 1
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "C64": torch.complex64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in _DTYPES.items()}
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SHARD_RE = re.compile(r".+-\d{5}-of-\d{5}\.safetensors")
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
# What safe_open and get_tensor raise on a file that changed or broke after validation.
_LIB_ERRORS = (SafetensorError, OSError, RuntimeError, ValueError)


@dataclass(frozen=True)
class _Entry:
    """One tensor's header entry, validated: `begin`/`end` are offsets into the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class _Header:
    metadata: dict[str, str]
    entries: dict[str, _Entry]


class _DuplicateKeyError(ValueError):
    pass


def parse_size(size: int | str) -> int:
    """Turn a byte count or a size string into bytes, as transformers' `max_shard_size` does.

    Decimal units are powers of 10 (``"5GB"`` = 5 * 10**9), binary units powers of 2
    (``"2GiB"`` = 2 * 2**30). Unit letters are case-insensitive, except that a decimal unit must
    end in a capital ``B`` (transformers reads ``"5Gb"`` as gigabits, so it is refused). A bare
    number means bytes; a fractional result is truncated to whole bytes.

    Args:
        size: A positive int of bytes, or a string like ``"500MB"``, ``"5GB"``, ``"1.5GiB"``.

    Returns:
        The size in bytes (> 0).

    Raises:
        InvalidArgumentError: `size` is not an int or str, cannot be parsed, or is not positive.
    """
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise InvalidArgumentError(f"size {size!r}: expected an int of bytes or a string like '500MB', '5GB', '2GiB'")
    value = size if isinstance(size, int) else _parse_size_text(size)
    if value <= 0:
        raise InvalidArgumentError(f"size {size!r} is not positive; give at least one byte, e.g. '500MB'")
    return value


def _parse_size_text(text: str) -> int:
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2) if match else ""
    if match is None or unit.upper() not in _SIZE_UNITS:
        raise InvalidArgumentError(
            f"size {text!r} is not a size; use a number with a unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB, "
            "e.g. '500MB' or '2GiB'"
        )
    if unit.endswith("b") and "I" not in unit.upper():
        # transformers' convert_file_size_to_int reads '5Gb' as gigabits; refuse rather than guess.
        raise InvalidArgumentError(f"size {text!r} is ambiguous (a lowercase 'b' can mean bits); write {unit[:-1]}B")
    return int(Decimal(match.group(1)) * _SIZE_UNITS[unit.upper()])


# --------------------------------------------------------------------------------------------- writing


def save_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to one safetensors file, atomically.

    The file appears complete or not at all: it is written to a temp file in the same folder and
    moved over `path` with `os.replace`; on any error the previous file is left untouched.
    Tensors are laid out by decreasing element size so each one is aligned for mmap; the header
    keeps the mapping's order. Non-contiguous tensors and tensors on any device are accepted.
    Tensors that share storage (tied weights, views of one buffer) are each written as their own
    copy, so every name loads back; re-tie them after loading if the model needs it.

    Args:
        tensors: Name -> tensor of any shape and a supported dtype (float64/32/16, bfloat16,
            float8 e4m3fn/e4m3fnuz/e5m2/e5m2fnuz/e8m0fnu, complex64, int8-64, uint8-64, bool).
        path: Target file; its folder must exist.
        metadata: Optional string -> string annotations stored as ``__metadata__``.

    Raises:
        InvalidArgumentError: A name, tensor, dtype or metadata entry cannot be stored.
        OSError: The folder is missing or not writable.
    """
    header, ordered = _plan_file(tensors, metadata)

    def write(stream: IO[bytes]) -> None:
        stream.write(header)
        for tensor in ordered:
            _write_tensor(stream, tensor)

    atomic_write(path, write)


def save(
    tensors: Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
    prefix: str = "model",
) -> list[Path]:
    """Write tensors in the Hugging Face layout, sharded when they exceed `max_shard_size`.

    The tensors go through a `CheckpointWriter` in the mapping's order (see it for the shard rule,
    the file names, the index and the removal of an earlier save's files). Everything is checked
    before anything is written.

    Args:
        tensors: Name -> tensor, as for `save_file`.
        folder: Output folder; created if missing.
        max_shard_size: Largest data size per shard, bytes or a string such as ``"500MB"``.
        metadata: Extra string annotations stored in every file (may override ``format``).
        prefix: File name stem, e.g. ``"model"`` or ``"adapter_model"``.

    Returns:
        The files written: the shards in order, then the index when sharded.

    Raises:
        InvalidArgumentError: Bad `max_shard_size`, `prefix`, tensor or metadata.
        OSError: The folder cannot be written.
    """
    _check_tensors(tensors)  # before the writer creates the folder
    with CheckpointWriter(folder, max_shard_size=max_shard_size, metadata=metadata, prefix=prefix) as writer:
        for name, tensor in tensors.items():
            writer.save_tensor(name, tensor)
        return writer.finalize()


class CheckpointWriter:
    """Write a Hugging Face checkpoint tensor by tensor, holding at most one shard in memory.

    Modelled on mergekit's ``TensorWriter``: `save_tensor` appends to the current shard, which is
    written to a temp file in the folder (and dropped from memory) when the next tensor would push
    its data past `max_shard_size`; a tensor larger than the limit gets a shard of its own
    (transformers' rule). `finalize` writes the last shard and the index, then renames everything
    to its final name: one shard is ``{prefix}.safetensors``, several are
    ``{prefix}-00001-of-0000N.safetensors`` plus ``{prefix}.safetensors.index.json``
    (``{"metadata": {"total_size": data bytes}, "weight_map": {name: shard}}``). Files of the same
    prefix left by an earlier save are then removed, so the folder never mixes two saves. Every
    file carries ``{"format": "pt"}`` plus `metadata`.

    Until `finalize` no file has a final name, so a failure leaves the folder's previous model as it
    was. As a context manager it finalizes on a clean exit and removes its temp files on an
    exception; temp files a killed process leaves are the ones `aprender.atomic.remove_temp_files`
    removes.

    Example:
        >>> with CheckpointWriter("out", max_shard_size="2GB") as writer:  # doctest: +SKIP
        ...     for name in reader.keys():
        ...         writer.save_tensor(name, reader.get_tensor(name))
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        max_shard_size: int | str = "5GB",
        metadata: dict[str, str] | None = None,
        prefix: str = "model",
    ) -> None:
        """Check the settings and create `folder` if missing.

        Args:
            folder: Output folder.
            max_shard_size: Largest data size per shard, bytes or a string such as ``"500MB"``.
            metadata: Extra string annotations stored in every file (may override ``format``).
            prefix: File name stem, e.g. ``"model"`` or ``"adapter_model"``.

        Raises:
            InvalidArgumentError: Bad `max_shard_size`, `prefix` or metadata.
            OSError: The folder cannot be created.
        """
        self._limit = parse_size(max_shard_size)
        if not prefix or prefix != Path(prefix).name or prefix in {".", ".."}:
            raise InvalidArgumentError(f"prefix {prefix!r} must be a plain file name stem such as 'model'")
        self._metadata = {"format": "pt", **_checked_metadata(metadata)}
        self._folder = Path(folder)
        self._prefix = prefix
        self._folder.mkdir(parents=True, exist_ok=True)
        self._current: dict[str, torch.Tensor] = {}
        self._current_size = 0
        self._shards: list[list[str]] = []  # the tensor names of each shard written
        self._temps: list[Path] = []  # the temp files written: the shards in order, then the index
        self._names: set[str] = set()
        self._total_size = 0
        self._closed = False

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self._discard()

    def save_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Add one tensor; the current shard is written first when `tensor` would overflow it.

        The writer keeps a reference to `tensor` until its shard is written; do not modify it in place.

        Args:
            name: The tensor's name in the checkpoint (each name once).
            tensor: Any tensor `save_file` accepts.

        Raises:
            InvalidArgumentError: A repeated or bad name, or a tensor that cannot be stored.
            AprenderError: The writer is already finalized or discarded.
            OSError: Writing the full shard failed (the writer is discarded: its temp files are removed).
        """
        self._check_open()
        _check_tensors({name: tensor})
        if name in self._names:
            raise InvalidArgumentError(f"tensor {name!r} was already saved; each name is written once")
        size = _nbytes(tensor)
        if self._current and self._current_size + size > self._limit:
            self._write_shard()
        self._current[name] = tensor
        self._current_size += size
        self._total_size += size
        self._names.add(name)

    def finalize(self) -> list[Path]:
        """Write the last shard and the index, move every file to its final name, remove stale files.

        Returns:
            The files written: the shards in order, then the index when sharded.

        Raises:
            AprenderError: The writer is already finalized or discarded.
            OSError: A write failed; the temp files are removed and no file was renamed (every write
                happens before the first rename).
        """
        self._check_open()
        try:
            if self._current or not self._shards:
                self._write_shard()
            moves = self._final_names()
            for temp, final in moves:
                os.replace(temp, final)
        except BaseException:
            self._discard()
            raise
        self._closed = True
        written = [final for _, final in moves]
        _remove_stale(self._folder, self._prefix, keep={path.name for path in written})
        return written

    def _write_shard(self) -> None:
        """Write the buffered tensors to a temp file and drop them; on failure, discard the writer."""
        temp = temp_path(self._folder / f"{self._prefix}-{len(self._shards) + 1:05d}.safetensors")
        try:
            save_file(self._current, temp, self._metadata)
        except BaseException:
            self._discard()
            raise
        self._temps.append(temp)
        self._shards.append(list(self._current))
        self._current, self._current_size = {}, 0

    def _final_names(self) -> list[tuple[Path, Path]]:
        """(temp, final) for every shard, plus the index (written to a temp file here) when sharded."""
        count = len(self._shards)
        if count == 1:
            return [(self._temps[0], self._folder / f"{self._prefix}.safetensors")]
        moves: list[tuple[Path, Path]] = []
        weight_map: dict[str, str] = {}
        for number, (temp, names) in enumerate(zip(self._temps, self._shards, strict=True), start=1):
            final = self._folder / f"{self._prefix}-{number:05d}-of-{count:05d}.safetensors"
            weight_map.update(dict.fromkeys(names, final.name))
            moves.append((temp, final))
        index = self._folder / f"{self._prefix}.safetensors.index.json"
        self._temps.append(temp_path(index))
        atomic_write_json(self._temps[-1], {"metadata": {"total_size": self._total_size}, "weight_map": weight_map})
        return [*moves, (self._temps[-1], index)]

    def _discard(self) -> None:
        """Drop the buffered shard and remove every temp file written so far."""
        self._closed = True
        self._current = {}
        for temp in self._temps:
            temp.unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self._closed:
            raise AprenderError(f"{self._folder}: this checkpoint writer is finalized or discarded; open a new one")


def _plan_file(
    tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None
) -> tuple[bytes, list[torch.Tensor]]:
    """Build the header bytes (length prefix included) and the order the tensor data follows it."""
    header: dict[str, Any] = {}
    if metadata_checked := _checked_metadata(metadata):
        header["__metadata__"] = metadata_checked
    _check_tensors(tensors)
    order = sorted(tensors, key=lambda name: -tensors[name].element_size())  # stable: mapping order per size
    offsets: dict[str, list[int]] = {}
    position = 0
    for name in order:
        size = _nbytes(tensors[name])
        offsets[name] = [position, position + size]
        position += size
    for name, tensor in tensors.items():
        header[name] = {"dtype": _CODES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": offsets[name]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw, [tensors[name] for name in order]


def _checked_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgumentError(f"metadata {metadata!r} must be a dict of str to str; convert values with str()")
    return dict(metadata)


def _check_tensors(tensors: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of name to torch.Tensor, got {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise InvalidArgumentError(f"tensor name {name!r} is not allowed; use a str other than '__metadata__'")
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in _CODES:
            raise InvalidArgumentError(
                f"tensor {name!r} has dtype {tensor.dtype} which safetensors cannot store; convert it with .to()"
            )
        if tensor.layout != torch.strided or tensor.device.type == "meta":
            raise InvalidArgumentError(
                f"tensor {name!r} ({tensor.layout}, {tensor.device}) has no dense data; pass a dense tensor with data"
            )


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _write_tensor(stream: IO[bytes], tensor: torch.Tensor) -> None:
    """Append one tensor's bytes: row-major, little-endian (the host order on every torch platform)."""
    data = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    stream.write(data.reshape(-1).view(torch.uint8).numpy().data)


def _remove_stale(folder: Path, prefix: str, keep: set[str]) -> None:
    """Delete `prefix` single files, shards and indexes that the save just made did not write."""
    pattern = re.compile(rf"{re.escape(prefix)}(-\d{{5}}-of-\d{{5}})?\.safetensors(\.index\.json)?")
    for entry in folder.iterdir():
        if entry.name not in keep and pattern.fullmatch(entry.name) and entry.is_file():
            entry.unlink()


# --------------------------------------------------------------------------------------------- reading


def _read_header(path: Path) -> _Header:
    """Read and fully validate a safetensors header without touching the data section."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            length = _header_length(path, stream.read(8), size)
            raw = stream.read(length)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the file ({exc.strerror or exc}); check the path") from exc
    header = _decode_json(path, raw, "the header")
    metadata = _parse_metadata(path, header.pop("__metadata__", None))
    entries = {name: _parse_entry(path, name, info) for name, info in header.items()}
    _check_layout(path, entries, size - 8 - length)
    return _Header(metadata, entries)


def _header_length(path: Path, prefix: bytes, size: int) -> int:
    if size == 0:
        raise FormatError(f"{path}: the file is empty; re-download or re-save it")
    if size < 8:
        raise FormatError(f"{path}: the file has {size} bytes, fewer than the 8-byte header length; it is truncated")
    length = int.from_bytes(prefix, "little")
    if length > _MAX_HEADER_BYTES:
        raise FormatError(
            f"{path}: header length {length} exceeds the {_MAX_HEADER_BYTES}-byte limit; not safetensors or corrupt"
        )
    if length > size - 8:
        raise FormatError(
            f"{path}: header length {length} runs past the end of the file ({size} bytes); "
            "it is truncated or not a safetensors file"
        )
    return length


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKeyError(f"duplicate key {key!r}")
        seen.add(key)
    return dict(pairs)


def _decode_json(path: Path, raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start}); it is corrupt"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: {what} is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{path}: {what} is a JSON {_JSON_TYPES[type(value)]}, not an object; the file is corrupt")
    return value


def _parse_metadata(path: Path, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{path}: __metadata__ must map strings to strings; re-save the file")
    return value


def _is_int_list(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _parse_entry(path: Path, name: str, info: Any) -> _Entry:
    if not isinstance(info, dict):
        raise FormatError(f"{path}: header entry for tensor {name!r} is not an object; the file is corrupt")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str) or code not in _DTYPES:
        raise FormatError(
            f"{path}: tensor {name!r} has unknown or unsupported dtype {code!r}; supported: {', '.join(_DTYPES)}"
        )
    if not _is_int_list(shape) or not all(0 <= d <= _MAX_DIM for d in shape):
        raise FormatError(f"{path}: tensor {name!r} has shape {shape!r}, not a list of non-negative ints")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise FormatError(
            f"{path}: tensor {name!r} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end"
        )
    dtype = _DTYPES[code]
    needed = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != needed:
        raise FormatError(
            f"{path}: tensor {name!r} has data_offsets {offsets} ({offsets[1] - offsets[0]} bytes) but shape {shape} "
            f"of {code} needs {needed} bytes; the header is corrupt"
        )
    return _Entry(dtype, tuple(shape), offsets[0], offsets[1])


def _check_layout(path: Path, entries: dict[str, _Entry], data_size: int) -> None:
    """The tensors must tile the data section exactly: no overlap, no gap, nothing past the end."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        where = f"{path}: tensor {name!r} at data_offsets [{entry.begin}, {entry.end}]"
        if entry.end > data_size:
            raise FormatError(f"{where} runs past the end of the data section ({data_size} bytes); it is truncated")
        if entry.begin < position:
            raise FormatError(f"{where} overlaps the previous tensor, which ends at {position}; the header is corrupt")
        if entry.begin > position:
            raise FormatError(f"{where} leaves bytes [{position}, {entry.begin}) unused; the header is corrupt")
        position = entry.end
    if position != data_size:
        raise FormatError(
            f"{path}: the tensors cover {position} bytes but the data section has {data_size}; "
            "the file has trailing bytes or a corrupt header"
        )


class _Shard:
    """One validated safetensors file; the `safe_open` handle (an mmap) is opened on first read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = _read_header(path)
        self._handle: Any = None

    def get_tensor(self, name: str) -> torch.Tensor:
        try:
            if self._handle is None:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            tensor: torch.Tensor = self._handle.get_tensor(name)
        except _LIB_ERRORS as exc:
            detail = " ".join(str(exc).split())
            raise FormatError(
                f"{self.path}: cannot read tensor {name!r} ({detail}); re-download or re-save it"
            ) from exc
        return tensor

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None


class CheckpointReader:
    """Lazy access to a safetensors file or a sharded checkpoint; use `open_checkpoint` to get one.

    Nothing but the index (sharded) or the header (single file) is read when it opens. A shard's
    header is read and checked against the index the first time one of its tensors is asked for,
    and `get_tensor` reads that tensor alone through an mmap. Tensors returned stay valid after
    `close`.
    """

    def __init__(self, source: Path, weight_map: Mapping[str, Path], opened: Iterable[_Shard] = ()) -> None:
        """Use `open_checkpoint`.

        Args:
            source: The file or index the checkpoint was opened from (named in errors).
            weight_map: Tensor name -> the file holding it.
            opened: Files whose headers are already validated (the single file).
        """
        self._source = source
        self._weight_map = dict(weight_map)
        self._shards = {shard.path: shard for shard in opened}
        self._files = list(dict.fromkeys([*self._shards, *self._weight_map.values()]))
        self._closed = False

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the file, or of the first shard of a sharded checkpoint."""
        return dict(self._shard(self._files[0]).header.metadata)

    def keys(self) -> list[str]:
        """Tensor names in file order (single file) or index order (sharded)."""
        self._check_open()
        return list(self._weight_map)

    def __contains__(self, name: object) -> bool:
        """Whether the checkpoint holds a tensor of that name."""
        self._check_open()
        return name in self._weight_map

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU) without reading the others."""
        return self._shard(self._file_of(name)).get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, from the header only."""
        return self._shard(self._file_of(name)).header.entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's dtype, from the header only."""
        return self._shard(self._file_of(name)).header.entries[name].dtype

    def close(self) -> None:
        """Release the open files; calling it twice is harmless."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise AprenderError(f"{self._source}: this checkpoint reader is closed; open it again with open_checkpoint")

    def _file_of(self, name: str) -> Path:
        self._check_open()
        if name not in self._weight_map:
            raise FormatError(f"{self._source}: the checkpoint has no tensor {name!r}; list the names with keys()")
        return self._weight_map[name]

    def _shard(self, path: Path) -> _Shard:
        self._check_open()
        shard = self._shards.get(path)
        if shard is None:
            shard = _Shard(path)
            self._check_agrees(shard)
            self._shards[path] = shard
        return shard

    def _check_agrees(self, shard: _Shard) -> None:
        """A shard must hold exactly the tensors the index assigns to it."""
        expected = [name for name, path in self._weight_map.items() if path == shard.path]
        missing = [name for name in expected if name not in shard.header.entries]
        if missing:
            raise FormatError(
                f"{shard.path}: the index {self._source} maps tensor {missing[0]!r} to this shard, which lacks it; "
                "re-save the checkpoint"
            )
        extra = sorted(set(shard.header.entries) - set(expected))
        if extra:
            raise FormatError(
                f"{shard.path}: holds tensor {extra[0]!r} that the index {self._source} does not map to it; "
                "the folder mixes two saves, re-save the checkpoint"
            )


def open_checkpoint(folder_or_file: str | os.PathLike[str]) -> CheckpointReader:
    """Open a safetensors file, an index, or a folder holding one checkpoint, for lazy reading.

    A folder resolves like transformers does: ``model.safetensors``, else
    ``model.safetensors.index.json``, else its only ``*.safetensors.index.json`` or non-shard
    ``*.safetensors`` file. For a sharded checkpoint every shard the index names must exist;
    their contents are read only when used.

    Args:
        folder_or_file: A ``.safetensors`` file, a ``.safetensors.index.json`` index, or a folder.

    Returns:
        A `CheckpointReader` (a context manager).

    Raises:
        FormatError: Nothing to load, an ambiguous folder, a corrupt file or index, a missing shard.
    """
    source = _resolve(Path(folder_or_file))
    if source.name.endswith(".index.json"):
        return CheckpointReader(source, _read_index(source))
    shard = _Shard(source)
    return CheckpointReader(source, dict.fromkeys(shard.header.entries, source), opened=[shard])


def load_file(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of one safetensors file.

    Args:
        path: The ``.safetensors`` file.
        device: Where to put the tensors (``"cpu"``, ``"cuda:0"``, a `torch.device`, ...).

    Returns:
        Name -> tensor in file order, dtypes and bits exactly as stored.

    Raises:
        FormatError: The file is missing, truncated or corrupt.
        InvalidArgumentError: `device` is not a torch device.
    """
    target = _device(device)
    shard = _Shard(Path(path))
    try:
        return {name: shard.get_tensor(name).to(target) for name in shard.header.entries}
    finally:
        shard.close()


def load(folder_or_file: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a whole checkpoint: one file, a folder with one file, or a sharded folder or index.

    Args:
        folder_or_file: As for `open_checkpoint`.
        device: Where to put the tensors.

    Returns:
        Name -> tensor, in the order they were saved.

    Raises:
        FormatError: As for `open_checkpoint`, or a shard disagrees with the index.
        InvalidArgumentError: `device` is not a torch device.
    """
    target = _device(device)
    with open_checkpoint(folder_or_file) as reader:
        names = reader.keys()
        return {name: reader.get_tensor(name).to(target) for name in names}


def load_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read the ``__metadata__`` strings of a file (or of the first shard) without loading tensors.

    Args:
        path: As for `open_checkpoint`.

    Returns:
        The metadata dict (empty when the file has none).

    Raises:
        FormatError: As for `open_checkpoint`.
    """
    with open_checkpoint(path) as reader:
        return reader.metadata


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"device {device!r} is not a torch device ({exc}); use e.g. 'cpu' or 'cuda:0'"
        ) from exc


def _resolve(path: Path) -> Path:
    if path.is_dir():
        return _pick_in_folder(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder; check the path")
    return path


def _pick_in_folder(folder: Path) -> Path:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return folder / name
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    files = sorted(p for p in folder.glob("*.safetensors") if not _SHARD_RE.fullmatch(p.name))
    candidates = indexes + files
    if not candidates:
        raise FormatError(f"{folder}: the folder has no .safetensors file or .safetensors.index.json index")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise FormatError(f"{folder}: the folder holds several checkpoints ({names}); pass the file or index to load")
    return candidates[0]


def _read_index(path: Path) -> dict[str, Path]:
    """Parse a ``*.safetensors.index.json``: tensor name -> shard path; every shard must exist."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the index ({exc.strerror or exc}); check the path") from exc
    weight_map = _decode_json(path, raw, "the index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(f'{path}: the index has no "weight_map" object naming each tensor\'s shard; re-save it')
    result: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or shard in {"", ".", ".."} or Path(shard).name != shard or "\\" in shard:
            raise FormatError(f"{path}: weight_map maps {name!r} to {shard!r}, not a file name in the index's folder")
        result[name] = path.parent / shard
    missing = sorted({p.name for p in result.values() if not p.is_file()})
    if missing:
        raise FormatError(
            f"{path}: shard {missing[0]} named by the index is missing from {path.parent}; re-download or re-save it"
        )
    return result
