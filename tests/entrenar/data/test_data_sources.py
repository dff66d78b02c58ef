"""entrenar.data.sources: path resolution and the JSONL / JSON / Parquet / text readers."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.data.sources import Location, RawRecord, read_records, resolve_data_files
from entrenar.errors import DataError


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _records(*files: Path) -> list[RawRecord]:
    return list(read_records(list(files)))


# ------------------------------------------------------------------------------------ resolution


def test_resolve_single_file(tmp_path: Path) -> None:
    file = _write(tmp_path / "train.jsonl", "{}\n")
    assert resolve_data_files(file) == [file]
    assert resolve_data_files(str(file)) == [file]


def test_resolve_directory_is_recursive_sorted_and_skips_other_and_hidden_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    expected = [
        _write(root / "a.jsonl", "{}\n"),
        _write(root / "b" / "c.parquet", b""),
        _write(root / "b" / "d.txt", "x"),
        _write(root / "e.JSON", "[]"),  # suffixes are case-insensitive
        _write(root / "z.ndjson", "{}\n"),
    ]
    _write(root / "README.md", "not data")
    _write(root / ".hidden.jsonl", "{}\n")
    _write(root / ".cache" / "x.jsonl", "{}\n")
    assert resolve_data_files(root) == expected


def test_resolve_glob_sorted_and_recursive(tmp_path: Path) -> None:
    second = _write(tmp_path / "part-2.jsonl", "{}\n")
    first = _write(tmp_path / "part-1.jsonl", "{}\n")
    nested = _write(tmp_path / "sub" / "part-3.jsonl", "{}\n")
    _write(tmp_path / "other.jsonl", "{}\n")
    assert resolve_data_files(tmp_path / "part-*.jsonl") == [first, second]
    assert resolve_data_files(f"{tmp_path}/**/part-*.jsonl") == [first, second, nested]


def test_resolve_glob_matching_an_unsupported_file_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", "{}\n")
    _write(tmp_path / "notes.md", "x")
    with pytest.raises(DataError, match=r"notes\.md: matched by .* \.md is not a data format"):
        resolve_data_files(tmp_path / "*")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.jsonl", r"missing\.jsonl: no such file or directory"),
        ("nothing-*.jsonl", r"nothing-\*\.jsonl: no data files"),
    ],
)
def test_resolve_nothing_there(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        resolve_data_files(tmp_path / name)


def test_resolve_unsupported_file_and_empty_directory(tmp_path: Path) -> None:
    csv = _write(tmp_path / "train.csv", "a,b\n")
    with pytest.raises(DataError, match=r"train\.csv: \.csv is not a data format; use \.jsonl"):
        resolve_data_files(csv)
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty" / "README.md", "x")
    with pytest.raises(DataError, match=r"empty: no data files \(\.jsonl, \.ndjson, \.json, \.parquet, \.txt\)"):
        resolve_data_files(tmp_path / "empty")


# ------------------------------------------------------------------------------------ JSON lines


def test_jsonl_records_locations_and_blank_lines(tmp_path: Path) -> None:
    file = _write(tmp_path / "d.jsonl", '\ufeff{"text": "a"}\n\n   \n{"text": "b", "n": 2}\r\n')
    records = _records(file)
    assert records == [
        RawRecord(Location(str(file), 1), {"text": "a"}),
        RawRecord(Location(str(file), 4), {"text": "b", "n": 2}),
    ]
    assert str(records[1].location) == f"{file}:4"


def test_jsonl_bad_lines_become_error_records(tmp_path: Path) -> None:
    file = _write(tmp_path / "d.jsonl", b'{"text": "ok"}\n{"text": \n[1, 2]\n"\xff\xfe"\n{"text": "last"}\n')
    records = _records(file)
    assert [r.location.index for r in records] == [1, 2, 3, 4, 5]
    assert records[0].data == {"text": "ok"} and records[4].data == {"text": "last"}
    assert records[1].data is None and records[1].error is not None
    assert records[1].error.startswith("invalid JSON (Expecting value at column")
    assert records[2].error == "a JSON list where an object {...} was expected"
    assert records[3].error == "not UTF-8 text (invalid start byte at byte 1)"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.text(min_size=1, max_size=5),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                max_leaves=6,
            ),
            max_size=4,
        ),
        max_size=6,
    )
)
def test_jsonl_round_trip(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, object]]) -> None:
    # Oracle: json.dumps wrote the lines, so reading must give back the same objects at lines 1..n.
    file = tmp_path_factory.mktemp("rt") / "rows.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    records = _records(file)
    assert [r.data for r in records] == rows
    assert [r.location.index for r in records] == list(range(1, len(rows) + 1))


# ------------------------------------------------------------------------------------ JSON files


def test_json_array_items(tmp_path: Path) -> None:
    file = _write(tmp_path / "alpaca.json", '  [{"instruction": "a", "output": "b"}, 3]')
    records = _records(file)
    assert records[0] == RawRecord(Location(str(file), 1, "item"), {"instruction": "a", "output": "b"})
    assert str(records[0].location) == f"{file} item 1"
    assert records[1].data is None and records[1].error == "a JSON int where an object {...} was expected"


def test_json_file_without_bracket_is_json_lines(tmp_path: Path) -> None:
    file = _write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n')
    assert [(r.location.unit, r.data) for r in _records(file)] == [("line", {"text": "a"}), ("line", {"text": "b"})]


def test_broken_json_array_names_the_line(tmp_path: Path) -> None:
    file = _write(tmp_path / "d.json", '[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(DataError, match=r"d\.json:3: invalid JSON \(Expecting value at column 10\)"):
        _records(file)


# ------------------------------------------------------------------------------------ Parquet


def test_parquet_rows_with_nested_columns(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "id": 1},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "id": None},
    ]
    file = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), file, row_group_size=1)  # two row groups: rows keep counting
    records = _records(file)
    assert [r.data for r in records] == rows
    assert [str(r.location) for r in records] == [f"{file} row 1", f"{file} row 2"]


def test_corrupt_parquet_is_an_error(tmp_path: Path) -> None:
    file = _write(tmp_path / "bad.parquet", b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        _records(file)


# ------------------------------------------------------------------------------------ plain text


def test_text_paragraphs_with_start_lines(tmp_path: Path) -> None:
    file = _write(tmp_path / "notes.txt", "\n\nFirst para\nline two\r\n  \t\n\nSecond\n\nThird\n")
    records = _records(file)
    assert [(r.location.index, r.data) for r in records] == [
        (3, {"text": "First para\nline two"}),
        (7, {"text": "Second"}),
        (9, {"text": "Third"}),
    ]
    no_final_newline = _write(tmp_path / "short.txt", "Only\nblock")
    assert [r.data for r in _records(no_final_newline)] == [{"text": "Only\nblock"}]


def test_text_empty_files(tmp_path: Path) -> None:
    blank = _write(tmp_path / "blank.txt", " \n\n")
    assert _records(blank) == []


def test_text_not_utf8_names_the_line(tmp_path: Path) -> None:
    file = _write(tmp_path / "latin.txt", "ok\nfine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt:3: not UTF-8 text"):
        _records(file)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.text(alphabet=string.ascii_letters + " .", min_size=1).filter(str.strip), min_size=1, max_size=3),
        max_size=5,
    ),
    st.lists(st.sampled_from(["\n", "\n \n", "\n\n\n", "\r\n\r\n"]), min_size=6, max_size=6),
)
def test_text_paragraph_split_recovers_paragraphs(
    tmp_path_factory: pytest.TempPathFactory, paragraphs: list[list[str]], gaps: list[str]
) -> None:
    # Oracle: the paragraphs we joined with blank-line gaps (each gap holds at least one blank line).
    text = "".join("\n".join(lines) + "\n" + gap for lines, gap in zip(paragraphs, gaps, strict=False))
    file = tmp_path_factory.mktemp("para") / "p.txt"
    file.write_bytes(text.encode())
    assert [r.data for r in _records(file)] == [{"text": "\n".join(lines)} for lines in paragraphs]


# ------------------------------------------------------------------------------------ argument checks


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.csv: \.csv is not a data format"):
        _records(_write(tmp_path / "data.csv", "a"))
