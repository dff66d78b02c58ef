"""GGUF vocabulary -> Hugging Face `tokenizer.json` + `tokenizer_config.json`.

A GGUF file carries its tokenizer as llama.cpp metadata (`tokenizer.ggml.*`), not as a `tokenizer.json`.
Two vocabulary kinds are rebuilt here, as the `tokenizers` library objects that reproduce what llama.cpp
does with them:

- `tokenizer.ggml.model == "gpt2"`: byte-level BPE (GPT-2, arXiv 1508.07909 + byte alphabet). Tokens are
  spelled in GPT-2's byte-to-unicode alphabet, merges are listed, and the text is first split by the
  regex llama.cpp picks from `tokenizer.ggml.pre` (see `PRE_TOKENIZERS`).
- `tokenizer.ggml.model == "llama"`: SentencePiece BPE (https://github.com/google/sentencepiece). Spaces
  become `▁`, one `▁` is prepended when `tokenizer.ggml.add_space_prefix` (default true) says so,
  characters outside the vocabulary fall back to `<0xNN>` byte tokens, and the merge order is rebuilt
  from the piece scores (a merge ranks by the score of the piece it makes) unless the file lists merges.

Token types follow llama.cpp (`gguf.TokenType`): CONTROL (3) and UNKNOWN (2) tokens become special added
tokens, USER_DEFINED (4) tokens plain added tokens; both are matched whole in the text, never normalized.

Public API:
    gguf_tokenizer_json(metadata) -> dict        the tokenizer.json content
    gguf_tokenizer_config(metadata) -> dict      the tokenizer_config.json content
    save_gguf_tokenizer(metadata, out_dir) -> list[Path]

Example:
    >>> from aprender.format.gguf import read_gguf
    >>> with read_gguf("model.gguf") as g:
    ...     save_gguf_tokenizer(g.metadata, "out/")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from aprender.atomic import atomic_write_json
from aprender.errors import ConversionError
from aprender.format.llama_cpp_pre import ADDS_BOS, IGNORE_MERGES, PRE_TOKENIZERS

__all__ = [
    "PRE_TOKENIZERS",
    "SUPPORTED_TOKENIZER_MODELS",
    "gguf_tokenizer_config",
    "gguf_tokenizer_json",
    "save_gguf_tokenizer",
]

# llama.cpp token types (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_SPECIAL = (_UNKNOWN, _CONTROL)

SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")


def _required(metadata: Mapping[str, Any], key: str) -> Any:
    if key not in metadata:
        raise ConversionError(f"GGUF metadata has no {key!r}; the tokenizer cannot be rebuilt without it")
    return metadata[key]


def _token_id(metadata: Mapping[str, Any], name: str) -> int | None:
    value = metadata.get(f"tokenizer.ggml.{name}_token_id")
    return None if value is None else int(value)


def _tokenizer_model(metadata: Mapping[str, Any]) -> str:
    kind = str(_required(metadata, "tokenizer.ggml.model"))
    if kind not in SUPPORTED_TOKENIZER_MODELS:
        raise ConversionError(
            f"GGUF tokenizer.ggml.model {kind!r} is not supported; supported: {', '.join(SUPPORTED_TOKENIZER_MODELS)}"
        )
    return kind


def _token(tokens: Sequence[str], token_id: int | None, name: str) -> str | None:
    if token_id is None:
        return None
    if not 0 <= token_id < len(tokens):
        raise ConversionError(
            f"GGUF tokenizer.ggml.{name}_token_id {token_id} is outside the vocabulary of {len(tokens)} tokens"
        )
    return tokens[token_id]


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (Radford et al. 2019, GPT-2 `encoder.py`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level_spelling(token: str, alphabet: dict[int, str], letters: set[str]) -> str:
    """A normal token written with raw characters is respelled in the byte alphabet."""
    if set(token) <= letters:
        return token
    return "".join(alphabet[b] for b in token.encode("utf-8"))


def _merge_pairs(merges: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for merge in merges:
        left, sep, right = str(merge).partition(" ")
        if not sep or not left or not right:
            raise ConversionError(f"GGUF tokenizer.ggml.merges entry {merge!r} is not two tokens separated by a space")
        pairs.append((left, right))
    return pairs


def _scored_merges(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges from piece scores: every split of a normal piece into two normal pieces.

    SentencePiece merges, at each step, the adjacent pair whose joined piece scores highest; an HF BPE
    model merges the pair of lowest rank. Ranking merges by the joined piece's score (best first, ties
    in vocabulary order) makes the two agree.
    """
    normal = {tok: i for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)) if kind == _NORMAL}
    candidates = []
    for piece, index in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                candidates.append((-float(scores[index]), index, normal[left], left, right))
    candidates.sort()
    return [(left, right) for *_, left, right in candidates]


def _byte_level_model(metadata: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    spelled = [
        tok if kind in (_CONTROL, _USER_DEFINED) else _byte_level_spelling(tok, alphabet, letters)
        for tok, kind in zip(tokens, types, strict=True)
    ]
    merges = _merge_pairs(_required(metadata, "tokenizer.ggml.merges"))
    vocab = {tok: i for i, tok in enumerate(spelled)}
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=pre in IGNORE_MERGES)
    )
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre not in PRE_TOKENIZERS:
        raise ConversionError(
            f"GGUF tokenizer.ggml.pre {pre!r} is not supported; supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    splits: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in PRE_TOKENIZERS[pre]
    ]
    splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(splits)


def _sentencepiece_model(metadata: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    if "tokenizer.ggml.merges" in metadata:
        merges = _merge_pairs(metadata["tokenizer.ggml.merges"])
    else:
        scores = [float(s) for s in _required(metadata, "tokenizer.ggml.scores")]
        merges = _scored_merges(tokens, types, scores)
    unk = _token(tokens, _token_id(metadata, "unknown"), "unknown")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _add_typed_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control/unknown tokens -> special added tokens; user-defined -> plain added tokens (matched whole)."""
    typed = list(zip(tokens, types, strict=True))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in typed if k in _SPECIAL])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in typed if k == _USER_DEFINED])


def _post_processor(metadata: Mapping[str, Any], tokens: list[str]) -> processors.TemplateProcessing:
    """`[BOS] $A [EOS]` with each end present only when the file asks for it."""
    ends: dict[str, tuple[str, int]] = {}
    for name in ("bos", "eos"):
        if _adds(metadata, name):
            token_id = _token_id(metadata, name)
            token = _token(tokens, token_id, name)
            if token is None or token_id is None:
                raise ConversionError(
                    f"GGUF tokenizer.ggml.add_{name}_token is true but tokenizer.ggml.{name}_token_id is missing"
                )
            ends[name] = (token, token_id)
    first = [f"{ends['bos'][0]}:0"] if "bos" in ends else []
    last = [f"{ends['eos'][0]}:0"] if "eos" in ends else []
    single = [*first, "$A:0", *last]
    pair = [*single, *(p.replace(":0", ":1") for p in first), "$B:1", *(p.replace(":0", ":1") for p in last)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(ends.values()))


def _adds(metadata: Mapping[str, Any], name: str) -> bool:
    """llama.cpp's default: a SentencePiece or Llama 3 vocabulary adds BOS unless told otherwise; nothing else is."""
    kind, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre")
    llama3 = kind == "gpt2" and pre in ADDS_BOS and _token_id(metadata, "bos") is not None
    default = name == "bos" and (kind == "llama" or llama3)
    return bool(metadata.get(f"tokenizer.ggml.add_{name}_token", default))


def _vocabulary(metadata: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    tokens = [str(t) for t in _required(metadata, "tokenizer.ggml.tokens")]
    raw_types = metadata.get("tokenizer.ggml.token_type")
    types = [_NORMAL] * len(tokens) if raw_types is None else [int(k) for k in raw_types]
    if len(types) != len(tokens):
        raise ConversionError(
            f"GGUF tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens; the file is corrupt"
        )
    return tokens, types


def gguf_tokenizer_json(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Build the `tokenizer.json` content that reproduces a GGUF file's tokenizer.

    Args:
        metadata: GGUF metadata (`GGUFFile.metadata`): `tokenizer.ggml.model`, `.tokens`, `.token_type`,
            `.merges` (gpt2; optional for llama), `.scores` (llama without merges), `.pre`,
            `.add_space_prefix`, `.add_bos_token`/`.add_eos_token` and the `*_token_id` keys.

    Returns:
        The JSON document as a dict, loadable with `tokenizers.Tokenizer.from_str(json.dumps(...))`.

    Raises:
        ConversionError: an unsupported `tokenizer.ggml.model` or `.pre`, a missing required key, or
            inconsistent vocabulary arrays.
    """
    kind = _tokenizer_model(metadata)
    tokens, types = _vocabulary(metadata)
    if kind == "gpt2":
        tokenizer = _byte_level_model(metadata, tokens, types)
    else:
        tokenizer = _sentencepiece_model(metadata, tokens, types)
    _add_typed_tokens(tokenizer, tokens, types)
    tokenizer.post_processor = _post_processor(metadata, tokens)
    document: dict[str, Any] = json.loads(tokenizer.to_str())
    return document


def gguf_tokenizer_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Build the `tokenizer_config.json` content for a GGUF file's tokenizer.

    Args:
        metadata: GGUF metadata: the `tokenizer.ggml.*_token_id` keys, `tokenizer.ggml.add_bos_token`,
            `tokenizer.ggml.add_eos_token`, `tokenizer.chat_template` and `{arch}.context_length`.

    Returns:
        `tokenizer_class` (PreTrainedTokenizerFast: the tokenizer.json is used as written),
        `bos_token`/`eos_token`/`unk_token`/`pad_token` (strings or None), `add_bos_token`/`add_eos_token`
        (llama.cpp defaults: BOS for a SentencePiece or Llama 3 vocabulary, nothing otherwise),
        `clean_up_tokenization_spaces` (False: decoding gives the text back), plus `chat_template` and
        `model_max_length` when the file has them.

    Raises:
        ConversionError: a missing vocabulary or a special token id outside it.
    """
    _tokenizer_model(metadata)
    tokens, _ = _vocabulary(metadata)
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        config[f"{name}_token"] = _token(tokens, _token_id(metadata, key), key)
    config["add_bos_token"] = _adds(metadata, "bos")
    config["add_eos_token"] = _adds(metadata, "eos")
    config["clean_up_tokenization_spaces"] = False
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = str(metadata["tokenizer.chat_template"])
    context = metadata.get(f"{metadata.get('general.architecture')}.context_length")
    if context is not None:
        config["model_max_length"] = int(context)
    return config


def _write_json(path: Path, content: Mapping[str, Any]) -> Path:
    atomic_write_json(path, content)
    return path


def save_gguf_tokenizer(metadata: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write `tokenizer.json` and `tokenizer_config.json` for a GGUF file's tokenizer into `out_dir`.

    Both files are built before either is written, and each is written atomically.

    Args:
        metadata: GGUF metadata (see `gguf_tokenizer_json` and `gguf_tokenizer_config`).
        out_dir: target folder, created when missing.

    Returns:
        The two paths written: `[tokenizer.json, tokenizer_config.json]`.

    Raises:
        ConversionError: see `gguf_tokenizer_json`.
    """
    document = gguf_tokenizer_json(metadata)
    config = gguf_tokenizer_config(metadata)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _write_json(folder / "tokenizer.json", document),
        _write_json(folder / "tokenizer_config.json", config),
    ]
