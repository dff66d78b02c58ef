"""Hub settings read from the environment at call time.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_HUB_DISABLE_XET`` and ``HF_HUB_DISABLE_TELEMETRY`` into ``huggingface_hub.constants`` once, at
import. A process (a test run, a CLI that changes its environment) may change them later, so we
resolve them on every call, pass ``endpoint=``/``cache_dir=`` explicitly, and pin the flags the
library consults deep inside (``is_offline_mode()`` in its request hook, ``is_xet_available()`` in
its upload path, telemetry in its user-agent builder, which may otherwise fetch a registry from the
import-time endpoint) for the duration of one call with `library_flags`.

Spec: https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants

from aprender.hub.token import hf_home

__all__ = ["DEFAULT_ENDPOINT", "HubSettings", "env_flag", "library_flags"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "ON", "YES", "TRUE"}
_FLAGS_LOCK = threading.RLock()


def env_flag(name: str) -> bool:
    """Return True when environment variable ``name`` is 1/ON/YES/TRUE (any case), as huggingface_hub does."""
    return os.environ.get(name, "").strip().upper() in _TRUE


@dataclass(frozen=True)
class HubSettings:
    """Where the Hub is and where its files are cached.

    Attributes:
        endpoint: base URL without a trailing slash.
        cache_dir: the hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``).
        offline: ``HF_HUB_OFFLINE`` is on: resolve from the cache only.
        disable_xet: ``HF_HUB_DISABLE_XET`` is on.
        disable_telemetry: ``HF_HUB_DISABLE_TELEMETRY`` (or ``DISABLE_TELEMETRY``/``DO_NOT_TRACK``) is on.
    """

    endpoint: str
    cache_dir: Path
    offline: bool
    disable_xet: bool
    disable_telemetry: bool

    @classmethod
    def from_env(cls, endpoint: str | None = None) -> HubSettings:
        """Read the settings now.

        Args:
            endpoint: overrides ``HF_ENDPOINT`` when given (e.g. ``entrenar publish --endpoint``).

        Returns:
            The settings.
        """
        url = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
        cache_dir = Path(os.path.expandvars(cache)).expanduser() if cache else hf_home() / "hub"
        return cls(
            endpoint=url.rstrip("/"),
            cache_dir=cache_dir,
            offline=env_flag("HF_HUB_OFFLINE"),
            disable_xet=env_flag("HF_HUB_DISABLE_XET"),
            disable_telemetry=any(
                env_flag(v) for v in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
            ),
        )


@contextmanager
def library_flags(settings: HubSettings, *, force_lfs: bool = False) -> Iterator[None]:
    """Pin huggingface_hub's import-time flags to ``settings`` for one call, then restore them.

    Calls through this module are serialised by a lock so that two of them never interleave
    their flags; other threads using huggingface_hub directly see the pinned values meanwhile.

    Args:
        settings: the values for ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET`` and ``HF_HUB_DISABLE_TELEMETRY``.
        force_lfs: disable Xet whatever the environment says, so that an upload takes the legacy
            path: one commit, large files through the LFS batch API (basic transfer).
    """
    names = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET", "HF_HUB_DISABLE_TELEMETRY")
    values = (settings.offline, settings.disable_xet or force_lfs, settings.disable_telemetry)
    with _FLAGS_LOCK:
        saved = [getattr(constants, name) for name in names]
        for name, value in zip(names, values, strict=True):
            setattr(constants, name, value)
        try:
            yield
        finally:
            for name, value in zip(names, saved, strict=True):
                setattr(constants, name, value)
