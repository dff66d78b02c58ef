"""Fault injection for the local Hub: fail chosen requests with a 500 or by cutting the connection.

A `Fault` matches requests by method and a regular expression searched in the URL path. Counting
matching requests from 1, requests ``nth .. nth + times - 1`` fail (``times=None``: every one
from ``nth`` on). Tests drive the plan of a running server directly (``server.faults.add(...)``);
the command line takes ``--fault 'kind=cut,method=POST,path=/commit/,nth=1,times=1'``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Literal

from aprender.errors import InvalidArgumentError

__all__ = ["Fault", "FaultPlan", "parse_fault"]

FaultKind = Literal["error", "cut"]


@dataclass
class Fault:
    """One fault rule.

    Attributes:
        kind: ``"error"`` answers HTTP 500; ``"cut"`` closes the connection without an answer.
        path: regular expression searched in the request path (``""`` matches every path).
        method: HTTP method to match, or None for any.
        nth: 1-based index, among matching requests, of the first one to fail.
        times: how many consecutive matching requests fail; None for all of them from ``nth`` on.
    """

    kind: FaultKind
    path: str = ""
    method: str | None = None
    nth: int = 1
    times: int | None = 1
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("error", "cut"):
            raise InvalidArgumentError(f"fault kind {self.kind!r}: use 'error' (HTTP 500) or 'cut'")
        if self.nth < 1 or (self.times is not None and self.times < 1):
            raise InvalidArgumentError(f"fault nth={self.nth}, times={self.times}: both must be >= 1")
        re.compile(self.path)

    def _hit(self, method: str, path: str) -> bool:
        if (self.method is not None and method != self.method.upper()) or not re.search(self.path, path):
            return False
        self.seen += 1
        last = None if self.times is None else self.nth + self.times - 1
        if self.seen >= self.nth and (last is None or self.seen <= last):
            self.fired += 1
            return True
        return False


class FaultPlan:
    """A thread-safe list of `Fault` rules consulted once per request."""

    def __init__(self, faults: list[Fault] | None = None) -> None:
        self._faults = list(faults or [])
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        """Add a rule and return it (its ``fired`` counter tells how often it struck)."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._faults.clear()

    def check(self, method: str, path: str) -> FaultKind | None:
        """Count this request against every rule; return the kind of the first rule that fires, if any."""
        with self._lock:
            hits = [f.kind for f in self._faults if f._hit(method, path)]
        return hits[0] if hits else None


def parse_fault(spec: str) -> Fault:
    """Parse ``'kind=error,method=PUT,path=/lfs/,nth=2,times=all'`` (only ``kind`` is required).

    Args:
        spec: comma-separated ``key=value`` pairs; keys are the `Fault` fields; ``times=all`` means None.

    Returns:
        The fault.

    Raises:
        InvalidArgumentError: unknown key, missing ``kind``, or a value of the wrong type.
    """
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("kind", "path", "method", "nth", "times"):
            raise InvalidArgumentError(f"--fault {spec!r}: {item!r} is not one of kind=, path=, method=, nth=, times=")
        fields[key] = value
    if "kind" not in fields:
        raise InvalidArgumentError(f"--fault {spec!r}: kind=error or kind=cut is required")
    try:
        nth = int(fields.get("nth", "1"))
        times = None if fields.get("times") == "all" else int(fields.get("times", "1"))
    except ValueError as exc:
        raise InvalidArgumentError(f"--fault {spec!r}: nth and times must be integers (times may be 'all')") from exc
    if fields["kind"] not in ("error", "cut"):
        raise InvalidArgumentError(f"--fault {spec!r}: kind must be 'error' or 'cut'")
    kind: FaultKind = "error" if fields["kind"] == "error" else "cut"
    return Fault(kind=kind, path=fields.get("path", ""), method=fields.get("method"), nth=nth, times=times)
