"""Record schemas: detect which one a record follows and normalise it to an `Example`.

| format | fields (extra fields are ignored) | becomes |
|---|---|---|
| `text` | `text`: non-empty string (`.txt` files give this) | text, every token trained |
| `prompt_completion` | `prompt`: string, `completion`: non-empty string | user → assistant turn |
| `alpaca` | `instruction`, `output`: non-empty strings; `input`: string or null (optional) | user → assistant turn |
| `messages` | `messages`: OpenAI-style list of `{"role": system/user/assistant, "content": string}` | conversation |
| `sharegpt` | `conversations`: list of `{"from": ..., "value": string}` | conversation (roles mapped) |

ShareGPT is its own format value and is normalised into messages: `from` "system" → system, "human"
or "user" → user, "gpt" or "assistant" → assistant. A conversation (messages or ShareGPT) must end
with an assistant turn, and every assistant turn must have non-empty content: there is nothing to
learn from a conversation that ends on a user turn. Messages keep only `role` and `content`.

Single-turn formats carry a second rendering for tokenizers without a chat template (see
`entrenar.data.encode`): prompt_completion is `prompt` + `completion` as written (put the separator
you want at the end of the prompt); alpaca uses the Stanford Alpaca prompt
(https://github.com/tatsu-lab/stanford_alpaca, `train.py`). With a chat template, the alpaca user turn
is the instruction, followed by a blank line and the input when there is one.

Auto-detection (`detect_format`) looks for the keys in the table's reverse order of generality:
`messages`, then `conversations`, then `instruction` + `output`, then `prompt` + `completion`, then
`text` (so an Alpaca file with a pre-rendered `text` column is read as Alpaca).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from entrenar.constants import DATA_FORMATS, DataFormat
from entrenar.data.sources import Location
from entrenar.errors import InvalidRecordError

FormatName = DataFormat
FORMATS: tuple[str, ...] = DATA_FORMATS
ROLES: tuple[str, ...] = ("system", "user", "assistant")
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
# Detection order: the most specific schema first (see the module docstring).
_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One normalised record.

    Attributes:
        format: the schema it was read with.
        location: where it was read.
        text: the document (format "text"), else None.
        messages: the conversation (every other format), as `{"role", "content"}` dicts.
        plain: `(prompt, completion)` texts used when the tokenizer has no chat template (single-turn
            formats only), else None.
    """

    format: str
    location: Location
    text: str | None = None
    messages: tuple[dict[str, str], ...] = ()
    plain: tuple[str, str] | None = None


def detect_format(record: Mapping[str, Any]) -> str | None:
    """The schema a record's keys belong to, or None when none matches.

    Args:
        record: one record's fields.

    Returns:
        A name from `FORMATS`, or None.
    """
    for name, keys in _SIGNATURES:
        if all(key in record for key in keys):
            return name
    return None


def signature_help() -> str:
    """The keys each format needs, for error messages."""
    return ", ".join(f"{'+'.join(keys)} ({name})" for name, keys in _SIGNATURES)


def normalize_record(record: Mapping[str, Any], format: str, location: Location) -> Example:
    """Check a record against a format and build its `Example`.

    Args:
        record: the record's fields.
        format: a name from `FORMATS`.
        location: where the record was read (used in error messages).

    Returns:
        The example.

    Raises:
        InvalidRecordError: a field is missing, has the wrong type, or is empty where text is required.
    """
    if format == "text":
        return Example(format, location, text=_string(record, "text", location, nonempty=True))
    if format == "prompt_completion":
        prompt = _string(record, "prompt", location)
        completion = _string(record, "completion", location, nonempty=True)
        return _single_turn(format, location, prompt, completion, (prompt, completion))
    if format == "alpaca":
        return _alpaca(record, location)
    if format == "messages":
        return Example(format, location, messages=_messages(record, location))
    return Example(format, location, messages=_sharegpt(record, location))


def _fail(location: Location, message: str) -> InvalidRecordError:
    return InvalidRecordError(f"{location}: {message}; fix or remove the record (or set data.skip_invalid)")


def _field(record: Mapping[str, Any], key: str, location: Location) -> Any:
    if key not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise _fail(location, f"field {key!r} is missing (keys found: {keys})")
    return record[key]


def _string(
    record: Mapping[str, Any], key: str, location: Location, *, nonempty: bool = False, optional: bool = False
) -> str:
    value = record.get(key) if optional else _field(record, key, location)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _fail(location, f"field {key!r} is a {type(value).__name__}, expected a string")
    if nonempty and not value.strip():
        raise _fail(location, f"field {key!r} is empty")
    return value


def _single_turn(format: str, location: Location, user: str, reply: str, plain: tuple[str, str]) -> Example:
    messages = ({"role": "user", "content": user}, {"role": "assistant", "content": reply})
    return Example(format, location, messages=messages, plain=plain)


def _alpaca(record: Mapping[str, Any], location: Location) -> Example:
    instruction = _string(record, "instruction", location, nonempty=True)
    context = _string(record, "input", location, optional=True)
    output = _string(record, "output", location, nonempty=True)
    if context.strip():
        user = f"{instruction}\n\n{context}"
        prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=context)
    else:
        user, prompt = instruction, ALPACA_PROMPT.format(instruction=instruction)
    return _single_turn("alpaca", location, user, output, (prompt, output))


def _turns(record: Mapping[str, Any], key: str, location: Location) -> list[Mapping[str, Any]]:
    turns = _field(record, key, location)
    if not isinstance(turns, list) or not turns:
        raise _fail(location, f"field {key!r} must be a non-empty list of turns")
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise _fail(location, f"{key}[{index}] is a {type(turn).__name__}, expected an object")
    return turns


def _messages(record: Mapping[str, Any], location: Location) -> tuple[dict[str, str], ...]:
    messages = []
    for index, turn in enumerate(_turns(record, "messages", location)):
        role = turn.get("role")
        if role not in ROLES:
            raise _fail(location, f"messages[{index}].role is {role!r}; expected one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": _content(turn, "content", f"messages[{index}]", location)})
    return _checked_conversation(messages, "messages", location)


def _sharegpt(record: Mapping[str, Any], location: Location) -> tuple[dict[str, str], ...]:
    messages = []
    for index, turn in enumerate(_turns(record, "conversations", location)):
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            expected = ", ".join(SHAREGPT_ROLES)
            raise _fail(location, f"conversations[{index}].from is {speaker!r}; expected one of {expected}")
        content = _content(turn, "value", f"conversations[{index}]", location)
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": content})
    return _checked_conversation(messages, "conversations", location)


def _content(turn: Mapping[str, Any], key: str, where: str, location: Location) -> str:
    content = turn.get(key)
    if not isinstance(content, str):
        raise _fail(location, f"{where}.{key} is a {type(content).__name__}, expected a string")
    return content


def _checked_conversation(messages: list[dict[str, str]], key: str, location: Location) -> tuple[dict[str, str], ...]:
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and not message["content"].strip():
            raise _fail(location, f"{key}[{index}] is an empty assistant reply")
    if messages[-1]["role"] != "assistant":
        raise _fail(location, f"{key} ends with a {messages[-1]['role']} turn; a conversation must end with a reply")
    return tuple(messages)
