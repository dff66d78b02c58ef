"""Hub tests: the `local_hub` fixture (a server on 127.0.0.1 with ``HF_ENDPOINT`` pointing at it)."""

from __future__ import annotations

from fixtures.hub import LocalHub, local_hub

__all__ = ["LocalHub", "local_hub"]
