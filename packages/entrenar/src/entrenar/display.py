"""How commands show things to people: progress lines, file sizes and paths.

A long operation (building a run, publishing) takes a `Report` and says what it is doing through it, one
plain line at a time (``Loading model weights (SafeTensors)...``); a command passes its console's printer,
a library caller `silent` or a logger's method.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["Report", "human_size", "scientific", "shown_path", "silent"]

Report = Callable[[str], None]


def silent(line: str) -> None:
    """A `Report` that shows nothing."""


def human_size(n_bytes: int) -> str:
    """A size in decimal units, as the Hub shows them: ``512 B``, ``3.4 kB``, ``988.1 MB``, ``15.2 GB``."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def scientific(value: float, decimals: int | None = None) -> str:
    """A number in scientific notation without exponent padding: ``2e-4`` (shortest), ``2.0e-4`` (``decimals=1``)."""
    mantissa, exponent = (f"{value:e}" if decimals is None else f"{value:.{decimals}e}").split("e")
    if decimals is None:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as seen from the working directory: ``./output/x`` below it, absolute elsewhere."""
    from entrenar.init.plan import config_path_value

    return config_path_value(os.path.abspath(path), os.getcwd())
