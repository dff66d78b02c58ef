"""Merging models whose vocabularies differ: one output tokenizer, and every input's token rows moved to it.

With a ``tokenizer_source`` (mergekit's YAML key) the output vocabulary is the base model's tokenizer
(``base``; the first model's without a base), one model's (a model reference), or the base's plus every
other model's tokens (``union``). Each tokenizer is first "stripped" of the ids at or beyond its model's
``config.json`` ``vocab_size`` (rows the model does not have). Every input gets a permutation, matched by
token string, from output ids to its own rows; `align_rows` then rebuilds an embedding or LM head in the
output order. A token an input lacks takes the row of the only model that has it, else the base's row
when the base has it, else the mean of the rows of the models that have it, else zeros; rows added to
pad the vocabulary to a multiple hold each input's mean row (https://nlp.stanford.edu/~johnhew/vocab-expansion.html).

This follows mergekit 0.1.5 (``mergekit/tokenizer/build.py``, ``embed.py``), except that a union adds the
new tokens of each model in id order, where mergekit's order follows a hash map's (it varies per run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend
from torch import Tensor

from aprender.constants import CONFIG_NAME, TOKENIZER_FILE
from aprender.text import Tokenizer
from entrenar.errors import MergeError

__all__ = ["MergedVocabulary", "TokenizerSource", "align_rows", "build_vocabulary", "check_vocabularies"]

TokenizerSource = Literal["base", "union"] | int
"""``base``, ``union``, or the index of the model whose tokenizer is used."""


@dataclass(frozen=True)
class MergedVocabulary:
    """The output vocabulary of a merge and where each input's rows go in it.

    Attributes:
        tokenizer: The output tokenizer (save it with ``tokenizer.save(folder)``).
        size: Rows of the output embedding and LM head (`num_tokens`, padded); the output ``vocab_size``.
        permutations: Per input (in input order), int64 (size,): output id -> that input's row, -1 when the
            input lacks the token (and on padding rows).
        num_tokens: Ids of the output tokenizer; rows from here to `size` are padding.
        names: The inputs' names (for messages).
    """

    tokenizer: Tokenizer
    size: int
    permutations: tuple[Tensor, ...]
    num_tokens: int
    names: tuple[str, ...]


def check_vocabularies(sizes: Sequence[int], names: Sequence[str], tokenizer_source: str | None) -> None:
    """Refuse to merge models with different vocabulary sizes unless a tokenizer source says how.

    Args:
        sizes: Each model's ``vocab_size``.
        names: Each model's name, in the same order.
        tokenizer_source: The config's ``tokenizer_source`` (None when unset).

    Raises:
        MergeError: The sizes differ and no tokenizer source is set; the message names each model's size.
    """
    if tokenizer_source is not None or len(set(sizes)) <= 1:
        return
    listed = ", ".join(f"{name}: {size}" for name, size in zip(names, sizes, strict=True))
    raise MergeError(
        f"the models' vocabularies differ ({listed}); set tokenizer_source (base, union or a model) to merge them"
    )


def build_vocabulary(
    folders: Sequence[Path],
    names: Sequence[str],
    base_index: int | None,
    source: TokenizerSource,
    *,
    pad_to_multiple_of: int | None = None,
) -> MergedVocabulary:
    """Build the output tokenizer and each input's permutation to it, as mergekit's ``tokenizer_source``.

    A model folder without ``tokenizer.json`` is taken to share the base model's tokenizer (as mergekit does).

    Args:
        folders: Each input's model folder (``config.json`` and tokenizer files).
        names: Each input's name, in the same order.
        base_index: The base model's index, or None (then ``base`` means the first model).
        source: ``base``, ``union``, or the index of the model whose (unstripped) tokenizer is used.
        pad_to_multiple_of: Pad the output rows to a multiple of this (mergekit's ``tokenizer.pad_to_multiple_of``).

    Returns:
        The merged vocabulary.

    Raises:
        MergeError: A config.json cannot be read, a tokenizer to strip is not BPE, or the output ids have gaps.
        TokenizerError: The base's or the source model's tokenizer is missing or invalid.
    """
    head = 0 if base_index is None else base_index
    base = Tokenizer.from_dir(folders[head])
    declared = [_config_vocab_size(folder) for folder in folders]
    base = _stripped(base, declared[head], names[head])
    # A model folder without a tokenizer shares the base's, as in mergekit.
    tokenizers = [
        base if index == head or not (folder / TOKENIZER_FILE).is_file() else Tokenizer.from_dir(folder)
        for index, folder in enumerate(folders)
    ]
    vocabs = [tok.backend.get_vocab(with_added_tokens=True) for tok in tokenizers]
    limits = [len(vocab) if size is None else size for vocab, size in zip(vocabs, declared, strict=True)]
    if source == "base":
        output = base
    elif source == "union":
        order = [head, *(i for i, f in enumerate(folders) if i != head and (f / TOKENIZER_FILE).is_file())]
        output = _union(base, [(tokenizers[i], limits[i]) for i in order])
    else:
        output = Tokenizer.from_dir(folders[source])  # unstripped, as mergekit loads a model source
    vocab = output.backend.get_vocab(with_added_tokens=True)
    if set(vocab.values()) != set(range(len(vocab))):
        raise MergeError(f"the output tokenizer (tokenizer_source {source!r}) has gaps in its ids; use another source")
    size = len(vocab)
    if pad_to_multiple_of:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    permutations = tuple(
        _permutation(vocab, model_vocab, limit, size) for model_vocab, limit in zip(vocabs, limits, strict=True)
    )
    return MergedVocabulary(output, size, permutations, len(vocab), tuple(names))


def align_rows(
    tensors: Sequence[Tensor], vocab: MergedVocabulary, base_index: int | None, axis: int = 0
) -> list[Tensor]:
    """Re-index each input's token rows (embedding or LM head) to the output vocabulary.

    Args:
        tensors: One tensor per input, in input order, with one row per token along `axis`.
        vocab: The merged vocabulary.
        base_index: The base model's index in `tensors`, or None.
        axis: The token axis.

    Returns:
        One tensor per input with `vocab.size` rows along `axis` (their promoted dtype).

    Raises:
        MergeError: The tensors disagree beyond the token axis, or one has fewer rows than its vocabulary uses.
    """
    views = [tensor.movedim(axis, 0) for tensor in tensors]
    shapes = [tuple(view.shape) for view in views]
    if len(views) != len(vocab.permutations) or len({shape[1:] for shape in shapes}) > 1:
        raise MergeError(f"token rows of shapes {shapes} cannot be aligned for inputs {list(vocab.names)}")
    for name, view, permutation in zip(vocab.names, views, vocab.permutations, strict=True):
        if int(permutation.max()) >= view.shape[0]:
            raise MergeError(f"{name}: {view.shape[0]} token rows but its tokenizer uses id {int(permutation.max())}")
    dtype = reduce(torch.promote_types, (view.dtype for view in views))
    n = vocab.num_tokens
    table = torch.stack(vocab.permutations)[:, :n].to(views[0].device)
    present = table >= 0
    lacking = (~present.all(dim=0)).nonzero().squeeze(1)
    fallback = _fallback_rows(
        [view[row.clamp(min=0)].to(dtype) for view, row in zip(views, table[:, lacking], strict=True)],
        present[:, lacking],
        base_index,
    )
    aligned = []
    for view, row, has in zip(views, table, present, strict=True):
        out = view[row.clamp(min=0)].to(dtype)
        absent = ~has[lacking]
        out[lacking[absent]] = fallback[absent]
        if vocab.size > n:
            out = torch.cat([out, out.mean(dim=0, keepdim=True).expand(vocab.size - n, *out.shape[1:])])
        aligned.append(out.movedim(0, axis))
    return aligned


def _fallback_rows(rows: list[Tensor], present: Tensor, base_index: int | None) -> Tensor:
    """Rows for tokens some input lacks: the base's when it has the token, else the mean of those that have it.

    The mean over one model is that model's row and over none is zeros. `rows`: per input (k, ...);
    `present`: (inputs, k).
    """
    shape = (-1,) + (1,) * (rows[0].dim() - 1)
    total = torch.zeros_like(rows[0])
    for row, has in zip(rows, present, strict=True):
        total = torch.where(has.view(shape), total + row, total)
    mean = total / present.sum(dim=0).clamp(min=1).view(shape).to(total.dtype)
    if base_index is None:
        return mean
    return torch.where(present[base_index].view(shape), rows[base_index], mean)


def _stripped(tokenizer: Tokenizer, limit: int | None, name: str) -> Tokenizer:
    """`tokenizer` without its ids at or beyond `limit` (rows its model lacks), with the merges using them."""
    unused = {
        token
        for token, token_id in tokenizer.backend.get_vocab(with_added_tokens=True).items()
        if limit is not None and token_id >= limit
    }
    if not unused:
        return tokenizer
    document: dict[str, Any] = json.loads(tokenizer.backend.to_str())
    model = document["model"]
    if model["type"] != "BPE":
        raise MergeError(
            f"{name}: its {model['type']} tokenizer has ids beyond config.json vocab_size {limit}; "
            "only a BPE tokenizer can be trimmed, use another tokenizer_source"
        )
    document["added_tokens"] = [entry for entry in document["added_tokens"] if entry["id"] < limit]
    model["vocab"] = {token: token_id for token, token_id in model["vocab"].items() if token not in unused}
    model["merges"] = [
        pair for pair in model["merges"] if unused.isdisjoint(pair.split(" ") if isinstance(pair, str) else pair)
    ]
    return tokenizer.with_backend(Backend.from_str(json.dumps(document)))


def _union(base: Tokenizer, models: Sequence[tuple[Tokenizer, int]]) -> Tokenizer:
    """The base tokenizer plus each model's tokens below its limit (base first, then in input order).

    New plain tokens are added first (as plain added tokens), then tokens that any model has as added
    tokens, with the settings of the first model that has them (mergekit's ``build_union_tokenizer``).
    """
    plain: dict[str, None] = {}
    added: dict[str, AddedToken] = {}
    for tokenizer, limit in models:
        by_id = sorted(tokenizer.backend.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
        plain.update(dict.fromkeys(token for token, token_id in by_id if token_id < limit))
        for token_id, token in sorted(tokenizer.backend.get_added_tokens_decoder().items()):
            if token_id < limit:
                added.setdefault(str(token.content), token)
    known = base.backend.get_vocab(with_added_tokens=True)
    backend = Backend.from_str(base.backend.to_str())
    backend.add_tokens([token for token in plain if token not in known and token not in added])
    backend.add_tokens(list(added.values()))
    return base.with_backend(backend)


def _permutation(output: dict[str, int], model: dict[str, int], limit: int, size: int) -> Tensor:
    """Output id -> the model's id of the same token, -1 where it lacks it or its id is not below `limit`."""
    table = [-1] * size
    for token, out_id in output.items():
        model_id = model.get(token, limit)
        if model_id < limit:
            table[out_id] = model_id
    return torch.tensor(table, dtype=torch.int64)


def _config_vocab_size(folder: Path) -> int | None:
    """``vocab_size`` (or ``text_config.vocab_size``) of a model folder's config.json; None when it has none."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MergeError(f"{path}: cannot be read as JSON ({err}); every merged model needs its config.json") from err
    for holder in (config, config.get("text_config")):
        if isinstance(holder, dict) and isinstance(holder.get("vocab_size"), int):
            return int(holder["vocab_size"])
    return None
