"""Curves drawn with text: a braille canvas, 2 x 4 dots per character cell, for the monitor's loss plot.

Each cell is one of the 256 Unicode braille patterns (U+2800 + a bit per dot); a cell remembers the series
that drew in it last, so a caller can colour the train and eval curves apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["BrailleCanvas", "data_range"]

_BRAILLE = 0x2800
# The bit of the dot at (column, row) of a cell: dots 1-2-3-7 down the left column, 4-5-6-8 down the right.
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))

Point = tuple[float, float]


def data_range(values: Sequence[float]) -> tuple[float, float] | None:
    """The smallest and largest finite value, widened to a span of 1 around a constant; None without any."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    return (low - 0.5, high + 0.5) if low == high else (low, high)


class BrailleCanvas:
    """A `width` x `height` character canvas mapping data coordinates onto its dots.

    Args:
        width: Columns (characters), >= 1.
        height: Rows (characters), >= 1.
        x_range: The data x of the leftmost and rightmost dot.
        y_range: The data y of the bottom and top dot.

    Example:
        >>> canvas = BrailleCanvas(2, 1, (0, 3), (0, 1))
        >>> canvas.line([(0, 0), (3, 0)])
        >>> canvas.text()
        ['⣀⣀']
    """

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.width, self.height = width, height
        self._x_range, self._y_range = x_range, y_range
        self._bits = [[0] * width for _ in range(height)]
        self._owner: list[list[int | None]] = [[None] * width for _ in range(height)]

    def _dot(self, point: Point) -> tuple[int, int] | None:
        """The dot (column, row from the top) nearest a data point; None for a non-finite or outside point."""
        x, y = point
        if not (math.isfinite(x) and math.isfinite(y)):
            return None
        (x0, x1), (y0, y1) = self._x_range, self._y_range
        dots_x, dots_y = 2 * self.width - 1, 4 * self.height - 1
        col = round((x - x0) / (x1 - x0) * dots_x) if x1 != x0 else 0
        row = dots_y - (round((y - y0) / (y1 - y0) * dots_y) if y1 != y0 else 0)
        if 0 <= col <= dots_x and 0 <= row <= dots_y:
            return col, row
        return None

    def _set(self, col: int, row: int, series: int) -> None:
        self._bits[row // 4][col // 2] |= _DOT_BITS[col % 2][row % 4]
        self._owner[row // 4][col // 2] = series

    def line(self, points: Sequence[Point], series: int = 0) -> None:
        """Join consecutive points with straight dot lines; a non-finite point breaks the line."""
        previous: tuple[int, int] | None = None
        for dot in _column_spans([self._dot(point) for point in points]):
            if dot is None:
                previous = None
                continue
            for col, row in _segment(previous or dot, dot):
                self._set(col, row, series)
            previous = dot

    def cells(self) -> list[list[tuple[str, int | None]]]:
        """Each row's cells, top first: the character and the series that drew in it last (None: empty)."""
        return [
            [(chr(_BRAILLE + bits), owner) for bits, owner in zip(bit_row, owner_row, strict=True)]
            for bit_row, owner_row in zip(self._bits, self._owner, strict=True)
        ]

    def text(self) -> list[str]:
        """Each row as plain text, top first."""
        return ["".join(char for char, _ in row) for row in self.cells()]


def _column_spans(dots: list[tuple[int, int] | None]) -> list[tuple[int, int] | None]:
    """The same line with fewer dots: each run of dots in one column becomes its first, top, bottom and last dot.

    The segments between them cover the run's whole span, as the run's own segments do, so the drawing is
    unchanged; a run of a thousand steps over one dot column costs four segments.
    """
    spans: list[tuple[int, int] | None] = []
    run: list[tuple[int, int]] = []
    for dot in [*dots, None]:
        if run and (dot is None or dot[0] != run[0][0]):
            top, bottom = min(run, key=lambda d: d[1]), max(run, key=lambda d: d[1])
            spans += [run[0], top, bottom, run[-1]] if len(run) > 4 else run
            run = []
        if dot is None:
            spans.append(None)
        else:
            run.append(dot)
    return spans[:-1]


def _segment(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    """The dots of a straight line from `start` to `end`, both included (Bresenham's algorithm)."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    step_x, step_y = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
    error = dx + dy
    dots = [(x0, y0)]
    while True:
        doubled = 2 * error
        if doubled >= dy:
            if x0 == x1:
                break
            error += dy
            x0 += step_x
        if doubled <= dx:
            if y0 == y1:
                break
            error += dx
            y0 += step_y
        dots.append((x0, y0))
    return dots
