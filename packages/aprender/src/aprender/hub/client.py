"""The Hugging Face Hub client: download to the standard cache, fetch a config, upload a folder, check a token.

Built on ``huggingface_hub`` (``HfApi``, ``snapshot_download``, ``hf_hub_download``), with:

- settings resolved from the environment at call time (`aprender.hub.settings`) and passed
  explicitly, so ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_HUB_OFFLINE`` set after import
  are honoured; downloads land in the standard cache layout
  (``models--ns--name/snapshots/<sha>/...``, https://huggingface.co/docs/huggingface_hub/guides/manage-cache);
- tokens resolved by `aprender.hub.token` (never logged; messages name the source only);
- uploads in one commit, large files through the LFS batch API (Xet is disabled for the call),
  retried as a whole on transient failures (5xx, 408, 429, dropped or refused connections) with
  exponential backoff; a retry after a commit whose answer was lost is a no-op, because the
  client skips files whose remote oid already matches. The checks before an upload (`whoami`,
  `account_info`, `repo_is_private`) are retried the same way;
- the library kept quiet during a call: its per-request retry warnings (which print signed upload
  URLs) are hidden, and so are its progress bars when stderr is not a terminal; our retries log at
  INFO, and the outcome is our exception;
- library exceptions mapped to `aprender.errors` classes with a one-line message that says what to do
  (URLs in it lose their query strings, where signatures live).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import disable_progress_bars

from aprender import __version__
from aprender.errors import (
    FormatError,
    HubAuthError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    HubPermissionError,
    HubTokenMissingError,
    HubUnreachableError,
    InvalidArgumentError,
)
from aprender.hub.repo_id import validate_repo_id
from aprender.hub.settings import HubSettings, library_flags
from aprender.hub.token import HubToken, describe_token_source, resolve_token

__all__ = [
    "account_info",
    "cached_file",
    "download",
    "fetch_config",
    "repo_is_private",
    "upload_folder",
    "whoami",
]

_T = TypeVar("_T")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_ATTEMPTS = 4  # tries in all for the calls that retry (uploads and the checks before them)
_BACKOFF_S = 1.0  # wait before the 2nd try; doubles after each try
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]*)[?#][^\s'\"]*")
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Context:
    """What a failed call was doing, for the error message."""

    action: str
    repo_id: str | None
    settings: HubSettings
    token: HubToken | None
    revision: str | None = None
    attempts: int = 1
    backoff_s: float = _BACKOFF_S
    reads_cache: bool = False  # the HF cache can answer instead (downloads)

    @property
    def where(self) -> str:
        what = f"{self.repo_id}@{self.revision or 'main'}" if self.repo_id else "the Hub"
        return f"{self.action} {what} on {self.settings.endpoint}"

    @property
    def tries(self) -> str:
        return f" after {self.attempts} attempts" if self.attempts > 1 else ""

    @property
    def token_desc(self) -> str:
        return f"the token from {self.token.source}" if self.token else "no token"


def _api(settings: HubSettings, token: HubToken | None) -> HfApi:
    return HfApi(
        endpoint=settings.endpoint,
        token=token.value if token else False,
        library_name="aprender",
        library_version=__version__,
    )


def _require_token(explicit: str | None) -> HubToken:
    token = resolve_token(explicit)
    if token is None:
        raise HubTokenMissingError(f"this operation needs a Hugging Face token: {describe_token_source(explicit)}")
    return token


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_transient(exc: BaseException) -> bool:
    for cause in _causes(exc):
        if isinstance(cause, httpx2.TransportError):
            return True
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return cause.response.status_code in _TRANSIENT_STATUS
    return False


def _one_line(text: str) -> str:
    """`text` on one line, without URL query strings (signed URLs carry their signature there)."""
    return _URL_QUERY.sub(r"\1", " ".join(text.split()))


def _server_message(exc: HfHubHTTPError) -> str:
    return _one_line(exc.server_message or str(exc).split("\n")[0])


def _request_line(exc: HfHubHTTPError) -> str:
    """`` on GET /path`` for the failed request (its path: no query string), or ``""`` when there is none."""
    try:
        request = exc.response.request
    except RuntimeError:  # a response built by hand has no request
        return ""
    return f" on {request.method} {request.url.path}"


def _http_error(exc: HfHubHTTPError, ctx: _Context) -> HubError:
    status = exc.response.status_code if exc.response is not None else 0
    detail = _server_message(exc)
    if status == 401:
        return HubAuthError(
            f"{ctx.where}: the server rejected {ctx.token_desc} (401: {detail}); "
            "create a new token and set HF_TOKEN or run `hf auth login`"
        )
    if status == 403:
        return HubPermissionError(
            f"{ctx.where}: {ctx.token_desc} has no write access (403: {detail}); "
            "use a token of the namespace owner or choose a repo in your own namespace"
        )
    if status == 404:
        return HubNotFoundError(f"{ctx.where}: not found (404: {detail}); check the repo id and revision")
    if status in _TRANSIENT_STATUS:
        return HubUnreachableError(
            f"{ctx.where}: the server kept failing ({status}{_request_line(exc)}: {detail}){ctx.tries}; "
            "retry later or check the server"
        )
    return HubError(f"{ctx.where}: the server refused the request ({status}: {detail})")


def _translate(exc: BaseException, ctx: _Context) -> HubError | None:
    """Map a huggingface_hub/httpx2 exception (or one in its cause chain) to an aprender error; None if unknown."""
    if ctx.settings.offline and isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return HubOfflineError(
            f"{ctx.where}: not in the HF cache {ctx.settings.cache_dir} and HF_HUB_OFFLINE=1 forbids downloading; "
            "unset HF_HUB_OFFLINE to fetch it once, or point HF_HUB_CACHE at a cache that has it"
        )
    for cause in _causes(exc):
        if isinstance(cause, RepositoryNotFoundError):
            return HubNotFoundError(
                f"{ctx.where}: repo not found, or private and invisible to {ctx.token_desc}; "
                "check the repo id, or set HF_TOKEN to a token of its owner"
            )
        if isinstance(cause, RevisionNotFoundError):
            return HubNotFoundError(f"{ctx.where}: revision not found; check the branch name or commit sha")
        if isinstance(cause, RemoteEntryNotFoundError):
            return HubNotFoundError(f"{ctx.where}: file not found in the repo ({_server_message(cause)})")
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return _http_error(cause, ctx)
        if isinstance(cause, httpx2.TransportError):
            reason = _one_line(str(cause)) or type(cause).__name__
            cache = ", or set HF_HUB_OFFLINE=1 to use the cache" if ctx.reads_cache else ""
            return HubUnreachableError(
                f"{ctx.where}: cannot reach the server ({type(cause).__name__}: {reason}){ctx.tries}; "
                f"check the endpoint and the network{cache}"
            )
    if isinstance(exc, LocalEntryNotFoundError):
        return HubUnreachableError(f"{ctx.where}: {' '.join(str(exc).split())}")
    return None


@contextlib.contextmanager
def _quiet_library() -> Iterator[None]:
    """Mute huggingface_hub's warnings (one per retried request, URL and all) and, off a terminal, its progress bars."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.nullcontext() if sys.stderr.isatty() else disable_progress_bars():
            yield
    finally:
        logger.setLevel(level)


def _run(ctx: _Context, call: Callable[[], _T], *, force_lfs: bool = False) -> _T:
    """`call` with the library's flags pinned and its output quiet, retried per `ctx`, its errors mapped."""
    with library_flags(ctx.settings, force_lfs=force_lfs), _quiet_library():
        try:
            return _retrying(ctx, call)
        except HubError:
            raise
        except Exception as exc:
            mapped = _translate(exc, ctx)
            if mapped is None:
                raise
            raise mapped from exc


def _retrying(ctx: _Context, call: Callable[[], _T]) -> _T:
    """`call`, tried up to ``ctx.attempts`` times while it fails transiently; waits ``backoff_s``, 2x, 4x ..."""
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if attempt >= ctx.attempts or not _is_transient(exc):
                raise
        wait = ctx.backoff_s * 2 ** (attempt - 1)
        _LOG.info("%s: attempt %d of %d failed; retrying in %g s", ctx.where, attempt, ctx.attempts, wait)
        time.sleep(wait)
        attempt += 1


def _check_access(settings: HubSettings, token: HubToken | None, repo: str, revision: str | None) -> None:
    """Online, ask for the repo at ``revision`` first: huggingface_hub answers a 401/404/unreachable
    Hub with a cached copy when it has one, and we want those errors to surface instead."""
    if not settings.offline:
        _api(settings, token).model_info(repo, revision=revision)


def account_info(*, token: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
    """Ask the Hub who the token belongs to (``GET /api/whoami-v2``); retried like uploads.

    Args:
        token: explicit token; default: resolved as in `aprender.hub.token.resolve_token`.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.

    Returns:
        The answer: ``name``, ``orgs`` (each with ``name`` and ``roleInOrg``), ``auth.accessToken.role``, ...

    Raises:
        HubTokenMissingError: no token anywhere.
        HubAuthError: the token is rejected.
        HubUnreachableError: the endpoint cannot be reached, or keeps failing, through every attempt.
    """
    hub_token = _require_token(token)
    ctx = _Context("check the token for", None, HubSettings.from_env(endpoint), hub_token, attempts=_ATTEMPTS)
    return dict(_run(ctx, lambda: _api(ctx.settings, hub_token).whoami()))


def whoami(*, token: str | None = None, endpoint: str | None = None) -> str:
    """Return the user name behind the token (checks the credentials before a long job); see `account_info`."""
    return str(account_info(token=token, endpoint=endpoint)["name"])


def repo_is_private(repo_id: str, *, token: str | None = None, endpoint: str | None = None) -> bool | None:
    """Say whether a model repo is private; retried like uploads.

    Args:
        repo_id: ``namespace/name``.
        token: explicit token; default: resolved from the environment.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.

    Returns:
        True or False; None when the repo does not exist or is invisible to the token.

    Raises:
        InvalidRepoIdError: malformed ``repo_id``.
        HubAuthError: the token is rejected.
        HubUnreachableError: the endpoint cannot be reached, or keeps failing, through every attempt.
    """
    repo = validate_repo_id(repo_id)
    settings = HubSettings.from_env(endpoint)
    hub_token = resolve_token(token)
    ctx = _Context("look up", repo, settings, hub_token, attempts=_ATTEMPTS)

    def call() -> bool | None:
        try:
            return bool(_api(settings, hub_token).model_info(repo).private)
        except RepositoryNotFoundError:
            return None

    return _run(ctx, call)


def download(
    repo_id: str,
    revision: str | None = None,
    allow_patterns: str | list[str] | None = None,
    *,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download a model repo snapshot into the standard HF cache and return its folder.

    Args:
        repo_id: ``namespace/name``.
        revision: branch or commit sha; default ``main``.
        allow_patterns: glob(s) of files to fetch (e.g. ``"*.json"``); default: all files.
        token: explicit token; default: resolved from the environment (none is fine for public repos).
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.

    Returns:
        ``<cache>/models--ns--name/snapshots/<sha>``, loadable by ``from_pretrained``.

    Raises:
        InvalidRepoIdError: malformed ``repo_id``.
        HubOfflineError: ``HF_HUB_OFFLINE=1`` and the snapshot is not (fully) cached.
        HubNotFoundError: repo/revision missing or private to someone else.
        HubAuthError: the token is rejected.
        HubUnreachableError: the endpoint cannot be reached. Online, errors are never answered with a
            cached copy; set ``HF_HUB_OFFLINE=1`` to use the cache.
    """
    repo = validate_repo_id(repo_id)
    settings = HubSettings.from_env(endpoint)
    hub_token = resolve_token(token)
    ctx = _Context("download", repo, settings, hub_token, revision, reads_cache=True)

    def call() -> str:
        _check_access(settings, hub_token, repo, revision)
        return str(
            snapshot_download(
                repo,
                revision=revision,
                allow_patterns=allow_patterns,
                cache_dir=settings.cache_dir,
                endpoint=settings.endpoint,
                token=hub_token.value if hub_token else False,
                local_files_only=settings.offline,
                library_name="aprender",
                library_version=__version__,
            )
        )

    path = _run(ctx, call)
    return Path(path)


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a repo revision in the HF cache, found without any request.

    Args:
        repo_id: ``namespace/name``.
        filename: the path inside the repo.
        revision: branch, tag or commit sha; default ``main`` (a branch resolves through the cache's refs).

    Returns:
        The cached file, or None when this machine does not hold it for that revision.

    Raises:
        InvalidRepoIdError: malformed ``repo_id``.
    """
    repo = validate_repo_id(repo_id)
    found = try_to_load_from_cache(repo, filename, cache_dir=HubSettings.from_env().cache_dir, revision=revision)
    return Path(found) if isinstance(found, str) else None


def fetch_config(
    repo_id: str, revision: str | None = None, *, token: str | None = None, endpoint: str | None = None
) -> dict[str, Any]:
    """Fetch only ``config.json`` of a repo (through the cache) and parse it.

    Args:
        repo_id: ``namespace/name``.
        revision: branch or commit sha; default ``main``.
        token: as in `download`.
        endpoint: as in `download`.

    Returns:
        The parsed JSON object.

    Raises:
        HubNotFoundError: the repo has no ``config.json`` (or see `download`).
        FormatError: ``config.json`` is not a JSON object.
    """
    repo = validate_repo_id(repo_id)
    settings = HubSettings.from_env(endpoint)
    hub_token = resolve_token(token)
    ctx = _Context("fetch config.json of", repo, settings, hub_token, revision, reads_cache=True)

    def call() -> str:
        _check_access(settings, hub_token, repo, revision)
        return str(
            hf_hub_download(
                repo,
                "config.json",
                revision=revision,
                cache_dir=settings.cache_dir,
                endpoint=settings.endpoint,
                token=hub_token.value if hub_token else False,
                local_files_only=settings.offline,
                library_name="aprender",
                library_version=__version__,
            )
        )

    path = _run(ctx, call)
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"config.json of {repo} ({path}) is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise FormatError(f"config.json of {repo} ({path}) must hold a JSON object, got {type(config).__name__}")
    return config


def upload_folder(
    repo_id: str,
    folder: str | Path,
    *,
    private: bool = False,
    commit_message: str = "Upload with aprender",
    token: str | None = None,
    endpoint: str | None = None,
    max_attempts: int = _ATTEMPTS,
    backoff_s: float = _BACKOFF_S,
) -> str:
    """Create the repo if needed and upload every file of ``folder`` in one commit.

    Args:
        repo_id: ``namespace/name``.
        folder: local folder; its relative paths become the repo paths (``.git`` and caches skipped).
        private: create the repo private; if it already exists and is public, refuse to upload.
        commit_message: commit title.
        token: explicit token; default: resolved from the environment (required).
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.
        max_attempts: tries in all for transient failures (5xx, 408, 429, connection cut or refused).
        backoff_s: wait before the 2nd try; doubles after each try.

    Returns:
        The commit URL (of the existing head commit when nothing changed).

    Raises:
        InvalidArgumentError: ``folder`` is not a non-empty folder, or bad retry settings.
        HubOfflineError: ``HF_HUB_OFFLINE=1``.
        HubTokenMissingError, HubAuthError, HubPermissionError: credentials missing, rejected or not allowed.
        HubUnreachableError: transient failures persisted through ``max_attempts`` tries.
        HubError: the repo exists, is public and ``private=True``; or the server refused the upload.
    """
    repo = validate_repo_id(repo_id)
    root = Path(folder)
    if not root.is_dir() or not any(p.is_file() for p in root.rglob("*")):
        raise InvalidArgumentError(f"folder {root} does not exist or holds no files: pass the folder to upload")
    if max_attempts < 1 or backoff_s < 0:
        raise InvalidArgumentError(f"max_attempts={max_attempts}, backoff_s={backoff_s}: need >= 1 and >= 0")
    settings = HubSettings.from_env(endpoint)
    if settings.offline:
        raise HubOfflineError(f"cannot upload to {repo} while HF_HUB_OFFLINE=1: unset HF_HUB_OFFLINE to publish")
    hub_token = _require_token(token)
    api = _api(settings, hub_token)

    def attempt() -> str:
        api.create_repo(repo, private=private, exist_ok=True)
        if private and not api.model_info(repo).private:
            raise HubError(
                f"repo {repo} on {settings.endpoint} already exists and is public, so nothing was uploaded; "
                "make it private on the Hub first or publish to a new repo"
            )
        info = api.upload_folder(repo_id=repo, folder_path=root, commit_message=commit_message)
        return str(info.commit_url)

    ctx = _Context("upload to", repo, settings, hub_token, attempts=max_attempts, backoff_s=backoff_s)
    return _run(ctx, attempt, force_lfs=True)
