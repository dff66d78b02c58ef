"""Hugging Face token resolution, and a description of where the token came from.

Order (the ``huggingface_hub`` order, minus Colab/OIDC): an explicit argument, ``HF_TOKEN``,
``HUGGING_FACE_HUB_TOKEN``, then the token file ``hf auth login`` writes: ``HF_TOKEN_PATH`` if set,
else ``$HF_HOME/token`` (``HF_HOME`` defaults to ``~/.cache/huggingface``). Everything is read from
the environment at call time, never from ``huggingface_hub.constants`` (frozen at import).
Empty values count as unset. The token value never appears in ``repr``/``str``; messages use
`HubToken.source` instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["HubToken", "describe_token_source", "hf_home", "resolve_token", "token_file_path"]

_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


@dataclass(frozen=True)
class HubToken:
    """A token and where it was found.

    Attributes:
        value: the secret itself (kept out of ``repr``).
        source: human-readable origin, e.g. ``"the HF_TOKEN environment variable"``.
    """

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"<token from {self.source}>"


def hf_home() -> Path:
    """Return ``$HF_HOME`` (default ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(os.path.expandvars(os.environ.get("HF_HOME") or str(default))).expanduser()


def token_file_path() -> Path:
    """Return the token file path: ``HF_TOKEN_PATH`` if set, else ``$HF_HOME/token``."""
    custom = os.environ.get("HF_TOKEN_PATH")
    return Path(os.path.expandvars(custom)).expanduser() if custom else hf_home() / "token"


def resolve_token(explicit: str | None = None) -> HubToken | None:
    """Find the token to use.

    Args:
        explicit: a token passed by the caller; wins over everything else when non-empty.

    Returns:
        The token and its source, or None when no source holds one.
    """
    if explicit is not None and explicit.strip():
        return HubToken(explicit.strip(), "the token argument")
    for var in _ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return HubToken(value, f"the {var} environment variable")
    path = token_file_path()
    if path.is_file():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return HubToken(value, f"the token file {path}")
    return None


def describe_token_source(explicit: str | None = None) -> str:
    """Say which source `resolve_token` would use, without revealing the token.

    Args:
        explicit: as in `resolve_token`.

    Returns:
        E.g. ``"token from the HF_TOKEN environment variable"`` or a sentence saying none was found
        and where to put one.
    """
    token = resolve_token(explicit)
    if token is None:
        return (
            f"no token found (checked the argument, {', '.join(_ENV_VARS)} and {token_file_path()}): "
            "set HF_TOKEN or run `hf auth login`"
        )
    return f"token from {token.source}"
