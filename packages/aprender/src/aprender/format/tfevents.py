"""TensorBoard event files, written by hand: scalars without a tensorboard or protobuf dependency.

An event file is a TFRecord file of serialized ``Event`` protobufs. Each record is::

    uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes | data | uint32 masked CRC32C of data

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 (mod 2**32)`` (tensorboard
``summary/writer/record_writer.py`` and ``compat/tensorflow_stub/pywrap_tensorflow.py``). CRC32C is the
Castagnoli CRC (reflected polynomial 0x82F63B78; RFC 3720, appendix B.4).

The messages written (tensorflow ``core/util/event.proto`` and ``core/framework/summary.proto``)::

    Event      {double wall_time = 1; int64 step = 2;
                oneof what {string file_version = 3; Summary summary = 5; SessionLog session_log = 7}}
    Summary    {repeated Value value = 1}
    Value      {string tag = 1; oneof value {float simple_value = 2}}
    SessionLog {SessionStatus status = 1}   # START = 1

They are encoded as protobuf itself encodes them (fields in number order, proto3 zeros left out), so
``Event.FromString(record).SerializeToString() == record``. A file starts with an Event holding
``file_version = "brain.Event:2"``, and is named as tensorboard's ``EventFileWriter`` names it:
``events.out.tfevents.{time:010d}.{hostname}.{pid}.{uid}{filename_suffix}``. TensorBoard reads every
event file in a folder, in name order, so a resumed run opens a new file beside the old ones.

Example:
    >>> with EventWriter("output/tensorboard") as writer:  # doctest: +SKIP
    ...     writer.add_scalars({"train/loss": 2.31, "train/lr": 2e-4}, step=10)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import SupportsFloat, SupportsIndex

from aprender.errors import AprenderError, InvalidArgumentError

__all__ = ["EventWriter", "crc32c", "masked_crc32c"]

_FILE_VERSION = "brain.Event:2"
_MAX_STEP = 2**63 - 1  # int64
_SESSION_LOG_START = b"\x08\x01"  # SessionLog {status: START}
_UIDS = itertools.count()  # tells apart the files one process opens in the same second, as tensorboard does


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, one table lookup per byte.

    Args:
        data: The bytes to check.

    Returns:
        The checksum as an unsigned 32-bit int, e.g. ``crc32c(b"123456789") == 0xE3069283``.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC32C as TFRecord stores it: rotated right by 15 bits, plus a constant.

    The mask keeps data that holds its own CRC from checksumming to a fixed value.

    Args:
        data: The bytes to check.

    Returns:
        The masked checksum as an unsigned 32-bit int.
    """
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite but beyond float32: protobuf and a C cast give inf
        return struct.pack("<f", math.copysign(math.inf, value))


def _event(wall_time: float, step: int, what: bytes) -> bytes:
    """One serialized Event; ``what`` is its encoded oneof field."""
    wall = struct.pack("<d", wall_time)
    head = b"\x09" + wall if wall != bytes(8) else b""  # proto3 leaves out +0.0 (but not -0.0)
    if step:
        head += b"\x10" + _varint(step)
    return head + what


def _scalar_value(tag: str, value: SupportsFloat) -> bytes:
    """One encoded ``Summary.value`` entry (field 1 of Summary)."""
    tag_field = _length_delimited(1, _check_tag(tag))
    return _length_delimited(1, tag_field + b"\x15" + _float32(_check_value(tag, value)))


def _check_tag(tag: object) -> bytes:
    if not isinstance(tag, str) or not tag:
        raise InvalidArgumentError(f"scalar tag {tag!r} must be a non-empty str such as 'train/loss'")
    try:
        return tag.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"scalar tag {tag!r} is not valid Unicode text ({exc.reason})") from None


def _check_value(tag: str, value: object) -> float:
    if not isinstance(value, SupportsFloat):
        raise InvalidArgumentError(f"scalar {tag!r}: value {value!r} is not a number")
    return float(value)


def _check_step(step: object) -> int:
    number = -1
    if isinstance(step, SupportsIndex) and not isinstance(step, bool):
        with contextlib.suppress(TypeError):  # a float tensor has __index__ but refuses it
            number = operator.index(step)
    if not 0 <= number <= _MAX_STEP:
        raise InvalidArgumentError(f"step {step!r} must be an int from 0 to 2**63 - 1")
    return number


def _check_wall_time(wall_time: float | None) -> float:
    if wall_time is None:
        return time.time()
    if not isinstance(wall_time, SupportsFloat):
        raise InvalidArgumentError(f"wall_time {wall_time!r} must be seconds since the epoch, as time.time() gives")
    seconds = float(wall_time)
    if not math.isfinite(seconds):
        raise InvalidArgumentError(f"wall_time {wall_time!r} must be finite seconds since the epoch")
    return seconds


class EventWriter:
    """Appends scalar events to a new TensorBoard event file in ``log_dir``.

    Records go through a buffered file; `flush` (and `close`) hand them to the operating system, so a
    running TensorBoard sees them. Values are stored as float32, as TensorBoard's ``simple_value``;
    NaN and infinities are written as they are. Not thread-safe: one writer per thread.

    Attributes:
        path: The event file, ``log_dir/events.out.tfevents.{time:010d}.{host}.{pid}.{uid}{suffix}``.

    Example:
        >>> with EventWriter("runs/exp1") as writer:  # doctest: +SKIP
        ...     writer.add_scalar("train/loss", 2.31, step=1)
    """

    def __init__(
        self, log_dir: str | os.PathLike[str], *, filename_suffix: str = "", purge_step: int | None = None
    ) -> None:
        """Create ``log_dir`` if needed and start a new event file in it.

        Args:
            log_dir: The folder TensorBoard is pointed at (``tensorboard --logdir``), or one run in it.
            filename_suffix: Appended to the file name, as tensorboard's ``filename_suffix``.
            purge_step: For a run resumed from a checkpoint at this step: TensorBoard hides the events of
                earlier files in ``log_dir`` with ``step >= purge_step`` (a ``SessionLog.START`` event, as
                torch's ``SummaryWriter(purge_step=...)`` writes).

        Raises:
            InvalidArgumentError: ``filename_suffix`` holds a path separator, or ``purge_step`` is not an
                int from 0 to 2**63 - 1.
            OSError: The folder cannot be created or written.
        """
        if not isinstance(filename_suffix, str) or "/" in filename_suffix or os.sep in filename_suffix:
            raise InvalidArgumentError(f"filename_suffix {filename_suffix!r} must be a str without path separators")
        purge = None if purge_step is None else _check_step(purge_step)
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_UIDS)}"
        self.path = folder / (name + filename_suffix)
        self._file = open(self.path, "ab")  # noqa: SIM115  # closed by close()
        self._write(_event(now, 0, _length_delimited(3, _FILE_VERSION.encode())))
        if purge is not None:
            self._write(_event(now, purge, _length_delimited(7, _SESSION_LOG_START)))
        self.flush()

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Append one scalar.

        Args:
            tag: The chart's name, e.g. ``"train/loss"`` (TensorBoard groups charts by the part before ``/``).
            value: The value, stored as float32 (beyond float32's range it becomes an infinity).
            step: The global step, an int from 0 to 2**63 - 1.
            wall_time: Seconds since the epoch; now when None.

        Raises:
            InvalidArgumentError: The tag is not a non-empty str, the value not a number, the step or wall
                time out of range.
            AprenderError: The writer is closed.
        """
        self.add_scalars({tag: value}, step, wall_time)

    def add_scalars(self, values: Mapping[str, float], step: int, wall_time: float | None = None) -> None:
        """Append several scalars of one step as one event.

        Unlike torch's ``SummaryWriter.add_scalars``, which writes one sub-folder (a separate run) per
        tag, each tag here is its own chart of this run, as after `add_scalar` for each.

        Args:
            values: Tag to value, as in `add_scalar`; at least one.
            step: The global step, an int from 0 to 2**63 - 1.
            wall_time: Seconds since the epoch; now when None.

        Raises:
            InvalidArgumentError: ``values`` is empty or not a mapping, or as in `add_scalar`.
            AprenderError: The writer is closed.
        """
        if not isinstance(values, Mapping) or not values:
            raise InvalidArgumentError(f"values {values!r} must be a non-empty mapping of tag to number")
        summary = b"".join(_scalar_value(tag, value) for tag, value in values.items())
        self._write(_event(_check_wall_time(wall_time), _check_step(step), _length_delimited(5, summary)))

    def flush(self) -> None:
        """Hand the buffered records to the operating system (no fsync).

        Raises:
            AprenderError: The writer is closed.
        """
        self._check_open()
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file; closing again does nothing."""
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._file.closed:
            raise AprenderError(f"{self.path}: this event writer is closed; open a new EventWriter")

    def _write(self, data: bytes) -> None:
        self._check_open()
        length = struct.pack("<Q", len(data))
        self._file.write(
            length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))
        )
