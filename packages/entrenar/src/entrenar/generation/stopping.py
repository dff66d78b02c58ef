"""Stop strings: end a sequence at the token that completes one of them in the generated text.

A stop string may span several tokens and start or end inside one (``["st", "opping"]`` completes
``"stop"``). After each new token we decode a window of the latest tokens, long enough to hold any
stop string, and stop when a stop string occurs in it but not in the same window without the new
token; so the sequence ends at the first token whose text completes a stop string, as transformers'
`StopStringCriteria` decides, except that only generated text is searched (never the prompt).

The window: a character is at most 4 UTF-8 bytes and every token decodes to at least one byte, so
the last ``4 * len(stop) + 1`` tokens cover any occurrence that the newest token completes. Special
tokens count with their text (the window is decoded with ``skip_special_tokens=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

from entrenar.errors import GenerationError
from entrenar.generation.detokenize import TokenDecoder

__all__ = ["StopStrings"]

_MAX_UTF8_BYTES = 4


class StopStrings:
    """Watches the generated tokens of each sequence for a set of stop strings."""

    def __init__(self, stop_strings: Sequence[str], decoder: TokenDecoder) -> None:
        """Prepare the matcher.

        Args:
            stop_strings: Non-empty strings.
            decoder: Turns token ids into text (e.g. `aprender.text.Tokenizer`).

        Raises:
            GenerationError: No stop strings, or an empty one.
        """
        if isinstance(stop_strings, str) or not stop_strings:
            raise GenerationError("stop_strings must be a non-empty list of strings, e.g. ['\\n\\n']")
        if not all(isinstance(stop, str) and stop for stop in stop_strings):
            raise GenerationError(f"stop_strings {list(stop_strings)!r} holds an empty or non-text entry")
        self._stops = tuple(dict.fromkeys(stop_strings))
        self._decoder = decoder
        self._window = _MAX_UTF8_BYTES * max(len(stop) for stop in self._stops) + 1

    def completed_by_last(self, generated: Sequence[int]) -> bool:
        """Whether the last token of `generated` completes a stop string.

        Args:
            generated: The sequence's generated token ids so far (not the prompt).

        Returns:
            True when a stop string occurs in the text with the last token and not without it.
        """
        window = list(generated[-self._window :])
        text = self._decoder.decode(window, skip_special_tokens=False)
        found = [stop for stop in self._stops if stop in text]
        if not found:
            return False
        before = self._decoder.decode(window[:-1], skip_special_tokens=False)
        return any(stop not in before for stop in found)
