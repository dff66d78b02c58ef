"""Atomic file writes: readers see the old file or the new one, never half of either.

Every file the project writes for a user (checkpoints, configs, tokenizers, Hub storage) goes
through `atomic_write`: the bytes land in a temporary sibling, are fsynced, then `os.replace`d over
the target. An exception mid-write leaves the previous file untouched and no temp file; a kill
(SIGKILL, power loss) can leave the temp file, ``.<name>.<32 hex digits>.tmp``, which
`remove_temp_files` recognises and removes.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> atomic_write_json(p, {"a": 1})
    >>> p.read_text()
    '{\\n  "a": 1\\n}\\n'
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "remove_temp_files",
    "temp_path",
]

# The temp sibling of ``name``: ``.<name>.<uuid4 hex>.tmp``; `temp_path` makes it, `remove_temp_files` finds it.
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")


def temp_path(target: str | os.PathLike[str]) -> Path:
    """A fresh temp sibling of `target` (``.<name>.<32 hex digits>.tmp``) that `remove_temp_files` recognises."""
    path = Path(target)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(stream)` on a temp file next to `path`, fsync it, then move it over `path`.

    Args:
        path: the file to create or replace; its folder must exist.
        write: writes the whole content to the binary stream it is given.

    Raises:
        Whatever `write` or the file system raises; the temp file is removed and `path` is unchanged.
    """
    target = Path(path)
    tmp = temp_path(target)
    try:
        with tmp.open("xb") as stream:  # created with the default mode, so the umask applies
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace `path` with `text`, UTF-8 encoded."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Atomically replace `path` with `obj` as JSON (UTF-8, non-ASCII kept, trailing newline)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def remove_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files that killed `atomic_write` calls left in `folder` (not in its subfolders).

    Only names `atomic_write` makes are removed (``.<name>.<32 hex digits>.tmp``), so a user's
    ``notes.tmp`` stays. Call it when nothing writes into `folder`, e.g. as a run that owns it starts.

    Args:
        folder: The folder to clean; a missing one holds nothing.

    Returns:
        The files removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    stale = [entry for entry in root.iterdir() if _TEMP_NAME.fullmatch(entry.name) and entry.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
