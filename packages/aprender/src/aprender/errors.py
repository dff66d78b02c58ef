"""Every exception aprender raises on purpose.

Each carries the one-line message a user sees: what went wrong, where (file, key, repo) and what
to do. Catch `AprenderError` at the edge (the CLI) to print it without a traceback.
"""

from __future__ import annotations

from typing import Literal


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


class ModelReferenceError(InvalidArgumentError):
    """A model reference is empty, an existing file other than ``.gguf``, or neither a path nor a Hub repo id.

    Attributes:
        reference: the reference as given.
        problem: ``"empty"``, ``"file"`` (an existing file that is not ``.gguf``) or ``"missing"`` (no such
            path, and not a Hub repo id).
    """

    def __init__(self, message: str, *, reference: str, problem: Literal["empty", "file", "missing"]) -> None:
        super().__init__(message)
        self.reference = reference
        self.problem = problem


class MetricInputError(AprenderError, ValueError):
    """Metric inputs are empty, non-finite or mis-shaped, or a metric option is out of range."""


class TokenizerError(AprenderError):
    """A tokenizer file or its config is missing or invalid, or a tokenizer argument is out of range."""


class ChatTemplateError(TokenizerError):
    """A chat template does not compile, rejects a conversation, or cannot yield an assistant mask."""


class HubError(AprenderError):
    """A Hugging Face Hub operation failed; the message names the repo and the endpoint."""


class InvalidRepoIdError(HubError, ValueError):
    """A repo id is not of the form ``namespace/name`` with the Hub's allowed characters."""


class HubAuthError(HubError):
    """The Hub rejected the token (HTTP 401)."""


class HubTokenMissingError(HubAuthError):
    """An operation needs a token and none was given or found (argument, env vars, token file)."""


class HubPermissionError(HubError):
    """The token is valid but may not write to this namespace or repo (HTTP 403)."""


class HubNotFoundError(HubError):
    """The repo, revision or file does not exist, or is private and invisible to this token (HTTP 404)."""


class HubUnreachableError(HubError):
    """The Hub endpoint cannot be reached or keeps failing (connection refused or cut, 5xx after retries)."""


class HubOfflineError(HubError):
    """Offline mode (``HF_HUB_OFFLINE=1``) is on and what was asked for is not in the local cache."""
