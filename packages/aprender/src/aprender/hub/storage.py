"""On-disk storage of the local Hub: repos, commits and content-addressed blobs.

Layout under ``root``::

    objects/ab/abcdef...          blob bytes, named by their sha256 (shared by all repos)
    tmp/                          staging: new repos are built here, deleted ones moved here before removal
    repos/<namespace>/<name>/
        repo.json                 {"private": bool, "createdAt": iso}
        refs.json                 {"main": "<commit sha1>"}     <- the only mutable pointer
        commits/<sha1>.json       {"id", "parent", "title", "description", "author", "date", "files": {...}}
        lfs/<sha256>              marker: this LFS object was uploaded through this repo

Every file is written with `aprender.atomic` (temp sibling, fsync, rename). A commit writes its
blobs, then its manifest, then replaces ``refs.json``. A crash or error anywhere before that last
rename leaves the previous revision intact and visible; the rename itself is atomic (POSIX
``rename(2)``). File paths in a
repo are keys of the manifest, never filesystem paths, and are validated by `validate_repo_path`.

Git compatibility: ``oid`` of a regular file is its git blob sha1; an LFS file's ``oid`` is the git
sha1 of its pointer file (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md) and its
``lfs.oid`` the sha256 of the content, as the Hub reports them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from aprender.atomic import atomic_write, atomic_write_bytes, atomic_write_json
from aprender.errors import HubError, HubNotFoundError
from aprender.hub.repo_id import RepoId

__all__ = [
    "Commit",
    "FileEntry",
    "RepoStore",
    "StorageError",
    "git_blob_oid",
    "lfs_pointer",
    "validate_repo_path",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_BRANCH = re.compile(r"[A-Za-z0-9._-]{1,100}")
_MAX_PATH = 1024
_CHUNK = 1 << 20


class StorageError(HubError):
    """A request to the store is invalid (bad path, missing LFS object, stale parent commit)."""


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1 of ``data``: sha1(b"blob <size>\\0" + data) (https://git-scm.com/book/en/v2/Git-Internals-Git-Objects)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file for a blob (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def validate_repo_path(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a repo.

    Args:
        path: a file path as sent by a client.

    Returns:
        The same path.

    Raises:
        StorageError: empty, absolute, with ``..``/``.``/empty segments, backslashes, control
            characters, a drive letter, a ``.git`` segment, or longer than 1024 characters.
    """
    bad = (
        not path
        or len(path) > _MAX_PATH
        or path.startswith("/")
        or "\\" in path
        or re.match(r"^[A-Za-z]:", path) is not None
        or any(ord(c) < 32 or ord(c) == 127 for c in path)
    )
    if bad or any(seg in ("", ".", "..", ".git") for seg in path.split("/")):
        raise StorageError(f"invalid path in repo {path!r}: use a relative path without '..', '.' or empty segments")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One file of a revision.

    Attributes:
        size: content size in bytes.
        sha256: content sha256 (names the blob in ``objects/``).
        oid: git oid (blob sha1 of the content, or of the LFS pointer when ``lfs``).
        lfs: stored through LFS.
    """

    size: int
    sha256: str
    oid: str
    lfs: bool


@dataclass(frozen=True)
class Commit:
    """A revision: metadata plus the full file manifest ``path -> FileEntry``."""

    id: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: Mapping[str, FileEntry]


class RepoStore:
    """Repos, commits and blobs under one root folder. Thread-safe; mutations are serialised.

    Args:
        root: the data folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        for sub in ("objects", "tmp", "repos"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- blobs -----------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        """Path of the blob named ``sha256`` (which must be 64 lowercase hex digits)."""
        if not _SHA256.fullmatch(sha256):
            raise StorageError(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
        return self.root / "objects" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int) -> bool:
        """Whether the blob exists with exactly ``size`` bytes."""
        path = self.blob_path(sha256)
        return path.is_file() and path.stat().st_size == size

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.blob_path(sha)
        if not target.is_file():
            target.parent.mkdir(exist_ok=True)
            atomic_write_bytes(target, data)
        return sha

    def put_stream(self, stream: IO[bytes], size: int, expected_sha256: str) -> None:
        """Copy exactly ``size`` bytes from ``stream`` into the blob ``expected_sha256``, verifying the hash.

        Raises:
            StorageError: the stream ended early or its sha256 differs (nothing is stored then).
        """
        target = self.blob_path(expected_sha256)
        target.parent.mkdir(exist_ok=True)

        def copy(out: IO[bytes]) -> None:
            digest, remaining = hashlib.sha256(), size
            while remaining > 0:
                chunk = stream.read(min(_CHUNK, remaining))
                if not chunk:
                    raise StorageError(f"upload of {expected_sha256} ended after {size - remaining} of {size} bytes")
                digest.update(chunk)
                out.write(chunk)
                remaining -= len(chunk)
            if digest.hexdigest() != expected_sha256:
                raise StorageError(f"uploaded content has sha256 {digest.hexdigest()}, expected {expected_sha256}")

        atomic_write(target, copy)

    # -- repos -----------------------------------------------------------------------------------

    def _repo_dir(self, repo: RepoId) -> Path:
        RepoId.parse(str(repo))  # re-validate: the folder name must never carry '..' or '/'
        return self.root / "repos" / repo.namespace / repo.name

    def exists(self, repo: RepoId) -> bool:
        """Whether the repo exists."""
        return (self._repo_dir(repo) / "refs.json").is_file()

    def is_private(self, repo: RepoId) -> bool:
        """The repo's visibility (the repo must exist)."""
        data = json.loads((self._repo_dir(repo) / "repo.json").read_text(encoding="utf-8"))
        return bool(data["private"])

    def created_at(self, repo: RepoId) -> str:
        """ISO creation time of the repo."""
        return str(json.loads((self._repo_dir(repo) / "repo.json").read_text(encoding="utf-8"))["createdAt"])

    def create(self, repo: RepoId, *, private: bool, author: str) -> bool:
        """Create the repo with an empty initial commit on ``main``.

        Returns:
            False if it already existed (nothing changed), True if created.
        """
        with self._lock:
            target = self._repo_dir(repo)
            if target.exists():
                return False
            staging = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="repo-"))
            (staging / "commits").mkdir()
            (staging / "lfs").mkdir()
            now = _now()
            atomic_write_json(staging / "repo.json", {"private": private, "createdAt": now})
            initial = self._write_commit(staging, None, "initial commit", "", author, {})
            atomic_write_json(staging / "refs.json", {"main": initial})
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
            return True

    def delete(self, repo: RepoId) -> None:
        """Delete the repo (moved out of ``repos/`` atomically, then removed).

        Raises:
            HubNotFoundError: no such repo.
        """
        with self._lock:
            source = self._repo_dir(repo)
            if not source.exists():
                raise HubNotFoundError(f"repo {repo} does not exist")
            trash = self.root / "tmp" / f"deleted-{uuid.uuid4().hex}"
            os.rename(source, trash)
            shutil.rmtree(trash)

    def branches(self, repo: RepoId) -> dict[str, str]:
        """Branch name -> head commit sha."""
        return dict(json.loads((self._repo_dir(repo) / "refs.json").read_text(encoding="utf-8")))

    def resolve(self, repo: RepoId, revision: str) -> Commit:
        """Resolve a branch name or a full 40-hex commit sha to its commit.

        Raises:
            HubNotFoundError: the revision does not exist in this repo.
        """
        branches = self.branches(repo)
        sha = branches.get(revision) or (revision if _COMMIT.fullmatch(revision) else None)
        path = self._repo_dir(repo) / "commits" / f"{sha}.json"
        if sha is None or not path.is_file():
            raise HubNotFoundError(f"revision {revision!r} not found in repo {repo}")
        data = json.loads(path.read_text(encoding="utf-8"))
        data["files"] = {p: FileEntry(**e) for p, e in data["files"].items()}
        return Commit(**data)

    def has_lfs_object(self, repo: RepoId, sha256: str, size: int) -> bool:
        """Whether the LFS object ``sha256`` was uploaded through ``repo`` and is stored with ``size`` bytes."""
        marker = self._repo_dir(repo) / "lfs" / sha256
        return marker.is_file() and self.has_blob(sha256, size)

    def mark_lfs_object(self, repo: RepoId, sha256: str) -> None:
        """Record that ``repo`` may reference the LFS object ``sha256``."""
        self.blob_path(sha256)  # validates the name
        (self._repo_dir(repo) / "lfs" / sha256).touch()

    def commit(
        self,
        repo: RepoId,
        branch: str,
        changes: Mapping[str, FileEntry | None],
        *,
        title: str,
        description: str,
        author: str,
        parent: str | None = None,
    ) -> str:
        """Apply ``changes`` (path -> new entry, or None to delete) on top of ``branch`` atomically.

        Args:
            repo: target repo.
            branch: an existing branch.
            changes: blobs of new entries must already be stored.
            title: commit summary.
            description: commit body.
            author: user name recorded in the commit.
            parent: if given, the commit is refused unless the branch head is this sha.

        Returns:
            The new commit sha.

        Raises:
            HubNotFoundError: the branch does not exist, or a deleted path is absent.
            StorageError: ``parent`` is stale, or a blob is missing.
        """
        with self._lock:
            branches = self.branches(repo)
            if branch not in branches or not _BRANCH.fullmatch(branch):
                raise HubNotFoundError(f"branch {branch!r} not found in repo {repo}")
            head = branches[branch]
            if parent is not None and parent != head:
                raise StorageError(f"parent commit {parent} is not the head of {branch} ({head}): fetch and retry")
            files = dict(self.resolve(repo, head).files)
            for path, entry in changes.items():
                if entry is None:
                    if files.pop(validate_repo_path(path), None) is None:
                        raise HubNotFoundError(f"cannot delete {path!r}: no such file in {repo}@{branch}")
                elif not self.has_blob(entry.sha256, entry.size):
                    raise StorageError(f"content of {path!r} ({entry.sha256}) was not uploaded")
                else:
                    files[validate_repo_path(path)] = entry
            sha = self._write_commit(self._repo_dir(repo), head, title, description, author, files)
            branches[branch] = sha
            atomic_write_json(self._repo_dir(repo) / "refs.json", branches)
            return sha

    def _write_commit(
        self, repo_dir: Path, parent: str | None, title: str, description: str, author: str, files: dict[str, FileEntry]
    ) -> str:
        body = {p: asdict(e) for p, e in sorted(files.items())}
        date = _now()
        seed = json.dumps([parent, title, description, author, date, body, uuid.uuid4().hex], sort_keys=True)
        sha = hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()
        record = {
            "id": sha,
            "parent": parent,
            "title": title,
            "description": description,
            "author": author,
            "date": date,
            "files": body,
        }
        atomic_write_json(repo_dir / "commits" / f"{sha}.json", record)
        return sha

    def iter_blob(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` of a blob in chunks."""
        with self.blob_path(sha256).open("rb") as f:
            f.seek(start)
            remaining = (end if end is not None else os.fstat(f.fileno()).st_size) - start
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk


def _now() -> str:
    return datetime.fromtimestamp(time.time(), tz=timezone.utc).isoformat().replace("+00:00", "Z")
