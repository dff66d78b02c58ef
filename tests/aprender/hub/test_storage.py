"""The local Hub's storage: atomic commits, content-addressed blobs, safe paths, git-compatible oids."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from huggingface_hub.utils.sha import git_hash
from hypothesis import given
from hypothesis import strategies as st

from aprender.errors import HubNotFoundError
from aprender.hub import storage
from aprender.hub.repo_id import RepoId
from aprender.hub.storage import FileEntry, RepoStore, StorageError, git_blob_oid, lfs_pointer, validate_repo_path

REPO = RepoId("alice", "m")


def _entry(store: RepoStore, data: bytes) -> FileEntry:
    return FileEntry(size=len(data), sha256=store.put_bytes(data), oid=git_blob_oid(data), lfs=False)


@pytest.fixture
def store(tmp_path: Path) -> RepoStore:
    s = RepoStore(tmp_path / "root")
    assert s.create(REPO, private=False, author="alice")
    return s


@given(st.binary(max_size=300))
def test_git_oid_matches_huggingface_hub(data: bytes) -> None:
    # Oracle: huggingface_hub's git_hash is `git hash-object`.
    assert git_blob_oid(data) == git_hash(data)


def test_lfs_pointer_is_the_git_lfs_spec_text() -> None:
    sha = "a" * 64
    assert lfs_pointer(sha, 12) == f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize 12\n".encode()


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a\\b",
        "C:/x",
        "a/.git/config",
        "a\x00b",
        "x" * 1025,
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(StorageError, match="invalid path"):
        validate_repo_path(path)


@given(st.lists(st.sampled_from(["a", "b.txt", "..", "."]), min_size=1, max_size=5))
def test_paths_with_dot_segments_never_pass(segments: list[str]) -> None:
    path = "/".join(segments)
    if ".." in segments or "." in segments:
        with pytest.raises(StorageError):
            validate_repo_path(path)
    else:
        assert validate_repo_path(path) == path


def test_create_is_idempotent_and_starts_empty(store: RepoStore) -> None:
    assert not store.create(REPO, private=True, author="alice")
    assert store.is_private(REPO) is False
    head = store.resolve(REPO, "main")
    assert head.files == {} and head.parent is None and store.resolve(REPO, head.id) == head
    assert store.created_at(REPO).endswith("Z")


def test_commit_chain_and_blob_dedup(store: RepoStore) -> None:
    first = store.resolve(REPO, "main").id
    a = _entry(store, b"hello")
    sha1 = store.commit(REPO, "main", {"x/a.txt": a, "b.txt": a}, title="t", description="d", author="alice")
    c1 = store.resolve(REPO, "main")
    assert c1.id == sha1 and c1.parent == first and set(c1.files) == {"x/a.txt", "b.txt"}
    # both paths share one blob named by the content's sha256
    assert a.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert len(list((store.root / "objects").rglob("*"))) == 2  # one shard folder + one blob
    sha2 = store.commit(REPO, "main", {"b.txt": None}, title="rm", description="", author="alice")
    assert set(store.resolve(REPO, "main").files) == {"x/a.txt"} and store.resolve(REPO, sha1).id == sha1
    assert sha2 != sha1 and store.branches(REPO) == {"main": sha2}


def test_failed_commit_leaves_previous_revision(store: RepoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    before = store.commit(REPO, "main", {"a": _entry(store, b"1")}, title="t", description="", author="alice")
    real = storage.atomic_write_json

    def crash_on_refs(path: Path, data: object) -> None:
        if path.name == "refs.json":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(storage, "atomic_write_json", crash_on_refs)
    with pytest.raises(OSError, match="disk full"):
        store.commit(REPO, "main", {"a": _entry(store, b"2")}, title="t", description="", author="alice")
    monkeypatch.undo()
    head = store.resolve(REPO, "main")
    assert head.id == before and b"".join(store.iter_blob(head.files["a"].sha256)) == b"1"
    assert json.loads((store.root / "repos/alice/m/refs.json").read_text()) == {"main": before}


def test_commit_refusals(store: RepoStore) -> None:
    head = store.resolve(REPO, "main").id
    kwargs = {"title": "t", "description": "", "author": "alice"}
    with pytest.raises(HubNotFoundError, match="branch 'dev'"):
        store.commit(REPO, "dev", {}, **kwargs)
    with pytest.raises(StorageError, match="is not the head"):
        store.commit(REPO, "main", {}, parent="0" * 40, **kwargs)
    with pytest.raises(HubNotFoundError, match="no such file"):
        store.commit(REPO, "main", {"missing": None}, **kwargs)
    ghost = FileEntry(size=1, sha256="b" * 64, oid="c" * 40, lfs=True)
    with pytest.raises(StorageError, match="was not uploaded"):
        store.commit(REPO, "main", {"w": ghost}, **kwargs)
    with pytest.raises(StorageError, match="invalid path"):
        store.commit(REPO, "main", {"../w": _entry(store, b"x")}, **kwargs)
    assert store.resolve(REPO, "main").id == head
    with pytest.raises(HubNotFoundError, match="revision"):
        store.resolve(REPO, "f" * 40)


def test_put_stream_verifies_hash_and_length(store: RepoStore) -> None:
    data = b"x" * 3000
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(StorageError, match="expected"):
        store.put_stream(io.BytesIO(data), len(data), "0" * 64)
    with pytest.raises(StorageError, match="ended after 3000 of 3001"):
        store.put_stream(io.BytesIO(data), 3001, sha)
    assert [p for p in (store.root / "objects").rglob("*") if p.is_file()] == []  # no blob, no temp file left
    store.put_stream(io.BytesIO(data), 3000, sha)
    assert store.has_blob(sha, 3000) and not store.has_blob(sha, 2999)
    assert b"".join(store.iter_blob(sha, 10, 20)) == data[10:20]
    with pytest.raises(StorageError, match="invalid sha256"):
        store.blob_path("../../etc")


def test_lfs_markers_are_per_repo(store: RepoStore) -> None:
    other = RepoId("bob", "m")
    store.create(other, private=True, author="bob")
    data = b"weights"
    sha = store.put_bytes(data)
    store.mark_lfs_object(REPO, sha)
    assert store.has_lfs_object(REPO, sha, len(data)) and not store.has_lfs_object(other, sha, len(data))


def test_delete_moves_out_then_removes(store: RepoStore) -> None:
    store.delete(REPO)
    assert not store.exists(REPO) and list((store.root / "tmp").iterdir()) == []
    with pytest.raises(HubNotFoundError):
        store.delete(REPO)


def test_iter_blob_stops_at_end_of_file(store: RepoStore) -> None:
    sha = store.put_bytes(b"abc")
    assert b"".join(store.iter_blob(sha, 1, 10)) == b"bc"
