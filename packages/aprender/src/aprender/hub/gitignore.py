"""``.gitignore`` matching, for the local Hub's ``shouldIgnore`` preupload answer.

Implements the core of https://git-scm.com/docs/gitignore#_pattern_format: blank lines and
``#`` comments are skipped, ``!`` negates, the last matching pattern wins; a pattern without a
``/`` (other than a trailing one) matches a name at any depth, one with a ``/`` is anchored at the
repo root; a trailing ``/`` matches directories only (so the files under them); ``*`` and ``?``
do not cross ``/``, ``**`` matches any number of segments, and ``[...]`` is a character class
(``[!...]`` negated).
"""

from __future__ import annotations

import re

__all__ = ["is_ignored"]


def _pattern_regex(pattern: str) -> str:
    """Translate a glob to a regex where ``*``/``?`` stay within one segment and ``**`` spans segments."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _matches(pattern: str, path: str) -> bool:
    directory_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    regex = _pattern_regex(pattern.lstrip("/"))
    candidates = [path]
    segments = path.split("/")
    # a pattern matching a parent directory ignores everything below it
    candidates += ["/".join(segments[:i]) for i in range(1, len(segments))]
    for candidate in candidates:
        is_dir = candidate != path
        if directory_only and not is_dir:
            continue
        target = candidate if anchored else candidate.rsplit("/", 1)[-1]
        if re.fullmatch(regex, target):
            return True
    return False


def is_ignored(path: str, gitignore: str) -> bool:
    """Whether ``path`` (a repo-relative POSIX file path) is ignored by the ``gitignore`` text.

    Args:
        path: file path, e.g. ``"logs/run.txt"``.
        gitignore: content of a ``.gitignore`` file.

    Returns:
        True when the last pattern matching ``path`` (or one of its parent folders) is not negated.
    """
    ignored = False
    for raw in gitignore.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        if pattern and _matches(pattern, path):
            ignored = not negate
    return ignored
