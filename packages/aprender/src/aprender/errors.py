"""Every exception aprender raises on purpose.

Each carries the one-line message a user sees: what went wrong, where (file, key, repo) and what
to do. Catch `AprenderError` at the edge (the CLI) to print it without a traceback.
"""

from __future__ import annotations


class AprenderError(Exception):
    """Base class: the message is complete and meant for the user."""


class FormatError(AprenderError):
    """A model or tokenizer file is unreadable, corrupt, truncated or of an unsupported kind."""


class ConversionError(AprenderError):
    """A valid file cannot be converted (unsupported architecture, missing metadata)."""


class PruningError(AprenderError, ValueError):
    """A pruning request is invalid: sparsity outside [0, 1), a bad N:M pattern, mismatched shapes."""


class InvalidArgumentError(AprenderError, ValueError):
    """An argument value is invalid: wrong type, unparsable size, unknown device, reserved name."""
