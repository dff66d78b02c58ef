"""The Hugging Face Hub: a client built on ``huggingface_hub`` and a local Hub-compatible server.

Client: `download` (snapshot into the standard HF cache), `fetch_config` (only ``config.json``),
`cached_file` (a file the cache already holds, without a request),
`upload_folder` (one commit, LFS for large files, retries), and the checks before an upload, retried
the same way: `whoami` / `account_info` (who the token belongs to) and `repo_is_private`; repo ids validated by
`validate_repo_id`; tokens found by `resolve_token` (explicit, ``HF_TOKEN``,
``HUGGING_FACE_HUB_TOKEN``, ``$HF_HOME/token``) and described without revealing them by
`describe_token_source`. Server: `HubServer` with `Fault`/`FaultPlan` (also
``python -m aprender.hub.server``), imported on first use so that the command line does not
import its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aprender.hub.client import (
    account_info,
    cached_file,
    download,
    fetch_config,
    repo_is_private,
    upload_folder,
    whoami,
)
from aprender.hub.repo_id import RepoId, validate_repo_id
from aprender.hub.settings import HubSettings
from aprender.hub.token import HubToken, describe_token_source, resolve_token

if TYPE_CHECKING:
    from aprender.hub.faults import Fault, FaultPlan
    from aprender.hub.server import HubServer

_LAZY = {"HubServer": "aprender.hub.server", "Fault": "aprender.hub.faults", "FaultPlan": "aprender.hub.faults"}

__all__ = [
    "Fault",
    "FaultPlan",
    "HubServer",
    "HubSettings",
    "HubToken",
    "RepoId",
    "account_info",
    "cached_file",
    "describe_token_source",
    "download",
    "fetch_config",
    "repo_is_private",
    "resolve_token",
    "upload_folder",
    "validate_repo_id",
    "whoami",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aprender.hub' has no attribute {name!r}")
