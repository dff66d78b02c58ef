"""The local Hub's HTTP surface, probed with raw requests (http.client sends paths byte for byte)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, RepoFile, constants
from huggingface_hub.errors import BadRequestError, HfHubHTTPError

from aprender.errors import InvalidArgumentError
from aprender.hub import HubServer
from aprender.hub import api as api_module
from aprender.hub.api import REGULAR_FILE_LIMIT
from aprender.hub.repo_id import RepoId
from fixtures.hub import LocalHub


def _call(
    hub: LocalHub,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    host = urlsplit(hub.url)
    conn = http.client.HTTPConnection(host.hostname or "", host.port, timeout=10)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, response, payload


def _api(hub: LocalHub, user: str) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.tokens[user])


def _ndjson(*items: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _header(summary: str = "test", **extra: Any) -> dict[str, Any]:
    return {"key": "header", "value": {"summary": summary, "description": "", **extra}}


def _file(path: str, data: bytes) -> dict[str, Any]:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def _commit(
    hub: LocalHub, repo: str, *lines: dict[str, Any], user: str = "alice", rev: str = "main"
) -> tuple[int, Any]:
    status, _, body = _call(hub, "POST", f"/api/models/{repo}/commit/{rev}", _ndjson(*lines), hub.tokens[user])
    return status, json.loads(body)


def _head(hub: LocalHub, repo: str = "alice/m") -> str:
    return hub.server.store.branches(RepoId.parse(repo))["main"]


def _snapshot(folder: Path, skip: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file() and skip not in p.parents}


@pytest.fixture(autouse=True)
def _lfs_uploads(monkeypatch: pytest.MonkeyPatch) -> None:
    """HfApi used directly reads HF_HUB_DISABLE_XET at import: pin it so uploads take the LFS path."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def repo(local_hub: LocalHub) -> str:
    _api(local_hub, "alice").create_repo("alice/m")
    return "alice/m"


def test_whoami_and_bad_tokens(local_hub: LocalHub) -> None:
    assert _api(local_hub, "bob").whoami()["name"] == "bob"
    status, response, _ = _call(local_hub, "GET", "/api/whoami-v2", token="nope")
    assert status == 401 and response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert _call(local_hub, "GET", "/api/whoami-v2")[0] == 401
    _api(local_hub, "bob").create_repo("bob/public")
    assert _call(local_hub, "GET", "/api/models/bob/public")[0] == 200
    assert _call(local_hub, "GET", "/api/models/bob/public", token="nope")[0] == 401  # even for public data
    assert _call(local_hub, "GET", "/api/nothing-here")[0] == 404


def test_create_conflict_carries_url_and_delete(local_hub: LocalHub, repo: str) -> None:
    status, _, body = _call(local_hub, "POST", "/api/repos/create", {"name": "m"}, local_hub.tokens["alice"])
    assert status == 409 and json.loads(body)["url"] == f"{local_hub.url}/alice/m"
    api = _api(local_hub, "alice")
    assert api.create_repo(repo, exist_ok=True) == f"{local_hub.url}/alice/m"
    cases: list[tuple[dict[str, Any] | list[Any], int]] = [
        ({"name": "x", "type": "dataset"}, 400),
        ({"name": "a..b"}, 400),
        ([1], 400),
        ({"name": "x", "organization": "bob"}, 403),
        ({"name": "x", "organization": "api"}, 400),
    ]
    for payload, code in cases:
        assert _call(local_hub, "POST", "/api/repos/create", payload, local_hub.tokens["alice"])[0] == code
    bob_status = _call(
        local_hub, "DELETE", "/api/repos/delete", {"name": "m", "organization": "alice"}, local_hub.tokens["bob"]
    )
    assert bob_status[0] == 403
    assert _call(local_hub, "DELETE", "/api/repos/delete", [], local_hub.tokens["alice"])[0] == 400
    api.delete_repo(repo)
    assert not local_hub.server.store.exists(RepoId.parse(repo))


def test_model_info_tree_and_blobs(local_hub: LocalHub, repo: str) -> None:
    api = _api(local_hub, "alice")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)
    api.upload_file(path_or_fileobj=b"\0" * 100, path_in_repo="w/a/b.bin", repo_id=repo)
    info = api.model_info(repo, files_metadata=True)
    sizes = {s.rfilename: (s.size, s.lfs is not None) for s in info.siblings or []}
    assert info.sha == _head(local_hub) and sizes == {"config.json": (2, False), "w/a/b.bin": (100, True)}
    assert api.model_info(repo, revision=info.sha).sha == info.sha
    top = {(e.path, type(e).__name__) for e in api.list_repo_tree(repo)}
    assert top == {("config.json", "RepoFile"), ("w", "RepoFolder")}
    deep = {e.path for e in api.list_repo_tree(repo, recursive=True)}
    assert deep == {"config.json", "w", "w/a", "w/a/b.bin"}
    assert {e.path for e in api.list_repo_tree(repo, path_in_repo="w/a")} == {"w/a/b.bin"}
    lfs_file = next(e for e in api.list_repo_tree(repo, path_in_repo="w/a"))
    assert isinstance(lfs_file, RepoFile) and lfs_file.lfs is not None
    assert lfs_file.lfs.sha256 == hashlib.sha256(b"\0" * 100).hexdigest() and lfs_file.lfs.size == 100
    status, response, _ = _call(local_hub, "GET", f"/api/models/{repo}/tree/main/nope")
    assert status == 404 and response.headers["X-Error-Code"] == "EntryNotFound"
    status, response, _ = _call(local_hub, "GET", f"/api/models/{repo}/revision/dev")
    assert status == 404 and response.headers["X-Error-Code"] == "RevisionNotFound"


def test_resolve_headers_range_and_missing(local_hub: LocalHub, repo: str) -> None:
    api = _api(local_hub, "alice")
    data = bytes(range(256)) * 4
    api.upload_file(path_or_fileobj=data, path_in_repo="d/w.bin", repo_id=repo)
    head = _head(local_hub)
    sha256 = hashlib.sha256(data).hexdigest()
    status, response, body = _call(local_hub, "HEAD", f"/{repo}/resolve/main/d/w.bin")
    assert status == 200 and body == b"" and response.headers["X-Repo-Commit"] == head
    assert response.headers["X-Linked-Etag"] == f'"{sha256}"' and response.headers["X-Linked-Size"] == "1024"
    assert response.headers["Content-Length"] == "1024" and response.headers["ETag"].startswith('"')
    status, response, body = _call(
        local_hub, "GET", f"/{repo}/resolve/{head}/d/w.bin", headers={"Range": "bytes=10-19"}
    )
    assert status == 206 and body == data[10:20] and response.headers["Content-Range"] == "bytes 10-19/1024"
    assert _call(local_hub, "GET", f"/{repo}/resolve/main/d/w.bin", headers={"Range": "bytes=-4"})[2] == data[-4:]
    assert _call(local_hub, "GET", f"/{repo}/resolve/main/d/w.bin", headers={"Range": "bytes=1020-"})[2] == data[1020:]
    for bad in ("bytes=2000-", "bytes=-", "lines=1-2"):
        assert _call(local_hub, "GET", f"/{repo}/resolve/main/d/w.bin", headers={"Range": bad})[0] == 416
    status, response, _ = _call(local_hub, "HEAD", f"/{repo}/resolve/main/missing.txt")
    assert status == 404 and response.headers["X-Error-Code"] == "EntryNotFound"
    assert response.headers["X-Repo-Commit"] == head


def test_regular_file_etag_is_git_oid(local_hub: LocalHub, repo: str) -> None:
    _api(local_hub, "alice").upload_file(path_or_fileobj=b"hello\n", path_in_repo="a.txt", repo_id=repo)
    _, response, _ = _call(local_hub, "HEAD", f"/{repo}/resolve/main/a.txt")
    # `printf 'hello\n' | git hash-object --stdin` = ce013625030ba8dba906f756967f9e9ca394464a
    assert response.headers["ETag"] == '"ce013625030ba8dba906f756967f9e9ca394464a"'
    assert "X-Linked-Etag" not in response.headers


def test_preupload_modes_oids_and_gitignore(local_hub: LocalHub, repo: str) -> None:
    _api(local_hub, "alice").upload_file(path_or_fileobj=b"hello\n", path_in_repo="a.txt", repo_id=repo)
    files = [
        {"path": "a.txt", "sample": base64.b64encode(b"hello\n").decode(), "size": 6},
        {"path": "big.txt", "sample": base64.b64encode(b"text").decode(), "size": REGULAR_FILE_LIMIT + 1},
        {"path": "w.bin", "sample": base64.b64encode(b"\0\1").decode(), "size": 2},
        {"path": "run.log", "sample": "", "size": 0},
        {"path": "m.safetensors", "sample": base64.b64encode(b"no zero byte").decode(), "size": 12},
        {"path": "data.txt", "sample": base64.b64encode(b"a\0b").decode(), "size": 3},
    ]
    body = {"files": files, "gitIgnore": "*.log\n"}
    status, _, raw = _call(local_hub, "POST", f"/api/models/{repo}/preupload/main", body, local_hub.tokens["alice"])
    answers = {f["path"]: f for f in json.loads(raw)["files"]}
    paths = ("a.txt", "big.txt", "w.bin", "run.log", "m.safetensors", "data.txt")
    # LFS: over 10 MiB, a model-file suffix (whatever its bytes, as the Hub's .gitattributes), or binary content
    assert status == 200 and [answers[p]["uploadMode"] for p in paths] == [
        "regular",
        "lfs",
        "lfs",
        "regular",
        "lfs",
        "lfs",
    ]
    assert answers["a.txt"]["oid"] == "ce013625030ba8dba906f756967f9e9ca394464a" and "oid" not in answers["w.bin"]
    assert answers["run.log"]["shouldIgnore"] and not answers["a.txt"]["shouldIgnore"]
    # without gitIgnore in the request, the committed .gitignore applies
    _api(local_hub, "alice").upload_file(path_or_fileobj=b"*.tmp\n", path_in_repo=".gitignore", repo_id=repo)
    body = {"files": [{"path": "x.tmp", "sample": "", "size": 1}]}
    raw = _call(local_hub, "POST", f"/api/models/{repo}/preupload/main", body, local_hub.tokens["alice"])[2]
    assert json.loads(raw)["files"][0]["shouldIgnore"] is True
    for bad in ({"files": [{"path": "a", "size": -1}]}, {"nofiles": 1}, {"files": [{"path": "../a", "size": 1}]}):
        assert _call(local_hub, "POST", f"/api/models/{repo}/preupload/main", bad, local_hub.tokens["alice"])[0] == 400
    path = f"/api/models/{repo}/preupload/main?create_pr=1"
    assert _call(local_hub, "POST", path, {"files": []}, local_hub.tokens["alice"])[0] == 400


def test_lfs_batch_signed_upload_and_verify(local_hub: LocalHub, repo: str) -> None:
    data = os.urandom(5000)
    oid = hashlib.sha256(data).hexdigest()
    token = local_hub.tokens["alice"]
    batch = {
        "operation": "upload",
        "transfers": ["basic"],
        "objects": [{"oid": oid, "size": 5000}, {"oid": "xyz", "size": 1}, {"oid": "a" * 64, "size": 10**12}],
    }
    status, _, raw = _call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, token)
    answer = json.loads(raw)
    assert status == 200 and answer["transfer"] == "basic"
    assert [o.get("error", {}).get("code") for o in answer["objects"]] == [None, 422, 413]
    href = answer["objects"][0]["actions"]["upload"]["href"]
    path = href[len(local_hub.url) :]
    tampered = path.replace("size=5000", "size=5001")
    assert _call(local_hub, "PUT", tampered, data + b"x")[0] == 403
    assert _call(local_hub, "PUT", path, data[:-1])[2].find(b"differs from size") > 0  # wrong length: 400
    bad_content = bytes([data[0] ^ 1]) + data[1:]
    assert _call(local_hub, "PUT", path, bad_content)[0] == 400  # sha256 mismatch: nothing stored
    assert _call(local_hub, "PUT", path.split("?")[0], data)[0] == 400
    verify = {"oid": oid, "size": 5000}
    assert _call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/verify", verify, token)[0] == 404
    assert _call(local_hub, "PUT", path, data)[0] == 200
    assert _call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/verify", verify, token)[0] == 200
    assert _call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/verify", {"oid": 1}, token)[0] == 400
    again = json.loads(_call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, token)[2])
    assert "actions" not in again["objects"][0]  # already uploaded: the client skips it
    for bad in (
        {"operation": "download", "objects": []},
        {"operation": "upload", "transfers": ["multipart"], "objects": []},
    ):
        assert _call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/batch", bad, token)[0] == 400


def test_expired_upload_url(tmp_path: Path) -> None:
    with HubServer(tmp_path / "d", {"alice": "t"}, url_ttl_s=-1) as server:
        HfApi(endpoint=server.url, token="t").create_repo("alice/m")
        hub = LocalHub(server, server.url, tmp_path / "d", {"alice": "t"})
        batch = {"operation": "upload", "objects": [{"oid": "a" * 64, "size": 1}]}
        href = json.loads(_call(hub, "POST", "/alice/m.git/info/lfs/objects/batch", batch, "t")[2])
        path = href["objects"][0]["actions"]["upload"]["href"][len(server.url) :]
        status, _, body = _call(hub, "PUT", path, b"x")
        assert status == 403 and b"expired" in body


def test_commit_operations_and_refusals(local_hub: LocalHub, repo: str) -> None:
    status, answer = _commit(
        local_hub, repo, _header(), _file("a/x.txt", b"1"), _file("a/y.txt", b"2"), _file("z", b"3")
    )
    assert status == 200 and answer["commitOid"] == _head(local_hub)
    assert answer["commitUrl"] == f"{local_hub.url}/{repo}/commit/{answer['commitOid']}"
    status, _ = _commit(local_hub, repo, _header(), {"key": "deletedFolder", "value": {"path": "a/"}})
    assert status == 200 and set(local_hub.server.store.resolve(RepoId.parse(repo), "main").files) == {"z"}
    head = _head(local_hub)
    cases = [
        ([_header(), {"key": "deletedFile", "value": {"path": "nope"}}], 404),
        ([_header(), {"key": "deletedFolder", "value": {"path": "nope"}}], 404),
        ([_file("a", b"1")], 400),  # no header
        ([_header(), {"key": "lfsFile", "value": {"path": "w", "algo": "sha256", "oid": "a" * 64, "size": 3}}], 400),
        ([_header(), {"key": "lfsFile", "value": {"path": "w", "oid": "zz"}}], 400),
        ([_header(), {"key": "lfsFile", "value": {"path": "w", "oid": "d" * 64}}], 400),  # no size, never uploaded
        ([_header(), {"key": "copy", "value": {"path": "w"}}], 400),
        ([_header(), {"key": "file"}], 400),
        ([_header(), {"key": "file", "value": {"path": "w", "content": "!!", "encoding": "base64"}}], 400),
        ([_header(), {"key": "file", "value": {"path": "w", "content": "", "encoding": "utf-8"}}], 400),
        ([_header(), _file("big", b"x" * (REGULAR_FILE_LIMIT + 1))], 400),
        ([_header(parentCommit="0" * 40), _file("p", b"1")], 412),
    ]
    for lines, code in cases:
        assert _commit(local_hub, repo, *lines)[0] == code, lines
    assert _commit(local_hub, repo, _header(), _file("x", b"1"), rev="dev")[0] == 404
    status, _, _ = _call(
        local_hub, "POST", f"/api/models/{repo}/commit/main", b"{not json\n", local_hub.tokens["alice"]
    )
    assert status == 400 and _head(local_hub) == head
    path = f"/api/models/{repo}/commit/main?create_pr=1"
    assert _call(local_hub, "POST", path, _ndjson(_header()), local_hub.tokens["alice"])[0] == 400


def test_parent_commit_through_the_client(local_hub: LocalHub, repo: str) -> None:
    api = _api(local_hub, "alice")
    head = _head(local_hub)
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a", repo_id=repo, parent_commit=head)
    with pytest.raises(HfHubHTTPError) as info:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="b", repo_id=repo, parent_commit=head)
    assert info.value.response.status_code == 412
    api.delete_file("a", repo_id=repo)
    assert local_hub.server.store.resolve(RepoId.parse(repo), "main").files == {}


def test_validate_yaml(local_hub: LocalHub, repo: str) -> None:
    api = _api(local_hub, "alice")
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# Card\n", path_in_repo="README.md", repo_id=repo)
    with pytest.raises(ValueError, match="no closing") as info:
        api.upload_file(path_or_fileobj=b"---\nlicense: mit\n# Card\n", path_in_repo="README.md", repo_id=repo)
    assert isinstance(info.value.__cause__, BadRequestError)
    assert _call(local_hub, "POST", "/api/validate-yaml", {"content": 3})[0] == 400
    assert _call(local_hub, "POST", "/api/validate-yaml", b"{oops")[0] == 400


def test_path_traversal_is_refused_and_writes_nothing_outside(local_hub: LocalHub, repo: str, tmp_path: Path) -> None:
    before = _snapshot(tmp_path, local_hub.root)
    head = _head(local_hub)
    status, answer = _commit(local_hub, repo, _header(), _file("caf\u00e9/../x", b"1"))
    assert status == 400 and "caf\u00e9" in answer["error"]  # non-latin-1 text survives in the JSON body
    for bad in ["../x", "../../outside.txt", "/etc/evil", "a/../../../x", "a/./b", ".git/config", "C:/x", "a\\..\\b"]:
        assert _commit(local_hub, repo, _header(), _file(bad, b"pwned"))[0] == 400, bad
    for url in [
        f"/{repo}/resolve/main/..%2F..%2Frefs.json",
        f"/{repo}/resolve/main/%2Fetc%2Fpasswd",
        f"/{repo}/resolve/main/a/../../../../etc/passwd",
        f"/api/models/{repo}/tree/main/..%2F..",
        "/api/models/alice/..%2F..%2Frepos/resolve/main/x",
        "/alice/%2E%2E/resolve/main/refs.json",
    ]:
        assert _call(local_hub, "GET", url)[0] in (400, 404), url
    body = {"name": "..", "organization": "alice"}
    assert _call(local_hub, "POST", "/api/repos/create", body, local_hub.tokens["alice"])[0] == 400
    assert _head(local_hub) == head and local_hub.server.store.resolve(RepoId.parse(repo), "main").files == {}
    assert _snapshot(tmp_path, local_hub.root) == before
    assert not any(p.name in ("x", "outside.txt", "evil") for p in tmp_path.rglob("*"))


def test_size_limit_and_chunked_bodies(tmp_path: Path) -> None:
    with HubServer(tmp_path / "d", {"alice": "t"}, max_file_size=1000) as server:
        hub = LocalHub(server, server.url, tmp_path / "d", {"alice": "t"})
        HfApi(endpoint=server.url, token="t").create_repo("alice/m")
        body = {"files": [{"path": "w", "sample": "", "size": 1001}]}
        status, _, raw = _call(hub, "POST", "/api/models/alice/m/preupload/main", body, "t")
        assert status == 413 and b"at most 1000" in raw
        assert _commit(hub, "alice/m", _header(), _file("w", b"x" * 1001))[0] == 413
        headers = {"Transfer-Encoding": "chunked"}
        assert _call(hub, "POST", "/api/repos/create", b"", "t", headers)[0] == 411
        assert _call(hub, "POST", "/api/repos/create", b"", "t", {"Content-Length": "x"})[0] == 400
    with pytest.raises(InvalidArgumentError, match="max_file_size"):
        HubServer(tmp_path / "e", {}, max_file_size=0)


@pytest.mark.parametrize(
    ("users", "fragment"),
    [
        ({"a b": "t"}, "not a valid namespace"),
        ({"a": ""}, "non-empty"),
        ({"a": "t", "b": "t"}, "share a token"),
        ({"lfs": "t"}, "reserved"),
    ],
)
def test_user_table_validation(tmp_path: Path, users: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        HubServer(tmp_path, users)


def test_fixture_points_the_client_at_the_server(local_hub: LocalHub) -> None:
    assert local_hub.url.startswith("http://127.0.0.1:") and os.environ["HF_ENDPOINT"] == local_hub.url


def test_lfs_file_committed_without_size(local_hub: LocalHub, repo: str) -> None:
    data = b"\0weights" * 100
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
    answer = json.loads(
        _call(local_hub, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, local_hub.tokens["alice"])[2]
    )
    assert (
        _call(local_hub, "PUT", answer["objects"][0]["actions"]["upload"]["href"][len(local_hub.url) :], data)[0] == 200
    )
    status, _ = _commit(
        local_hub, repo, _header(), {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid}}
    )
    entry = local_hub.server.store.resolve(RepoId.parse(repo), "main").files["w.bin"]
    assert status == 200 and entry.lfs and entry.size == len(data)


def test_request_body_limit(local_hub: LocalHub, repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "MAX_API_BODY", 100)
    status, answer = _commit(local_hub, repo, _header(), _file("a", b"x" * 200))
    assert status == 413 and "exceeds the 100-byte limit" in answer["error"]


def test_bad_host_header_falls_back_to_the_bound_address(local_hub: LocalHub) -> None:
    body = {"name": "h"}
    _, _, raw = _call(local_hub, "POST", "/api/repos/create", body, local_hub.tokens["alice"], {"Host": "evil host/x"})
    assert json.loads(raw)["url"] == f"{local_hub.url}/alice/h"


def test_malformed_request_and_internal_errors(
    local_hub: LocalHub, repo: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    host = urlsplit(local_hub.url)
    with socket.create_connection((host.hostname or "", host.port or 0), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1 extra\r\n\r\n")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400") and reply.endswith(b'{"error": "Bad request version (\'extra\')"}')

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(local_hub.server.store, "branches", broken)
    status, _, raw = _call(local_hub, "GET", f"/api/models/{repo}")
    assert status == 500 and json.loads(raw) == {"error": "internal server error"}
    assert "simulated bug" in caplog.text and "GET /api/models/alice/m failed" in caplog.text
    assert "Bad request version" in caplog.text


def test_serve_forever_in_a_thread_of_ones_own(tmp_path: Path) -> None:
    server = HubServer(tmp_path, {"alice": "t"})
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert HfApi(endpoint=server.url, token="t").whoami()["name"] == "alice"
    finally:
        server.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
    server.stop()  # twice is fine


def test_client_gone_mid_answer_is_not_an_error(
    local_hub: LocalHub, repo: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _api(local_hub, "alice").upload_file(path_or_fileobj=b"abc", path_in_repo="a.txt", repo_id=repo)

    def reset(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError("peer went away")

    monkeypatch.setattr(local_hub.server.store, "iter_blob", reset)
    with pytest.raises(http.client.RemoteDisconnected):
        _call(local_hub, "GET", f"/{repo}/resolve/main/a.txt")
    monkeypatch.undo()
    assert _call(local_hub, "GET", f"/{repo}/resolve/main/a.txt")[2] == b"abc"
    assert "Traceback" not in caplog.text and not any(r.levelname == "ERROR" for r in caplog.records)
