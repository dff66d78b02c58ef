"""entrenar.data.formats: schema detection and normalisation of each record format."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrenar.data.formats import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    FORMATS,
    Example,
    detect_format,
    normalize_record,
)
from entrenar.data.sources import Location
from entrenar.errors import InvalidRecordError

HERE = Location("data/train.jsonl", 7)


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": "x"}, "text"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o", "text": "rendered"}, "alpaca"),  # alpaca wins over its text column
        ({"messages": [], "text": "x"}, "messages"),
        ({"conversations": [], "id": 3}, "sharegpt"),
        ({"prompt": "p"}, None),
        ({"instruction": "i", "input": "x"}, None),
        ({}, None),
    ],
)
def test_detect_format(record: dict[str, Any], expected: str | None) -> None:
    assert detect_format(record) == expected


@given(
    st.dictionaries(
        st.sampled_from(["text", "prompt", "completion", "instruction", "output", "messages", "x"]), st.none()
    )
)
def test_detect_format_follows_the_documented_priority(record: dict[str, Any]) -> None:
    # Oracle: the priority list of the module docstring, written out independently.
    expected: str | None
    if "messages" in record:
        expected = "messages"
    elif {"instruction", "output"} <= record.keys():
        expected = "alpaca"
    elif {"prompt", "completion"} <= record.keys():
        expected = "prompt_completion"
    else:
        expected = "text" if "text" in record else None
    assert detect_format(record) == expected


def test_text() -> None:
    assert normalize_record({"text": "Hello", "id": 1}, "text", HERE) == Example("text", HERE, text="Hello")


def test_prompt_completion() -> None:
    example = normalize_record({"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "prompt_completion", HERE)
    assert example.messages == (_turn("user", "Q: 2+2?\nA:"), _turn("assistant", " 4"))
    assert example.plain == ("Q: 2+2?\nA:", " 4")
    assert example.text is None and example.format == "prompt_completion"


def test_alpaca_with_and_without_input() -> None:
    with_input = normalize_record({"instruction": "Sum", "input": "2 and 3", "output": "5"}, "alpaca", HERE)
    assert with_input.messages == (_turn("user", "Sum\n\n2 and 3"), _turn("assistant", "5"))
    # The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca train.py), written out by hand.
    assert with_input.plain == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSum\n\n### Input:\n2 and 3\n\n### Response:\n",
        "5",
    )
    for record in ({"instruction": "Greet", "output": "Hi"}, {"instruction": "Greet", "input": None, "output": "Hi"}):
        bare = normalize_record(record, "alpaca", HERE)
        assert bare.messages == (_turn("user", "Greet"), _turn("assistant", "Hi"))
        assert bare.plain == (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nGreet\n\n### Response:\n",
            "Hi",
        )
    assert ALPACA_PROMPT.count("{instruction}") == 1 and "{input}" in ALPACA_PROMPT_WITH_INPUT


def test_messages_keep_role_and_content_only() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "sys"},
            _turn("user", "Hi"),
            _turn("assistant", "Hello"),
        ]
    }
    example = normalize_record(record, "messages", HERE)
    assert example.messages == (_turn("system", "Be brief."), _turn("user", "Hi"), _turn("assistant", "Hello"))
    assert example.plain is None


def test_sharegpt_roles_are_mapped() -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "H"},
            {"from": "gpt", "value": "G"},
            {"from": "user", "value": "U"},
            {"from": "assistant", "value": "A"},
        ]
    }
    example = normalize_record(record, "sharegpt", HERE)
    assert example.messages == (
        _turn("system", "S"),
        _turn("user", "H"),
        _turn("assistant", "G"),
        _turn("user", "U"),
        _turn("assistant", "A"),
    )
    assert example.format == "sharegpt"


@pytest.mark.parametrize(
    ("record", "format", "message"),
    [
        ({"prompt": "p"}, "prompt_completion", r"field 'completion' is missing \(keys found: prompt\)"),
        ({}, "text", r"field 'text' is missing \(keys found: none\)"),
        ({"text": 5}, "text", r"field 'text' is a int, expected a string"),
        ({"text": "  \n"}, "text", r"field 'text' is empty"),
        ({"prompt": "p", "completion": ""}, "prompt_completion", r"field 'completion' is empty"),
        ({"prompt": None, "completion": "c"}, "prompt_completion", r"field 'prompt' is a NoneType"),
        ({"instruction": "i", "input": 3, "output": "o"}, "alpaca", r"field 'input' is a int"),
        ({"instruction": "i", "output": " "}, "alpaca", r"field 'output' is empty"),
        ({"messages": []}, "messages", r"field 'messages' must be a non-empty list of turns"),
        ({"messages": "hi"}, "messages", r"field 'messages' must be a non-empty list"),
        ({"messages": ["hi"]}, "messages", r"messages\[0\] is a str, expected an object"),
        ({"messages": [_turn("tool", "x")]}, "messages", r"messages\[0\]\.role is 'tool'; expected one of system"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages", r"messages\[0\]\.content is a list"),
        (
            {"messages": [_turn("user", "a"), _turn("assistant", " "), _turn("user", "b"), _turn("assistant", "c")]},
            "messages",
            r"messages\[1\] is an empty assistant reply",
        ),
        (
            {"messages": [_turn("user", "a"), _turn("assistant", "b"), _turn("user", "c")]},
            "messages",
            r"messages ends with a user turn; a conversation must end with a reply",
        ),
        ({"conversations": [{"from": "bot", "value": "x"}]}, "sharegpt", r"conversations\[0\]\.from is 'bot'"),
        ({"conversations": [{"from": "gpt"}]}, "sharegpt", r"conversations\[0\]\.value is a NoneType"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "sharegpt", r"conversations ends with a user turn"),
        ({"conversations": {"from": "gpt"}}, "sharegpt", r"field 'conversations' must be a non-empty list"),
    ],
)
def test_malformed_records_name_the_location(record: dict[str, Any], format: str, message: str) -> None:
    with pytest.raises(InvalidRecordError, match=r"^data/train\.jsonl:7: " + message):
        normalize_record(record, format, HERE)


def test_error_says_what_to_do() -> None:
    with pytest.raises(InvalidRecordError, match=r"fix or remove the record \(or set data\.skip_invalid\)$"):
        normalize_record({}, "text", HERE)


def test_every_format_normalises() -> None:
    records: dict[str, dict[str, Any]] = {
        "text": {"text": "t"},
        "prompt_completion": {"prompt": "p", "completion": "c"},
        "alpaca": {"instruction": "i", "output": "o"},
        "messages": {"messages": [_turn("user", "u"), _turn("assistant", "a")]},
        "sharegpt": {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]},
    }
    assert set(records) == set(FORMATS)
    for name, record in records.items():
        example = normalize_record(record, name, HERE)
        assert example.format == name and example.location == HERE
        assert (example.text is None) == (name != "text")


def test_location_strings() -> None:
    assert str(Location("a.jsonl", 3)) == "a.jsonl:3"
    assert str(Location("a.parquet", 3, "row")) == "a.parquet row 3"
    assert str(Location("a.json", 2, "item")) == "a.json item 2"
