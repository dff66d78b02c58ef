"""Text generation: a KV-cached decoding loop, logits processors and incremental detokenization.

Example:
    >>> from entrenar.generation import generate  # doctest: +SKIP
    >>> new = generate(model, [tokenizer.encode("Hello")], max_new_tokens=32, eos_token_ids=[2])  # doctest: +SKIP
    >>> tokenizer.decode(new[0], skip_special_tokens=True)  # doctest: +SKIP
"""

from entrenar.generation.detokenize import IncrementalDetokenizer, TokenDecoder
from entrenar.generation.generate import Streamer, default_eos_token_ids, generate
from entrenar.generation.sampling import (
    TokenSampler,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    token_presence,
)
from entrenar.generation.stopping import StopStrings

__all__ = [
    "IncrementalDetokenizer",
    "StopStrings",
    "Streamer",
    "TokenDecoder",
    "TokenSampler",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "default_eos_token_ids",
    "generate",
    "token_presence",
]
