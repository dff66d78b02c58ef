"""Train a byte-level BPE tokenizer (GPT-2 style) from text files.

Byte-level BPE (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners",
https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf;
BPE merges from Sennrich et al. 2016, https://arxiv.org/abs/1508.07909) maps every UTF-8 byte to a
printable character, splits text with the GPT-2 regex, and learns merges of frequent adjacent
pairs. The 256 byte symbols are always in the vocabulary, so any text encodes without an unknown
token and decodes back exactly. Training uses `tokenizers.trainers.BpeTrainer`, which breaks ties
between equally frequent pairs by a fixed order, so the same files give the same tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from aprender.errors import TokenizerError
from aprender.text.tokenizer import Tokenizer

_BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()


def _lines(paths: Sequence[Path]) -> Iterator[str]:
    """Lines of the files in order, newline kept (so merges across "\\n" are learnt too)."""
    for path in paths:
        try:
            with path.open(encoding="utf-8") as handle:
                yield from handle
        except UnicodeDecodeError as err:
            raise TokenizerError(f"{path}: not UTF-8 text (byte {err.start}); convert it to UTF-8") from err


def _check_files(files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    if not paths:
        raise TokenizerError("train_bpe: files is empty; pass at least one text file")
    for path in paths:
        if not path.is_file():
            raise TokenizerError(f"{path}: training file not found")
    return paths


def train_bpe(
    files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = (),
    min_frequency: int = 2,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on UTF-8 text files.

    Special tokens take the first ids, in the order `special_tokens` then BOS, EOS, PAD (each once).
    The result adds no BOS/EOS when encoding; set `tokenizer.add_bos_token = True` for that.

    Args:
        files: one path or several; read line by line, in order.
        vocab_size: total ids wanted, special tokens and the 256 byte symbols included; fewer
            result when the text has too few distinct pairs.
        special_tokens: tokens never split (e.g. `"<|im_start|>"`).
        min_frequency: a pair is merged only when it occurs at least this often.
        bos_token: named beginning-of-sequence token (added to the special tokens).
        eos_token: named end-of-sequence token (added to the special tokens).
        pad_token: named padding token (added to the special tokens).

    Returns:
        A ready `Tokenizer` (save it with `Tokenizer.save`).

    Raises:
        TokenizerError: a file is missing or not UTF-8, `vocab_size` cannot hold the byte
            alphabet and the special tokens, or `min_frequency` is negative.
    """
    paths = _check_files(files)
    named = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
    named_set = {k: v for k, v in named.items() if v is not None}
    specials = list(dict.fromkeys([*special_tokens, *named_set.values()]))
    if vocab_size < len(_BYTE_ALPHABET) + len(specials):
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small: it must hold the {len(_BYTE_ALPHABET)} byte symbols "
            f"and {len(specials)} special tokens"
        )
    if min_frequency < 0:
        raise TokenizerError(f"min_frequency={min_frequency} must be >= 0")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets cover exact characters
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=_BYTE_ALPHABET,
        show_progress=False,
    )
    backend.train_from_iterator(_lines(paths), trainer=trainer)
    unnamed = [t for t in special_tokens if t not in named_set.values()]
    return Tokenizer(backend, special_tokens=named_set, extra_special_tokens=unnamed)
