"""The endpoints of the local Hub, independent of the HTTP plumbing in `aprender.hub.server`.

Each endpoint takes a `Request` and returns a `Response` or raises `HttpError`. What they answer
is what ``huggingface_hub`` (the source of truth) sends and parses: ``hf_api.py`` (whoami,
create/delete repo, validate-yaml, model info, tree), ``_commit_api.py`` (preupload, NDJSON
commit), ``lfs.py`` (LFS batch API, basic transfer: https://github.com/git-lfs/git-lfs/blob/main/docs/api/batch.md)
and ``file_download.py`` (``HEAD``/``GET`` resolve with ``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``, ``X-Linked-Size``). Error responses carry ``X-Error-Code``
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message``, which the
client maps to its own exceptions.

Access rules: a request with an unknown token gets 401; reading a private repo needs its owner's
token (anyone else gets the same 404 as for a missing repo); writing needs a token whose user is
the repo's namespace (403 otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import quote, urlencode

from aprender.errors import HubNotFoundError, InvalidRepoIdError
from aprender.hub.gitignore import is_ignored
from aprender.hub.repo_id import RepoId
from aprender.hub.storage import (
    Commit,
    FileEntry,
    RepoStore,
    StorageError,
    git_blob_oid,
    lfs_pointer,
    validate_repo_path,
)

__all__ = ["REGULAR_FILE_LIMIT", "RESERVED_NAMESPACES", "HttpError", "HubApi", "Request", "Response"]

REGULAR_FILE_LIMIT = 10 * 1024 * 1024  # larger files, and binary ones, go through LFS (as on the Hub)
MAX_API_BODY = 256 * 1024 * 1024  # JSON / NDJSON request bodies
_INVALID_TOKEN = "Invalid credentials in Authorization header"  # the client keys on this exact text
RESERVED_NAMESPACES = frozenset({"api", "lfs"})  # first path segments of our own routes
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The model-file suffixes of the Hub's default .gitattributes: always LFS, whatever their bytes.
LFS_SUFFIXES = frozenset(
    {
        ".bin",
        ".safetensors",
        ".gguf",
        ".pt",
        ".pth",
        ".ckpt",
        ".h5",
        ".onnx",
        ".msgpack",
        ".model",
        ".npy",
        ".npz",
        ".pkl",
        ".pickle",
        ".parquet",
        ".arrow",
        ".zip",
        ".tar",
        ".gz",
        ".tgz",
        ".zst",
        ".xz",
        ".7z",
        ".bz2",
        ".ot",
        ".tflite",
        ".joblib",
        ".mlmodel",
    }
)


class HttpError(Exception):
    """An error answer: status, message and optional ``X-Error-Code``/extra headers/body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


@dataclass
class Request:
    """A parsed request. ``read_body(limit)`` returns the whole body or raises 411/413; ``stream`` is the raw body."""

    method: str
    query: dict[str, str]
    token: str | None
    base_url: str
    read_body: Callable[[int], bytes]
    stream: IO[bytes]
    content_length: int | None
    range_header: str | None = None


@dataclass
class Response:
    """An answer: a JSON document (``data``), or with ``raw`` ``length`` bytes from ``chunks`` (None for HEAD)."""

    status: int = 200
    data: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False
    chunks: Iterator[bytes] | None = None
    length: int = 0


def _json(req: Request) -> Any:
    try:
        return json.loads(req.read_body(MAX_API_BODY) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from exc


def _repo_not_found(repo: str) -> HttpError:
    return HttpError(404, f"Repository {repo} not found", code="RepoNotFound")


class HubApi:
    """Endpoint implementations over a `RepoStore`.

    Args:
        store: repo storage.
        users: user name -> token.
        max_file_size: largest file accepted, in bytes (larger uploads get 413).
        secret: key that signs LFS upload URLs (the PUT carries no Authorization header).
        url_ttl_s: lifetime of a signed upload URL.
    """

    def __init__(
        self, store: RepoStore, users: Mapping[str, str], *, max_file_size: int, secret: bytes, url_ttl_s: float
    ) -> None:
        self.store = store
        self._tokens = {token: user for user, token in users.items()}
        self.max_file_size = max_file_size
        self._secret = secret
        self._ttl = url_ttl_s

    # -- access --------------------------------------------------------------------------------

    def user(self, req: Request) -> str | None:
        """The user behind the request's token; None without a token; 401 for an unknown token."""
        if req.token is None:
            return None
        for token, user in self._tokens.items():
            if hmac.compare_digest(token.encode(), req.token.encode()):
                return user
        raise HttpError(401, _INVALID_TOKEN)

    def _writer(self, req: Request) -> str:
        user = self.user(req)
        if user is None:
            raise HttpError(401, "Authentication required: send a token with write access")
        return user

    def _repo(self, req: Request, namespace: str, name: str) -> RepoId:
        user = self.user(req)  # an unknown token is refused even where none is needed
        try:
            repo = RepoId.parse(f"{namespace}/{name}")
        except InvalidRepoIdError as exc:
            raise HttpError(400, str(exc)) from exc
        if not self.store.exists(repo) or (self.store.is_private(repo) and user != repo.namespace):
            raise _repo_not_found(str(repo))
        return repo

    def _writable(self, req: Request, namespace: str, name: str) -> tuple[RepoId, str]:
        user = self._writer(req)
        repo = self._repo(req, namespace, name)
        if user != repo.namespace:
            raise HttpError(403, f"user {user} has no write access to {repo}")
        return repo, user

    def _commit(self, repo: RepoId, revision: str) -> Commit:
        try:
            return self.store.resolve(repo, revision)
        except HubNotFoundError as exc:
            raise HttpError(404, str(exc), code="RevisionNotFound") from exc

    # -- account and repos ---------------------------------------------------------------------

    def whoami(self, req: Request) -> Response:
        """``GET /api/whoami-v2``."""
        user = self._writer(req)
        token_info = {"displayName": "local", "role": "write"}
        return Response(
            data={
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": token_info},
            }
        )

    def create_repo(self, req: Request) -> Response:
        """``POST /api/repos/create`` with ``{"name", "organization", "visibility"|"private", "type"}``."""
        user = self._writer(req)
        body = _json(req)
        if not isinstance(body, dict) or body.get("type", "model") not in ("model", None):
            raise HttpError(400, "only model repos are served here: send {'name': ..., 'type': 'model'}")
        namespace = body.get("organization") or user
        try:
            repo = RepoId.parse(f"{namespace}/{body.get('name')}")
        except InvalidRepoIdError as exc:
            raise HttpError(400, str(exc)) from exc
        if repo.namespace in RESERVED_NAMESPACES:
            raise HttpError(400, f"namespace {repo.namespace!r} is reserved")
        if user != repo.namespace:
            raise HttpError(403, f"You don't have the rights to create a model under the namespace {repo.namespace}")
        private = body.get("visibility") == "private" or body.get("private") is True
        url = f"{req.base_url}/{repo}"
        if not self.store.create(repo, private=private, author=user):
            raise HttpError(409, f"You already created this model repo: {repo}", extra={"url": url})
        return Response(data={"url": url, "name": str(repo), "id": str(repo)})

    def delete_repo(self, req: Request) -> Response:
        """``DELETE /api/repos/delete`` with ``{"name", "organization"}``."""
        body = _json(req)
        if not isinstance(body, dict):
            raise HttpError(400, "send {'name': ..., 'organization': ...}")
        repo, _ = self._writable(req, str(body.get("organization") or self._writer(req)), str(body.get("name")))
        self.store.delete(repo)
        return Response(data={})

    def validate_yaml(self, req: Request) -> Response:
        """``POST /api/validate-yaml``: the README front matter must be closed by a ``---`` line."""
        self.user(req)
        body = _json(req)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise HttpError(400, "send {'content': <README.md text>}")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            message = "README.md metadata starts with '---' but no closing '---' line follows"
            return Response(400, {"errors": [{"message": message}], "warnings": []})
        return Response(data={"errors": [], "warnings": []})

    def model_info(self, req: Request, namespace: str, name: str, rev: str = "main") -> Response:
        """``GET /api/models/{repo}[/revision/{rev}]``: ``sha``, ``private``, ``siblings`` (sizes with ``blobs``)."""
        repo = self._repo(req, namespace, name)
        commit = self._commit(repo, rev)
        blobs = req.query.get("blobs", "").lower() in ("1", "true")
        siblings = [_sibling(path, entry, blobs) for path, entry in sorted(commit.files.items())]
        data: dict[str, Any] = {"id": str(repo), "modelId": str(repo), "author": repo.namespace, "sha": commit.id}
        data |= {"private": self.store.is_private(repo), "disabled": False, "gated": False, "tags": []}
        data |= {"lastModified": commit.date, "createdAt": self.store.created_at(repo), "siblings": siblings}
        return Response(data=data)

    def tree(self, req: Request, namespace: str, name: str, rev: str, path: str = "") -> Response:
        """``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true|false``: files and directories."""
        repo = self._repo(req, namespace, name)
        commit = self._commit(repo, rev)
        prefix = f"{_safe_path(path)}/" if path else ""
        recursive = req.query.get("recursive", "").lower() in ("1", "true")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, entry in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(folder.encode(), usedforsecurity=False).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[file_path] = _tree_file(file_path, entry)
        if path and not entries:
            raise HttpError(404, f"{path!r} is not a folder of {repo}@{rev}", code="EntryNotFound")
        return Response(data=list(entries.values()))

    # -- uploads -------------------------------------------------------------------------------

    def preupload(self, req: Request, namespace: str, name: str, rev: str) -> Response:
        """``POST /api/models/{repo}/preupload/{rev}``: ``uploadMode``, ``shouldIgnore`` and current ``oid``."""
        repo, _ = self._writable(req, namespace, name)
        _refuse_pull_requests(req)
        commit = self._commit(repo, rev)
        body = _json(req)
        if not isinstance(body, dict) or not isinstance(body.get("files"), list):
            raise HttpError(400, "send {'files': [{'path', 'sample', 'size'}, ...]}")
        gitignore = body.get("gitIgnore")
        if gitignore is None and ".gitignore" in commit.files:
            gitignore = b"".join(self.store.iter_blob(commit.files[".gitignore"].sha256)).decode("utf-8", "replace")
        answers = []
        for item in body["files"]:
            path, size = _safe_path(item.get("path")), item.get("size")
            if not isinstance(size, int) or size < 0:
                raise HttpError(400, f"file {path!r}: 'size' must be a non-negative integer")
            self._check_size(path, size)
            sample = base64.b64decode(item.get("sample") or "")
            lfs = size > REGULAR_FILE_LIMIT or PurePosixPath(path).suffix in LFS_SUFFIXES or b"\0" in sample
            current = commit.files.get(path)
            answer: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular"}
            answer["shouldIgnore"] = bool(gitignore) and is_ignored(path, str(gitignore))
            if current is not None:
                answer["oid"] = current.sha256 if current.lfs else current.oid
            answers.append(answer)
        return Response(data={"files": answers, "commitOid": commit.id})

    def lfs_batch(self, req: Request, namespace: str, name: str) -> Response:
        """``POST /{repo}.git/info/lfs/objects/batch`` (upload, basic transfer): signed upload + verify hrefs."""
        repo, _ = self._writable(req, namespace, name)
        body = _json(req)
        if not isinstance(body, dict) or body.get("operation") != "upload" or not isinstance(body.get("objects"), list):
            raise HttpError(400, "only {'operation': 'upload', 'objects': [...]} is served; downloads use /resolve/")
        if "basic" not in body.get("transfers", ["basic"]):
            raise HttpError(400, "only the 'basic' LFS transfer is served")
        objects = [self._batch_object(req, repo, obj) for obj in body["objects"]]
        return Response(data={"transfer": "basic", "objects": objects}, headers={"Content-Type": _LFS_JSON})

    def _batch_object(self, req: Request, repo: RepoId, obj: Any) -> dict[str, Any]:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not isinstance(oid, str) or not _SHA256.fullmatch(oid) or not isinstance(size, int) or size < 0:
            error = {"code": 422, "message": "oid must be a sha256 hex digest and size a non-negative integer"}
            return {"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error}
        if size > self.max_file_size:
            message = f"object of {size} bytes exceeds the {self.max_file_size}-byte limit"
            return {"oid": oid, "size": size, "error": {"code": 413, "message": message}}
        if self.store.has_lfs_object(repo, oid, size):
            return {"oid": oid, "size": size}
        expires = int(time.time() + self._ttl)
        query = urlencode({"size": size, "expires": expires, "sig": self._sign(repo, oid, size, expires)})
        upload = {"href": f"{req.base_url}/lfs/{repo}/{oid}?{query}"}
        verify = {"href": f"{req.base_url}/{repo}.git/info/lfs/objects/verify"}
        return {"oid": oid, "size": size, "authenticated": True, "actions": {"upload": upload, "verify": verify}}

    def _sign(self, repo: RepoId, oid: str, size: int, expires: int) -> str:
        message = f"{repo}\n{oid}\n{size}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def lfs_upload(self, req: Request, namespace: str, name: str, oid: str) -> Response:
        """``PUT /lfs/{repo}/{oid}?size&expires&sig``: the signed basic-transfer upload (no token is sent)."""
        try:
            repo = RepoId.parse(f"{namespace}/{name}")
            size, expires = int(req.query["size"]), int(req.query["expires"])
        except (InvalidRepoIdError, KeyError, ValueError) as exc:
            raise HttpError(400, "malformed upload URL: ask the LFS batch endpoint for a new one") from exc
        good = hmac.compare_digest(self._sign(repo, oid, size, expires), req.query.get("sig", ""))
        if not good or expires < time.time() or not self.store.exists(repo):
            raise HttpError(403, "invalid or expired upload signature: ask the LFS batch endpoint for a new URL")
        if req.content_length != size:
            raise HttpError(400, f"upload of {oid}: Content-Length {req.content_length} differs from size {size}")
        self._check_size(oid, size)
        try:
            self.store.put_stream(req.stream, size, oid)
        except StorageError as exc:
            raise HttpError(400, str(exc)) from exc
        self.store.mark_lfs_object(repo, oid)
        return Response(data={})

    def lfs_verify(self, req: Request, namespace: str, name: str) -> Response:
        """``POST /{repo}.git/info/lfs/objects/verify`` with ``{"oid", "size"}``."""
        repo, _ = self._writable(req, namespace, name)
        body = _json(req)
        oid, size = (body.get("oid"), body.get("size")) if isinstance(body, dict) else (None, None)
        if not isinstance(oid, str) or not _SHA256.fullmatch(oid) or not isinstance(size, int):
            raise HttpError(400, "send {'oid': <sha256>, 'size': <int>}")
        if not self.store.has_lfs_object(repo, oid, size):
            raise HttpError(404, f"LFS object {oid} ({size} bytes) was not uploaded to {repo}")
        return Response(data={"success": True})

    def commit(self, req: Request, namespace: str, name: str, rev: str) -> Response:
        """``POST /api/models/{repo}/commit/{rev}``: NDJSON lines ``header``, then ``file``, ``lfsFile``,
        ``deletedFile`` or ``deletedFolder``; the new revision becomes visible atomically."""
        repo, user = self._writable(req, namespace, name)
        _refuse_pull_requests(req)
        head = self._commit(repo, rev)
        lines = [line for line in req.read_body(MAX_API_BODY).splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"commit body is not NDJSON: {exc}") from exc
        if not items or not isinstance(items[0], dict) or items[0].get("key") != "header":
            raise HttpError(400, "the first NDJSON line must be {'key': 'header', 'value': {'summary': ...}}")
        header = items[0].get("value") or {}
        changes: dict[str, FileEntry | None] = {}
        for item in items[1:]:
            changes.update(self._operation(repo, head, item))
        try:
            sha = self.store.commit(
                repo,
                rev,
                changes,
                title=str(header.get("summary") or "update"),
                description=str(header.get("description") or ""),
                author=user,
                parent=header.get("parentCommit"),
            )
        except HubNotFoundError as exc:
            raise HttpError(404, str(exc), code="EntryNotFound") from exc
        except StorageError as exc:
            raise HttpError(412 if "parent commit" in str(exc) else 400, str(exc)) from exc
        return Response(data={"success": True, "commitOid": sha, "commitUrl": f"{req.base_url}/{repo}/commit/{sha}"})

    def _operation(self, repo: RepoId, head: Commit, item: Any) -> dict[str, FileEntry | None]:
        key, value = (item.get("key"), item.get("value")) if isinstance(item, dict) else (None, None)
        if not isinstance(value, dict):
            raise HttpError(400, f"NDJSON line {item!r} lacks a 'value' object")
        raw_path = value.get("path")
        path = _safe_path(raw_path.rstrip("/") if key == "deletedFolder" and isinstance(raw_path, str) else raw_path)
        if key == "file":
            return {path: self._regular_file(path, value)}
        if key == "lfsFile":
            oid = str(value.get("oid"))
            size = value.get("size")
            size = size if isinstance(size, int) else self._blob_size(oid)
            if value.get("algo", "sha256") != "sha256" or not self.store.has_lfs_object(repo, oid, size):
                raise HttpError(400, f"LFS object {oid} for {path!r} was not uploaded to {repo}: upload it first")
            return {path: FileEntry(size=size, sha256=oid, oid=git_blob_oid(lfs_pointer(oid, size)), lfs=True)}
        if key == "deletedFile":
            return {path: None}
        if key == "deletedFolder":
            inside = {p: None for p in head.files if p.startswith(path + "/")}
            if not inside:
                raise HttpError(404, f"cannot delete folder {path!r}: it holds no files", code="EntryNotFound")
            return dict(inside)
        raise HttpError(400, f"unknown commit operation {key!r}: use file, lfsFile, deletedFile or deletedFolder")

    def _regular_file(self, path: str, value: Mapping[str, Any]) -> FileEntry:
        if value.get("encoding") != "base64" or not isinstance(value.get("content"), str):
            raise HttpError(400, f"file {path!r}: send base64 'content' with 'encoding': 'base64'")
        try:
            data = base64.b64decode(value["content"], validate=True)
        except ValueError as exc:
            raise HttpError(400, f"file {path!r}: content is not valid base64") from exc
        self._check_size(path, len(data))
        if len(data) > REGULAR_FILE_LIMIT:
            raise HttpError(400, f"file {path!r} has {len(data)} bytes: files over {REGULAR_FILE_LIMIT} go through LFS")
        sha = self.store.put_bytes(data)
        return FileEntry(size=len(data), sha256=sha, oid=git_blob_oid(data), lfs=False)

    def _blob_size(self, oid: str) -> int:
        try:
            path = self.store.blob_path(oid)
        except StorageError as exc:
            raise HttpError(400, str(exc)) from exc
        return path.stat().st_size if path.is_file() else -1

    def _check_size(self, what: str, size: int) -> None:
        if size > self.max_file_size:
            raise HttpError(413, f"{what!r} has {size} bytes; this server accepts at most {self.max_file_size}")

    # -- downloads -----------------------------------------------------------------------------

    def resolve(self, req: Request, namespace: str, name: str, rev: str, path: str) -> Response:
        """``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with the headers the cache keys on."""
        repo = self._repo(req, namespace, name)
        commit = self._commit(repo, rev)
        entry = commit.files.get(_safe_path(path))
        if entry is None:
            headers = {"X-Repo-Commit": commit.id}
            raise HttpError(404, f"{path!r} not found in {repo}@{rev}", code="EntryNotFound", headers=headers)
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes"}
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"
        if entry.lfs:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
        start, end, status = _byte_range(req, entry.size)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        chunks = self.store.iter_blob(entry.sha256, start, end) if req.method == "GET" else None
        return Response(status, headers=headers, raw=True, chunks=chunks, length=end - start)


_LFS_JSON = "application/vnd.git-lfs+json"


def _safe_path(path: Any) -> str:
    try:
        return validate_repo_path(path if isinstance(path, str) else "")
    except StorageError as exc:
        raise HttpError(400, str(exc)) from exc


def _refuse_pull_requests(req: Request) -> None:
    if req.query.get("create_pr"):
        raise HttpError(400, "pull requests are not served here: commit to a branch")


def _sibling(path: str, entry: FileEntry, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": path}
    lfs = {"size": entry.size, "sha256": entry.sha256, "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
    return {"rfilename": path, "size": entry.size, "blobId": entry.oid} | ({"lfs": lfs} if entry.lfs else {})


def _tree_file(path: str, entry: FileEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        item["lfs"] = {
            "oid": entry.sha256,
            "size": entry.size,
            "pointerSize": len(lfs_pointer(entry.sha256, entry.size)),
        }
    return item


def _byte_range(req: Request, size: int) -> tuple[int, int, int]:
    """``(start, end_exclusive, status)`` for a single ``Range: bytes=a-b|a-|-n`` header (RFC 9110 §14)."""
    header = req.range_header
    if not header:
        return 0, size, 200
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or match.group(1) == match.group(2) == "":
        raise HttpError(416, f"unsupported Range {header!r}: send one 'bytes=start-end' range")
    first, last = match.groups()
    start = size - int(last) if first == "" else int(first)
    end = size if first == "" or last == "" else min(int(last) + 1, size)
    if start < 0 or start >= size or end <= start:
        raise HttpError(
            416, f"Range {header!r} is outside the file ({size} bytes)", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end, 206
