"""Every exception entrenar raises on purpose.

Messages are complete one-liners for the user; the CLI prints them without a traceback (unless
``--debug``) and exits with code 2.
"""

from __future__ import annotations

from aprender.errors import AprenderError


class EntrenarError(AprenderError):
    """Base class: the message is complete and meant for the user."""
