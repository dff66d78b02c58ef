"""`StopStrings`: a sequence ends at the token whose text completes a stop string.

Expected values come from the decoded text by hand: the first prefix of the tokens whose decoding
contains the stop string. The cases follow transformers' `StopStringCriteria` docstring (a stop string
across tokens, overhanging either end, or not touching the last token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aprender.text import Tokenizer
from entrenar.errors import GenerationError
from entrenar.generation import StopStrings


class PieceDecoder:
    """Token i decodes to ``pieces[i]``: a decoder whose token boundaries the test chooses."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)


def _first_stop(stops: StopStrings, ids: list[int]) -> int | None:
    """Length of the shortest prefix of `ids` at which `stops` fires, or None."""
    return next((n for n in range(1, len(ids) + 1) if stops.completed_by_last(ids[:n])), None)


@pytest.mark.parametrize(
    ("pieces", "fires"),
    [
        (["st", "op"], True),
        (["stop"], True),
        (["st", "opera"], True),
        (["sto", "pper"], True),
        (["las", "topper"], True),
        (["s", "to", "pped"], True),
        (["stop", "at"], False),  # already complete before the last token
        (["st", "op", "at"], False),
        (["s", "t", "o"], False),
    ],
)
def test_fires_only_on_the_token_completing_the_stop_string(pieces: list[str], fires: bool) -> None:
    stops = StopStrings(["stop"], PieceDecoder(pieces))
    assert stops.completed_by_last(list(range(len(pieces)))) is fires


def test_several_stop_strings_and_a_long_window() -> None:
    pieces = ["a"] * 30 + ["EN", "D", "x"]
    stops = StopStrings(["END", "zz"], PieceDecoder(pieces))
    assert _first_stop(stops, list(range(len(pieces)))) == 32


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(alphabet="abcé中😀 \n", min_size=1, max_size=30),
    start=st.integers(0, 29),
    size=st.integers(1, 4),
)
def test_byte_level_tokens_stop_where_the_text_first_contains_the_stop(
    tiny_tokenizer_dir: Path, text: str, start: int, size: int
) -> None:
    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    stop = text[start : start + size] or text[:1]
    ids = tokenizer.encode(text)
    expected = next(n for n in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:n]))
    assert _first_stop(StopStrings([stop], tokenizer), ids) == expected


@pytest.mark.parametrize(
    ("stops", "message"),
    [([], "non-empty list"), ("stop", "non-empty list"), (["ok", ""], "empty or non-text entry")],
)
def test_bad_stop_strings_raise(stops: object, message: str) -> None:
    with pytest.raises(GenerationError, match=message):
        StopStrings(stops, PieceDecoder([]))  # type: ignore[arg-type]
