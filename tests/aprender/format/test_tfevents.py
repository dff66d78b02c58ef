"""aprender.format.tfevents: TensorBoard event files written by hand.

Oracles: TensorBoard's own reader (``EventAccumulator``), its CRC32C (``tensorflow_stub``), the
``Event`` protobuf classes it ships (parse our records and serialize them back byte for byte), torch's
``SummaryWriter`` for ``purge_step``, and the CRC32C test vectors of RFC 3720, appendix B.4.
"""

from __future__ import annotations

import math
import os
import re
import socket
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as tb_crc

from aprender.errors import AprenderError, InvalidArgumentError
from aprender.format.tfevents import EventWriter, crc32c, masked_crc32c

F32_MAX = float(np.finfo(np.float32).max)


def _records(path: Path) -> list[bytes]:
    """Split a TFRecord file by hand, checking both masked CRCs with TensorBoard's CRC32C."""
    data = path.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack_from("<I", data, pos + 8)[0] == tb_crc.masked_crc32c(header)
        record = data[pos + 12 : pos + 12 + length]
        assert len(record) == length
        assert struct.unpack_from("<I", data, pos + 12 + length)[0] == tb_crc.masked_crc32c(record)
        records.append(record)
        pos += 16 + length
    assert pos == len(data)
    return records


def _events(path: Path) -> list[Event]:
    return [Event.FromString(record) for record in _records(path)]


def _scalars(log_dir: Path) -> dict[str, list[tuple[float, int, float]]]:
    """What TensorBoard shows: tag -> [(wall_time, step, value)]."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def _f32(value: float) -> float:
    return float(np.float32(value))


# RFC 3720 B.4 (iSCSI), plus the usual check value of "123456789".
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),
        (b"", 0),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_crc32c_test_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected == tb_crc.crc32c(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_crc32c_and_mask_match_tensorboard(data: bytes) -> None:
    assert crc32c(data) == tb_crc.crc32c(data)
    assert masked_crc32c(data) == tb_crc.masked_crc32c(data)


def test_file_starts_with_file_version_and_records_are_protobuf_bytes(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalar("train/loss", 2.5, step=1, wall_time=1000.25)
        writer.add_scalars({"train/lr": 2e-4, "eval/loss": 3.0}, step=300, wall_time=1001.0)
    records = _records(writer.path)
    assert [Event.FromString(r).SerializeToString() for r in records] == records
    first, *scalars = (Event.FromString(r) for r in records)
    assert first.file_version == "brain.Event:2" and first.step == 0 and first.wall_time > 0
    assert [e.WhichOneof("what") for e in scalars] == ["summary", "summary"]
    assert [(v.tag, v.simple_value) for v in scalars[1].summary.value] == [("train/lr", _f32(2e-4)), ("eval/loss", 3)]


@settings(max_examples=150, deadline=None)
@given(
    tags=st.lists(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12), min_size=1, max_size=3),
    value=st.floats(width=32) | st.floats(),
    step=st.integers(0, 2**63 - 1),
    wall_time=st.floats(allow_nan=False, allow_infinity=False),
)
def test_event_bytes_equal_protobuf_serialization(tags: list[str], value: float, step: int, wall_time: float) -> None:
    values = dict.fromkeys(tags, value)
    with tempfile.TemporaryDirectory() as folder, EventWriter(folder) as writer:
        writer.add_scalars(values, step, wall_time)
        writer.flush()
        record = _records(writer.path)[-1]
    summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])
    expected = Event(wall_time=wall_time, step=step, summary=summary).SerializeToString()
    assert record == expected


def test_file_name_as_tensorboard_writes_it(tmp_path: Path) -> None:
    first = EventWriter(tmp_path / "new" / "run")
    second = EventWriter(tmp_path / "new" / "run", filename_suffix=".v2")
    first.close()
    second.close()
    pattern = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.(\d+)"
    first_uid = re.fullmatch(pattern, first.path.name)
    second_uid = re.fullmatch(pattern + r"\.v2", second.path.name)
    assert first_uid and second_uid and int(second_uid[1]) == int(first_uid[1]) + 1
    assert first.path.parent == tmp_path / "new" / "run"


def test_event_accumulator_reads_scalars_back(tmp_path: Path) -> None:
    losses = [2.302585, 1.75, 1.0e-7, -3.5, 123456.789]
    with EventWriter(tmp_path) as writer:
        for step, loss in enumerate(losses):
            writer.add_scalar("train/loss", loss, step=step * 10, wall_time=1_700_000_000.5 + step)
            writer.add_scalar("train/lr", 1e-4 / (step + 1), step=step * 10, wall_time=1_700_000_000.5 + step)
        writer.add_scalar("eval/loss", 9.0, step=2**63 - 1, wall_time=1_700_000_100.0)
    scalars = _scalars(tmp_path)
    assert scalars["train/loss"] == [(1_700_000_000.5 + i, i * 10, _f32(x)) for i, x in enumerate(losses)]
    assert [v for _, _, v in scalars["train/lr"]] == [_f32(1e-4 / (i + 1)) for i in range(5)]
    assert scalars["eval/loss"] == [(1_700_000_100.0, 2**63 - 1, 9.0)]


def test_add_scalars_writes_one_event_with_each_tag_its_own_chart(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalars({"loss": 1.5, "lr": 0.25, "grad_norm": 7.0}, step=4, wall_time=50.0)
    assert len(_records(writer.path)) == 2
    assert _scalars(tmp_path) == {"loss": [(50.0, 4, 1.5)], "lr": [(50.0, 4, 0.25)], "grad_norm": [(50.0, 4, 7.0)]}


def test_non_finite_and_out_of_range_values_are_written_as_they_are(tmp_path: Path) -> None:
    # 3.4028235677973366e38 is float32's max plus half an ulp: it rounds (to even) to inf.
    values = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "big": 1e39, "-big": -1e39}
    values |= {"max": F32_MAX, "edge": 3.4028235677973366e38}
    with EventWriter(tmp_path) as writer:
        writer.add_scalars(values, step=1)
    shown = {tag: points[0][2] for tag, points in _scalars(tmp_path).items()}
    assert math.isnan(shown.pop("nan"))
    assert shown == {tag: Summary.Value(simple_value=values[tag]).simple_value for tag in shown}  # as protobuf stores
    assert shown == {
        "inf": math.inf,
        "-inf": -math.inf,
        "big": math.inf,
        "-big": -math.inf,
        "max": F32_MAX,
        "edge": math.inf,
    }


def test_numpy_and_torch_numbers_are_accepted(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalar("np", np.float64(0.5), step=np.int64(3))  # type: ignore[arg-type]
        writer.add_scalar("torch", torch.tensor(2.5), step=4)  # type: ignore[arg-type]
        writer.add_scalar("int", 7, step=5)
    assert {tag: points[0][1:] for tag, points in _scalars(tmp_path).items()} == {
        "np": (3, 0.5),
        "torch": (4, 2.5),
        "int": (5, 7.0),
    }


def test_two_writers_in_one_folder_are_both_read(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as first:
        first.add_scalar("loss", 3.0, step=1, wall_time=10.0)
        first.add_scalar("loss", 2.0, step=2, wall_time=11.0)
    with EventWriter(tmp_path) as second:  # a resumed run appends a new file beside the old one
        second.add_scalar("loss", 1.0, step=3, wall_time=20.0)
    assert first.path != second.path and sorted(tmp_path.iterdir()) == [first.path, second.path]
    assert _scalars(tmp_path) == {"loss": [(10.0, 1, 3.0), (11.0, 2, 2.0), (20.0, 3, 1.0)]}


def test_purge_step_hides_the_earlier_files_steps_from_there_on(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as crashed:
        for step in range(10):
            crashed.add_scalars({"loss": 10.0 - step, "lr": 1.0}, step=step, wall_time=100.0 + step)
    with EventWriter(tmp_path, purge_step=5) as resumed:
        for step in range(5, 8):
            resumed.add_scalar("loss", 100.0 + step, step=step, wall_time=200.0 + step)
    scalars = _scalars(tmp_path)
    assert [(s, v) for _, s, v in scalars["loss"]] == [(s, 10.0 - s) for s in range(5)] + [
        (s, 100.0 + s) for s in (5, 6, 7)
    ]
    assert [s for _, s, _ in scalars["lr"]] == [0, 1, 2, 3, 4]


def test_purge_step_events_match_torch_summary_writer(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    reference = SummaryWriter(str(tmp_path / "torch"), purge_step=5)
    reference.add_scalar("loss", 0.5, global_step=5, walltime=300.0)
    reference.close()
    with EventWriter(tmp_path / "ours", purge_step=5) as writer:
        writer.add_scalar("loss", 0.5, step=5, wall_time=300.0)

    def after_file_version(folder: Path) -> list[Event]:
        (path,) = folder.iterdir()
        events = [e for e in _events(path) if e.WhichOneof("what") != "file_version"]
        for event in events:
            if event.HasField("session_log"):
                event.wall_time = 0  # now, in either writer
        return events

    ours = after_file_version(tmp_path / "ours")
    assert ours == after_file_version(tmp_path / "torch")
    assert ours[0].session_log.status == SessionLog.START and ours[0].step == 5


def test_flush_makes_records_readable_while_the_writer_is_open(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    assert len(_records(writer.path)) == 1  # the file version is flushed at once
    writer.add_scalar("loss", 1.0, step=1, wall_time=5.0)
    writer.flush()
    assert _scalars(tmp_path) == {"loss": [(5.0, 1, 1.0)]}
    writer.close()


def test_a_closed_writer_refuses_to_write(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        pass
    writer.close()  # again: nothing happens
    with pytest.raises(AprenderError, match="closed; open a new EventWriter"):
        writer.add_scalar("loss", 1.0, step=1)
    with pytest.raises(AprenderError, match="closed"):
        writer.flush()
    assert len(_records(writer.path)) == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda w: w.add_scalar("", 1.0, 1), "non-empty str"),
        (lambda w: w.add_scalar(None, 1.0, 1), "non-empty str"),
        (lambda w: w.add_scalars({3: 1.0}, 1), "non-empty str"),
        (lambda w: w.add_scalar("bad\ud800", 1.0, 1), "not valid Unicode"),
        (lambda w: w.add_scalar("loss", "1.0", 1), "is not a number"),
        (lambda w: w.add_scalar("loss", None, 1), "is not a number"),
        (lambda w: w.add_scalar("loss", 1.0, -1), "from 0 to 2"),
        (lambda w: w.add_scalar("loss", 1.0, 2**63), "from 0 to 2"),
        (lambda w: w.add_scalar("loss", 1.0, True), "from 0 to 2"),
        (lambda w: w.add_scalar("loss", 1.0, 1.0), "from 0 to 2"),
        (lambda w: w.add_scalar("loss", 1.0, "3"), "from 0 to 2"),
        (lambda w: w.add_scalar("loss", 1.0, torch.tensor(1.5)), "from 0 to 2"),
        (lambda w: w.add_scalar("loss", 1.0, 1, wall_time=math.nan), "finite"),
        (lambda w: w.add_scalar("loss", 1.0, 1, wall_time=math.inf), "finite"),
        (lambda w: w.add_scalar("loss", 1.0, 1, wall_time="now"), "seconds since the epoch"),
        (lambda w: w.add_scalars({}, 1), "non-empty mapping"),
        (lambda w: w.add_scalars([("loss", 1.0)], 1), "non-empty mapping"),
        (lambda w: w.add_scalars({"ok": 1.0, "": 2.0}, 1), "non-empty str"),
    ],
)
def test_invalid_arguments_raise_one_line_and_write_nothing(
    tmp_path: Path, call: Callable[[EventWriter], object], match: str
) -> None:
    with EventWriter(tmp_path) as writer, pytest.raises(InvalidArgumentError, match=match) as info:
        call(writer)
    assert "\n" not in str(info.value)
    assert len(_records(writer.path)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filename_suffix": "a/b"}, "path separators"),
        ({"filename_suffix": 3}, "path separators"),
        ({"purge_step": -1}, "from 0"),
    ],
)
def test_invalid_writer_options_raise_before_any_file(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        EventWriter(tmp_path / "run", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_a_log_dir_that_is_a_file_raises_os_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        EventWriter(tmp_path / "file")
