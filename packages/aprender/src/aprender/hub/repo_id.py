"""Hugging Face repo ids: ``namespace/name``, validated once at the edge.

The rules are the Hub's (mirrored by ``huggingface_hub.utils.validate_repo_id``,
https://huggingface.co/docs/hub/repositories-getting-started): each part is 1-96 ASCII characters
from ``[A-Za-z0-9._-]``, does not start or end with ``-`` or ``.``, and contains neither ``--`` nor
``..``; the name does not end with ``.git``. We require the namespace (a user or an organisation):
a bare ``gpt2`` is ambiguous for uploads, and the server keys ownership on it.

Example:
    >>> RepoId.parse("me/qwen-finetuned").namespace
    'me'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aprender.errors import InvalidRepoIdError

__all__ = ["RepoId", "validate_repo_id"]

_MAX_PART = 96
_PART = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)


@dataclass(frozen=True)
class RepoId:
    """A validated repo id.

    Attributes:
        namespace: user or organisation that owns the repo.
        name: repo name inside the namespace.
    """

    namespace: str
    name: str

    @classmethod
    def parse(cls, repo_id: str) -> RepoId:
        """Validate ``repo_id`` and split it.

        Args:
            repo_id: ``"namespace/name"``.

        Returns:
            The parsed id.

        Raises:
            InvalidRepoIdError: the id breaks one of the Hub's naming rules (the message says which).
        """
        if not isinstance(repo_id, str):
            raise InvalidRepoIdError(f"repo id must be a string like 'me/my-model', got {type(repo_id).__name__}")
        parts = repo_id.split("/")
        if len(parts) != 2:
            raise InvalidRepoIdError(
                f"repo id {repo_id!r} must be 'namespace/name' with exactly one '/', e.g. 'me/my-model'"
            )
        for label, part in zip(("namespace", "name"), parts, strict=True):
            _check_part(repo_id, label, part)
        if parts[1].endswith(".git"):
            raise InvalidRepoIdError(f"repo id {repo_id!r}: the name must not end with '.git'; drop the suffix")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def _check_part(repo_id: str, label: str, part: str) -> None:
    if not part or len(part) > _MAX_PART:
        raise InvalidRepoIdError(f"repo id {repo_id!r}: the {label} must have 1 to {_MAX_PART} characters")
    if not _PART.fullmatch(part):
        raise InvalidRepoIdError(
            f"repo id {repo_id!r}: the {label} {part!r} may only use letters, digits, '-', '_' and '.'"
        )
    if part[0] in "-." or part[-1] in "-.":
        raise InvalidRepoIdError(f"repo id {repo_id!r}: the {label} {part!r} must not start or end with '-' or '.'")
    if "--" in part or ".." in part:
        raise InvalidRepoIdError(f"repo id {repo_id!r}: the {label} {part!r} must not contain '--' or '..'")


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` unchanged if it is a valid ``namespace/name``.

    Args:
        repo_id: the id to check.

    Returns:
        The same string.

    Raises:
        InvalidRepoIdError: see `RepoId.parse`.
    """
    return str(RepoId.parse(repo_id))
