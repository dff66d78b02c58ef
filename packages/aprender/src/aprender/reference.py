"""Model references: what a string naming a model is, and the local Hugging Face folder it stands for.

Every entry point that takes a model (a config's ``model.path``, ``entrenar init --base``, ``generate
--model``, ``publish --base-model``, ``from_pretrained``) classifies it with `classify_model_reference`,
by one rule, in this order:

1. an existing path (``~`` expanded; relative to `base_dir`, default the working directory) is local: a
   folder is a model folder, a ``.gguf`` file (any case) a GGUF model; any other file is refused;
2. otherwise a Hub repo id: ``namespace/name`` by the Hub's naming rules (`aprender.hub.repo_id`) whose
   name does not end in a file suffix (`aprender.constants.FILE_SUFFIXES`: ``Qwen/Qwen2.5-0.5B`` is an
   id, ``org/model.gguf`` is not);
3. anything else is refused.

A bare name such as ``gpt2`` is not an id: the Hub still redirects a few legacy ids without a namespace,
but the repo-id rule requires one (as uploads do), so ``openai-community/gpt2`` is the spelling to use.

`resolve_model_folder` then gives the local folder in the Hugging Face layout: a folder as it is, a Hub id
downloaded into the standard HF cache (`aprender.hub.download`), a GGUF file converted once
(`aprender.format.convert.convert_gguf_to_hf`, float32, lossless for every GGUF type) into
``$HF_ASSETS_CACHE/aprender/gguf/<stem>-<key>/`` (``HF_ASSETS_CACHE`` defaults to ``$HF_HOME/assets``,
huggingface_hub's home for files libraries derive). The key hashes the file's resolved path, size and
modification time and aprender's version: a stat instead of reading gigabytes on every run; a file
rewritten in place, or a new converter, gets a new folder. The conversion runs in a temporary folder
renamed into place, so a folder that exists is complete.

Example:
    >>> classify_model_reference("Qwen/Qwen2.5-0.5B")
    ModelReference(kind='hub', location='Qwen/Qwen2.5-0.5B')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aprender import __version__
from aprender.constants import (
    CONFIG_FILES,
    CONFIG_NAME,
    FILE_SUFFIXES,
    GGUF_SUFFIX,
    MODEL_FILE_PATTERNS,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
    TOKENIZER_FILE_PATTERNS,
)
from aprender.errors import InvalidArgumentError, InvalidRepoIdError, ModelReferenceError

__all__ = [
    "ModelReference",
    "classify_model_reference",
    "gguf_cache_folder",
    "is_on_this_machine",
    "looks_like_repo_id",
    "resolve_model_folder",
]

ReferenceKind = Literal["folder", "gguf", "hub"]
_EXAMPLE_ID = "'Qwen/Qwen2.5-0.5B'"
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelReference:
    """A classified model reference.

    Attributes:
        kind: ``"folder"``, ``"gguf"`` or ``"hub"``.
        location: the absolute, normalised path (folder, gguf) or the repo id (hub).
    """

    kind: ReferenceKind
    location: str


def _shown(reference: str) -> str:
    """The reference as a message shows it: quoted when empty, padded or holding control characters."""
    return reference if reference and reference.isprintable() and reference == reference.strip() else repr(reference)


def _local_path(reference: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None) -> str:
    return os.path.normpath(os.path.join(base_dir or os.getcwd(), os.path.expanduser(os.fspath(reference))))


def _is_repo_id(text: str) -> bool:
    """The repo-id rule alone (no file system): a valid ``namespace/name`` whose name has no file suffix."""
    if text.count("/") != 1 or os.path.splitext(text)[1].lower() in FILE_SUFFIXES:
        return False
    from aprender.hub.repo_id import validate_repo_id  # the hub package imports huggingface_hub

    try:
        validate_repo_id(text)
    except InvalidRepoIdError:
        return False
    return True


def classify_model_reference(
    reference: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None
) -> ModelReference:
    """Decide what a model reference is, without network access (module docstring: the rule).

    Args:
        reference: a folder, a ``.gguf`` file or a Hub repo id; a `os.PathLike` is only ever a path.
        base_dir: the folder relative paths start from; default the working directory.

    Returns:
        The kind and location.

    Raises:
        ModelReferenceError: empty, an existing file other than ``.gguf``, or neither a path nor a repo id.
    """
    text = os.fspath(reference)
    if not text.strip():
        raise ModelReferenceError(
            f"{_shown(text)}: is empty; pass a model folder, a .gguf file or a Hub repo id like {_EXAMPLE_ID}",
            reference=text,
            problem="empty",
        )
    local = _local_path(text, base_dir)
    if os.path.isdir(local):
        return ModelReference("folder", local)
    if os.path.exists(local):
        if os.path.isfile(local) and local.lower().endswith(GGUF_SUFFIX):
            return ModelReference("gguf", local)
        raise ModelReferenceError(
            f"{_shown(text)}: is a file; pass the model folder holding config.json, or a .gguf file",
            reference=text,
            problem="file",
        )
    if isinstance(reference, str) and _is_repo_id(reference):
        return ModelReference("hub", reference)
    raise ModelReferenceError(
        f"{_shown(text)}: no such folder, and not a Hub repo id like {_EXAMPLE_ID}; check the path or the id",
        reference=text,
        problem="missing",
    )


def looks_like_repo_id(text: str) -> bool:
    """Whether `classify_model_reference` takes `text` for a Hub repo id (not an existing path, the repo-id rule).

    Args:
        text: a user-supplied model reference.

    Returns:
        True for e.g. ``"Qwen/Qwen2.5-0.5B"``; False for ``"./model"``, ``"a/b.safetensors"``, existing paths.
    """
    return isinstance(text, str) and not os.path.exists(_local_path(text, None)) and _is_repo_id(text)


def resolve_model_folder(
    reference: str | os.PathLike[str] | ModelReference,
    revision: str | None = None,
    *,
    weights: bool = True,
    tokenizer: bool = True,
    extra_files: Sequence[str] = (),
) -> Path:
    """The local Hugging Face folder a model reference stands for, downloading or converting it first.

    Args:
        reference: as `classify_model_reference` takes it (relative to the working directory), or its result.
        revision: branch, tag or commit of a Hub repo id; must be None for a local reference.
        weights: Hub only: also fetch the safetensors weights (False: ``config.json`` and
            ``generation_config.json``).
        tokenizer: Hub only: also fetch the tokenizer files (`aprender.constants.TOKENIZER_FILE_PATTERNS`).
        extra_files: Hub only: more download patterns (e.g. ``README.md``).

    Returns:
        A folder as it is; a Hub id's snapshot in the HF cache; a GGUF file's converted folder (see
        `gguf_cache_folder`), converted on first use.

    Raises:
        ModelReferenceError: see `classify_model_reference`.
        InvalidArgumentError: a `revision` with a local reference.
        HubError: the download failed (see `aprender.hub.download`).
        ConversionError, FormatError: the GGUF file cannot be converted.
    """
    ref = reference if isinstance(reference, ModelReference) else classify_model_reference(reference)
    if ref.kind == "hub":
        from aprender.hub import download

        patterns = [*(MODEL_FILE_PATTERNS if weights else CONFIG_FILES), *extra_files]
        return download(ref.location, revision, [*patterns, *(TOKENIZER_FILE_PATTERNS if tokenizer else ())])
    if revision is not None:
        raise InvalidArgumentError(
            f"revision {revision!r} applies to Hub repo ids, but {ref.location} is a local path; drop the revision"
        )
    return _converted_gguf(Path(ref.location)) if ref.kind == "gguf" else Path(ref.location)


def is_on_this_machine(reference: ModelReference, revision: str | None = None) -> bool:
    """Whether `resolve_model_folder` (weights included) finds the model here, without downloading or converting.

    A folder always is; a GGUF file once converted (`gguf_cache_folder` exists); a Hub id when the HF cache
    holds ``config.json`` and the safetensors weights (every shard an index lists) for `revision`. No request
    is made, so a branch is judged by the commit the cache last saw for it.

    Args:
        reference: a classified reference (`classify_model_reference`).
        revision: the Hub revision (default ``main``); ignored for a local reference.

    Returns:
        True when nothing needs fetching or converting.
    """
    if reference.kind == "folder":
        return True
    if reference.kind == "gguf":
        return gguf_cache_folder(reference.location).is_dir()
    from aprender.hub import cached_file

    def cached(name: str) -> Path | None:
        return cached_file(reference.location, name, revision)

    if cached(CONFIG_NAME) is None:
        return False
    index = cached(SAFETENSORS_INDEX_FILE)
    if index is None:
        return cached(SAFETENSORS_SINGLE_FILE) is not None
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False  # a broken index: let the download replace it
    return all(cached(str(shard)) is not None for shard in shards)


def gguf_cache_folder(gguf_path: str | os.PathLike[str]) -> Path:
    """Where `resolve_model_folder` keeps the conversion of a GGUF file (module docstring: the key).

    Args:
        gguf_path: an existing ``.gguf`` file.

    Returns:
        ``$HF_ASSETS_CACHE/aprender/gguf/<stem>-<key>`` (it may not exist yet).
    """
    from aprender.hub.token import hf_home

    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{__version__}".encode()).hexdigest()[:16]
    assets = os.environ.get("HF_ASSETS_CACHE")
    root = Path(os.path.expandvars(assets)).expanduser() if assets else hf_home() / "assets"
    return root / "aprender" / "gguf" / f"{path.stem}-{key}"


def _converted_gguf(gguf_path: Path) -> Path:
    """The cached conversion of `gguf_path`, made on first use in a temporary folder renamed into place."""
    target = gguf_cache_folder(gguf_path)
    if target.is_dir():
        return target
    from aprender.format.convert import convert_gguf_to_hf

    _LOG.info("converting %s into %s (once; later runs reuse it)", gguf_path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert_gguf_to_hf(gguf_path, staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # else another process renamed the same conversion into place first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
