"""Find data files and read their records: JSON Lines, JSON arrays, Parquet and plain text.

What a path may be (`resolve_data_files`):

- a file with a supported suffix;
- a directory: every supported file below it, recursively, sorted by relative path; files with other
  suffixes (a README.md) and hidden files or folders (names starting with ".") are left out;
- a glob (`data/*.jsonl`, `data/**/*.parquet`; `**` spans folders): the matching files, sorted; a
  match with an unsupported suffix is an error, since the pattern named it on purpose.

Suffixes and how each file becomes records (dicts):

| suffix | records | a record's location |
|---|---|---|
| `.jsonl`, `.ndjson` | one JSON object per line; blank lines are skipped | `file:LINE` |
| `.json` | a JSON array of objects when the file starts with `[`, else JSON Lines | `file item N` / `file:LINE` |
| `.parquet` | one row per record, columns as keys (nested lists/structs become lists/dicts) | `file row N` |
| `.txt` | `{"text": ...}`; see below | `file:LINE` (first line) |

Plain text is split into paragraphs: each block of non-blank lines is one document (blocks are
separated by one or more blank or whitespace-only lines), so a long text file becomes many samples
rather than one truncated one. Files are UTF-8 (a leading byte-order mark is dropped). JSON Lines
specification: https://jsonlines.org/.

A line that is not valid UTF-8 or JSON, or is not an object, becomes a `RawRecord` with `error` set,
so the caller decides whether to stop or skip it. Problems that concern a whole file (unreadable
Parquet, a broken JSON array, a text file that is not UTF-8) raise `DataError` at once.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from entrenar.errors import DataError

SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "txt",
}
_GLOB_CHARS = frozenset("*?[")
_PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Location:
    """Where a record comes from: a file and a 1-based line, Parquet row or JSON-array item."""

    path: str
    index: int
    unit: Literal["line", "row", "item"] = "line"

    def __str__(self) -> str:
        return f"{self.path}:{self.index}" if self.unit == "line" else f"{self.path} {self.unit} {self.index}"


@dataclass(frozen=True)
class RawRecord:
    """One record as read: its fields, or why it could not be read (`data` is None then)."""

    location: Location
    data: dict[str, Any] | None
    error: str | None = None


def _supported(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def _directory_files(folder: Path) -> list[Path]:
    found = []
    for file in folder.rglob("*"):
        relative = file.relative_to(folder)
        if file.is_file() and _supported(file) and not any(part.startswith(".") for part in relative.parts):
            found.append(file)
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())


def _glob_files(pattern: str) -> list[Path]:
    files = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if Path(match).is_file())
    for file in files:
        if not _supported(file):
            raise DataError(
                f"{file}: matched by {pattern!r} but {file.suffix or 'no suffix'} is not a data format; "
                f"use {', '.join(SUFFIXES)} files or narrow the pattern"
            )
    return files


def resolve_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The data files a path names: a file, a directory (recursive) or a glob, in a fixed order.

    Args:
        path: a file, a directory or a glob pattern.

    Returns:
        The files, sorted (by relative path for a directory).

    Raises:
        DataError: nothing exists at the path, a file has an unsupported suffix, or no data file is found.
    """
    text = os.fspath(path)
    target = Path(text)
    supported = ", ".join(SUFFIXES)
    if target.is_file():
        if not _supported(target):
            raise DataError(f"{target}: {target.suffix or 'no suffix'} is not a data format; use {supported}")
        return [target]
    if target.is_dir():
        files = _directory_files(target)
    elif _GLOB_CHARS.intersection(text):
        files = _glob_files(text)
    else:
        raise DataError(f"{text}: no such file or directory; check the data path")
    if not files:
        raise DataError(f"{text}: no data files ({supported}) found; check the data path")
    return files


def read_records(files: Sequence[Path]) -> Iterator[RawRecord]:
    """Records of each file in turn (see the module docstring for each suffix).

    Args:
        files: data files, e.g. from `resolve_data_files`.

    Yields:
        One `RawRecord` per record, in file order.

    Raises:
        DataError: a whole file is unreadable (see the module docstring).
    """
    for file in files:
        kind = SUFFIXES.get(file.suffix.lower())
        if kind == "parquet":
            yield from _read_parquet(file)
        elif kind == "txt":
            yield from _read_text(file)
        elif kind == "json" and _starts_with_bracket(file):
            yield from _read_json_array(file)
        elif kind in ("json", "jsonl"):
            yield from _read_json_lines(file)
        else:
            raise DataError(f"{file}: {file.suffix or 'no suffix'} is not a data format; use {', '.join(SUFFIXES)}")


def _as_record(location: Location, value: Any) -> RawRecord:
    if isinstance(value, dict):
        return RawRecord(location, value)
    return RawRecord(location, None, f"a JSON {type(value).__name__} where an object {{...}} was expected")


def _read_json_lines(file: Path) -> Iterator[RawRecord]:
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            location = Location(str(file), number)
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield RawRecord(location, None, f"not UTF-8 text ({err.reason} at byte {err.start})")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                yield RawRecord(location, None, f"invalid JSON ({err.msg} at column {err.colno})")
                continue
            yield _as_record(location, value)


def _read_text_file(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{file}:{line}: not UTF-8 text ({err.reason}); convert the file to UTF-8") from err


def _starts_with_bracket(file: Path) -> bool:
    with file.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _read_json_array(file: Path) -> Iterator[RawRecord]:
    try:
        items = json.loads(_read_text_file(file))
    except json.JSONDecodeError as err:
        raise DataError(f"{file}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno}); fix the file") from err
    for number, value in enumerate(items, start=1):
        yield _as_record(Location(str(file), number, "item"), value)


def _read_parquet(file: Path) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{file}: not a readable Parquet file ({err}); check or rewrite the file") from err
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for values in batch.to_pylist():
            row += 1
            yield RawRecord(Location(str(file), row, "row"), values)


def _read_text(file: Path) -> Iterator[RawRecord]:
    content = _read_text_file(file)
    block: list[str] = []
    start = 0
    for number, full_line in enumerate(content.split("\n"), start=1):
        line = full_line.removesuffix("\r")
        if line.strip():
            start = start if block else number
            block.append(line)
        elif block:
            yield RawRecord(Location(str(file), start), {"text": "\n".join(block)})
            block = []
    if block:
        yield RawRecord(Location(str(file), start), {"text": "\n".join(block)})
