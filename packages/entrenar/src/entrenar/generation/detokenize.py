"""Incremental detokenization: turn a growing list of token ids into text, one safe piece at a time.

Decoding each new token on its own is wrong twice over: a byte-level BPE token may hold only part of a
multi-byte UTF-8 character (it decodes to U+FFFD until the rest arrives), and SentencePiece-style
decoders treat the first token of a call differently (they drop its leading space). So, like vLLM's
``detokenize_incrementally``, we decode a short window of the ids, starting at a token where all earlier
text was complete, and emit only what the window adds beyond its already-emitted prefix, holding it back
while it ends in an incomplete character. The pieces emitted, followed by `IncrementalDetokenizer.flush`,
concatenate to the decoding of all the ids at once.

Reference: vLLM, ``vllm/transformers_utils/detokenizer_utils.py``
(https://github.com/vllm-project/vllm), and transformers' ``TextStreamer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["IncrementalDetokenizer", "TokenDecoder"]

_REPLACEMENT = "\ufffd"


class TokenDecoder(Protocol):
    """Anything that turns token ids into text, such as `aprender.text.Tokenizer`."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
        ...


class IncrementalDetokenizer:
    """Text of a token stream, released as soon as it is complete.

    Example:
        >>> stream = IncrementalDetokenizer(tokenizer)  # doctest: +SKIP
        >>> pieces = [stream.push([token]) for token in ids] + [stream.flush()]  # doctest: +SKIP
        >>> "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)  # doctest: +SKIP
        True
    """

    def __init__(self, decoder: TokenDecoder, *, skip_special_tokens: bool = True) -> None:
        """Start an empty stream.

        Args:
            decoder: Turns ids into text.
            skip_special_tokens: Leave special tokens (EOS, ...) out of the text.
        """
        self._decoder = decoder
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_start = 0  # window start: all text before it has been emitted
        self._read_start = 0  # tokens before it are covered by the emitted text
        self._emitted: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens and return the text they complete (possibly empty).

        Args:
            ids: New token ids.

        Returns:
            Newly complete text; an incomplete trailing character waits for the next tokens.
        """
        self._ids.extend(ids)
        prefix, window = self._decode_window()
        if len(window) <= len(prefix) or window.endswith(_REPLACEMENT):
            return ""
        return self._emit(window[len(prefix) :])

    def flush(self) -> str:
        """Return whatever text is still held back (an incomplete character decodes to U+FFFD).

        Returns:
            The remaining text.
        """
        prefix, window = self._decode_window()
        return self._emit(window[len(prefix) :]) if len(window) > len(prefix) else ""

    def _decode_window(self) -> tuple[str, str]:
        prefix_ids = self._ids[self._prefix_start : self._read_start]
        prefix = self._decoder.decode(prefix_ids, skip_special_tokens=self._skip)
        window = self._decoder.decode(self._ids[self._prefix_start :], skip_special_tokens=self._skip)
        return prefix, window

    def _emit(self, piece: str) -> str:
        self._prefix_start, self._read_start = self._read_start, len(self._ids)
        self._emitted.append(piece)
        return piece
