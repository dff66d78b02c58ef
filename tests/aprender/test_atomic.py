"""aprender.atomic: the old file survives any failure; the new one appears whole."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import pytest

from aprender.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, remove_temp_files


def test_writes_text_bytes_and_json(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "café\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    atomic_write_json(tmp_path / "c.json", {"k": "ñ", "n": [1, 2]})
    assert (tmp_path / "a.txt").read_bytes() == "café\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{\n  "k": "ñ",\n  "n": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"k": "ñ", "n": [1, 2]}


def test_failure_mid_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"previous")

    def half_then_fail(stream: IO[bytes]) -> None:
        stream.write(b"partial")
        raise KeyboardInterrupt  # BaseException too: Ctrl-C mid-write must not corrupt the file

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["ckpt.bin"]


def test_replaces_existing_file_and_respects_umask(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    old_umask = os.umask(0o027)
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640


def test_unserialisable_json_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"ok": "é"})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == {"ok": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_remove_temp_files_removes_what_killed_writes_leave_and_nothing_else(tmp_path: Path) -> None:
    names: list[str] = []

    def record_name(stream: IO[bytes]) -> None:
        names.append(Path(stream.name).name)  # the temp file's name, as a kill mid-write would leave it

    for target in ("adapter_model.safetensors", "latest", ".hidden.json"):
        atomic_write(tmp_path / target, record_name)
    for name in names:
        (tmp_path / name).write_bytes(b"half")
    users = ["notes.tmp", ".notes.tmp", f".notes.{'0' * 31}.tmp", f".notes.{'A' * 32}.tmp", f"x.{'0' * 32}.tmp"]
    for name in users:
        (tmp_path / name).write_text("mine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / names[0]).write_bytes(b"half")  # only the folder itself is cleaned

    removed = remove_temp_files(tmp_path)
    assert sorted(path.name for path in removed) == sorted(names)
    assert all(name.startswith(".") and name.endswith(".tmp") and len(name.split(".")[-2]) == 32 for name in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["adapter_model.safetensors", "latest", ".hidden.json", "sub", *users]
    )
    assert (tmp_path / "sub" / names[0]).exists()
    assert remove_temp_files(tmp_path / "missing") == []
