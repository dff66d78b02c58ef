"""A local Hugging Face Hub-compatible server, for tests and the offline demo.

It serves the subset of the Hub API that ``huggingface_hub`` needs to create repos, upload
folders (regular files inline, large/binary files through LFS basic transfer) and download them
into the standard cache; the endpoints live in `aprender.hub.api`, storage in
`aprender.hub.storage`. Standard library only (``http.server.ThreadingHTTPServer``), HTTP/1.1
keep-alive, no web pages.

Run it::

    python -m aprender.hub.server --root ./hub-data --port 8080 --token alice=SECRET
    HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=SECRET entrenar publish ...

(`aprender.hub.upload_folder` always uploads through LFS; other clients such as the ``hf`` CLI
also need ``HF_HUB_DISABLE_XET=1``, as Xet storage is not served.)

or in-process: ``with HubServer(root, {"alice": "SECRET"}) as hub: ... hub.url ...``.
Requests are logged as ``METHOD path status`` (no query string: upload URLs carry signatures;
no headers: they carry tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from aprender.errors import AprenderError, InvalidArgumentError
from aprender.hub.api import RESERVED_NAMESPACES, HttpError, HubApi, Request, Response
from aprender.hub.faults import FaultPlan, parse_fault
from aprender.hub.repo_id import RepoId
from aprender.hub.storage import RepoStore

__all__ = ["DEFAULT_MAX_FILE_SIZE", "HubServer", "main"]

DEFAULT_MAX_FILE_SIZE = 50 * 1000**3  # the Hub's per-file limit for plain HTTP transfers (50 GB)
_LOG = logging.getLogger("aprender.hub.server")
_SEG = r"[^/]+"
_REPO = rf"(?P<namespace>{_SEG})/(?P<name>{_SEG})"
_MODELS = rf"/api/models/{_REPO}"
_Route = tuple[str, re.Pattern[str], Callable[..., Response]]


def _routes(api: HubApi) -> list[_Route]:
    table: list[tuple[str, str, Callable[..., Response]]] = [
        ("GET", r"/api/whoami-v2", api.whoami),
        ("POST", r"/api/repos/create", api.create_repo),
        ("DELETE", r"/api/repos/delete", api.delete_repo),
        ("POST", r"/api/validate-yaml", api.validate_yaml),
        ("GET", rf"{_MODELS}(?:/revision/(?P<rev>{_SEG}))?", api.model_info),
        ("GET", rf"{_MODELS}/tree/(?P<rev>{_SEG})(?:/(?P<path>.+))?", api.tree),
        ("POST", rf"{_MODELS}/preupload/(?P<rev>{_SEG})", api.preupload),
        ("POST", rf"{_MODELS}/commit/(?P<rev>{_SEG})", api.commit),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", api.lfs_batch),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", api.lfs_verify),
        ("PUT", rf"/lfs/{_REPO}/(?P<oid>[0-9a-f]{{64}})", api.lfs_upload),
        ("HEAD", rf"/{_REPO}/resolve/(?P<rev>{_SEG})/(?P<path>.+)", api.resolve),
        ("GET", rf"/{_REPO}/resolve/(?P<rev>{_SEG})/(?P<path>.+)", api.resolve),
    ]
    return [(method, re.compile(pattern), handler) for method, pattern, handler in table]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        """Cut the open keep-alive connections, whose handler threads outlive ``shutdown()``."""
        with self.connections_lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        self._consumed = False
        path = urlsplit(self.path).path
        self._log_path = path
        try:
            fault = hub.faults.check(method, path)
            if fault is not None:
                self._inject(fault)
                return
            handler, params = self._route(hub, method, path)
            response = handler(self._request(method), **params)
            self._consumed = self._consumed or method == "PUT"  # the upload endpoint read the whole body
            self._send(response)
        except HttpError as exc:
            self._send_error(exc)
        except ConnectionError:  # the client went away mid-answer: nobody to answer to
            self.close_connection = True
        except Exception:  # a bug or a race: answer 500 (and keep the details in the log) rather than drop the line
            _LOG.exception("%s %s failed", method, path)
            self.close_connection = True
            self._send_error(HttpError(500, "internal server error"))
        finally:
            if not self._consumed and self.headers.get("Content-Length", "0") != "0":
                self.close_connection = True  # unread body bytes would corrupt the next request

    def _route(self, hub: HubServer, method: str, path: str) -> tuple[Callable[..., Response], dict[str, str]]:
        for route_method, pattern, handler in hub.routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return handler, {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        raise HttpError(404, f"no endpoint for {method} {path}")

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not value.isdigit():
            raise HttpError(400, f"bad Content-Length {value!r}")
        return int(value)

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked request bodies are not supported: send Content-Length")
        length = self._content_length() or 0
        if length > limit:
            raise HttpError(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
        self._consumed = True
        return self.rfile.read(length)

    def _request(self, method: str) -> Request:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        host = self.headers.get("Host", "")
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
            host = self.server.hub.url.removeprefix("http://")
        return Request(
            method=method,
            query=dict(parse_qsl(urlsplit(self.path).query)),
            token=token or None,
            base_url=f"http://{host}",
            read_body=self._read_body,
            stream=cast(IO[bytes], self.rfile),
            content_length=self._content_length(),
            range_header=self.headers.get("Range"),
        )

    def _inject(self, kind: str) -> None:
        length = self._content_length() or 0
        if length <= self.server.hub.api.max_file_size:
            self._read_body(length)
        if kind == "error":
            self._send_error(HttpError(500, "injected fault: internal server error"))
            return
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
        self.log_request("cut")

    def _send(self, response: Response) -> None:
        if not response.raw:
            body = _json_bytes(response.data)
            headers = {"Content-Type": "application/json"} | response.headers
            self._write_head(response.status, headers, len(body))
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        self._write_head(response.status, response.headers, response.length)
        for chunk in response.chunks or ():
            self.wfile.write(chunk)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by http.server itself (malformed request line, headers): JSON too, never a web page."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self.request_version = self.protocol_version  # always send a status line, even for an unparsed request
        self._send_error(HttpError(code, message or HTTPStatus(code).phrase))

    def _send_error(self, exc: HttpError) -> None:
        # header values must be one line of latin-1: escape the rest (user input may appear in messages)
        safe = " ".join(exc.message.encode("ascii", "backslashreplace").decode().split())
        headers = {"Content-Type": "application/json", "X-Error-Message": safe} | exc.headers
        if exc.code:
            headers["X-Error-Code"] = exc.code
        body = _json_bytes({"error": exc.message} | exc.extra)
        self._write_head(exc.status, headers, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _write_head(self, status: int, headers: Mapping[str, str], length: int) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        _LOG.info("%s %s %s", getattr(self, "command", None) or "-", getattr(self, "_log_path", "?"), code)

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.warning("%s: %s", self.address_string(), format % args)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data).encode()


class HubServer:
    """A local Hub on ``host:port`` storing repos under ``root``.

    Args:
        root: data folder (created if missing).
        users: user name -> token; a user owns the namespace of the same name.
        host: interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (see `url`).
        max_file_size: largest file accepted, in bytes.
        url_ttl_s: lifetime of signed LFS upload URLs, in seconds.

    Attributes:
        faults: the `FaultPlan` consulted on every request.
        store: the `RepoStore`.
    """

    def __init__(
        self,
        root: str | Path,
        users: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        url_ttl_s: float = 3600.0,
    ) -> None:
        _check_users(users)
        if max_file_size < 1:
            raise InvalidArgumentError(f"max_file_size={max_file_size}: must be at least 1 byte")
        self.store = RepoStore(root)
        self.faults = FaultPlan()
        secret = secrets.token_bytes(32)
        self.api = HubApi(self.store, users, max_file_size=max_file_size, secret=secret, url_ttl_s=url_ttl_s)
        self.routes = _routes(self.api)
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()

    @property
    def url(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        """Serve in a background daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="aprender-hub", daemon=True)
        self._thread.start()
        self._serving.wait()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop` is called from another thread (or an interrupt)."""
        self._serving.set()
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        finally:
            self._serving.clear()

    def stop(self) -> None:
        """Stop serving, cut open connections and close the socket (safe to call twice)."""
        if self._serving.is_set():
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _check_users(users: Mapping[str, str]) -> None:
    for user, token in users.items():
        try:
            RepoId.parse(f"{user}/x")
        except AprenderError as exc:
            raise InvalidArgumentError(f"user name {user!r} is not a valid namespace: {exc}") from exc
        if user in RESERVED_NAMESPACES:
            raise InvalidArgumentError(f"user name {user!r} is reserved by the server's routes: pick another name")
        if not token or any(c.isspace() for c in token):
            raise InvalidArgumentError(f"token of user {user!r} must be non-empty and without spaces")
    if len(set(users.values())) != len(users):
        raise InvalidArgumentError("two users share a token: give each user its own token")


def _parse_user(spec: str) -> tuple[str, str]:
    user, sep, token = spec.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--token {user!r}...: expected NAME=TOKEN")
    return user, token


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m aprender.hub.server --root DIR --port N --token NAME=TOKEN ...``.

    Prints ``serving on http://HOST:PORT`` once listening, then serves until interrupted.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m aprender.hub.server", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="data folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", type=_parse_user, action="append", default=[], help="NAME=TOKEN (repeatable)")
    parser.add_argument("--max-file-size", type=int, default=DEFAULT_MAX_FILE_SIZE, help="bytes")
    parser.add_argument("--fault", action="append", default=[], help="kind=error|cut,method=,path=,nth=,times=")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        server = HubServer(
            args.root, dict(args.token), host=args.host, port=args.port, max_file_size=args.max_file_size
        )
        for spec in args.fault:
            server.faults.add(parse_fault(spec))
    except AprenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
