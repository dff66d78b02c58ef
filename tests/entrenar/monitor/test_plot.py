"""The braille canvas: dots land where the data says, lines are unbroken, NaN breaks them."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given
from hypothesis import strategies as st

from entrenar.monitor.plot import BrailleCanvas, _segment, data_range

NAN = float("nan")


def test_a_flat_line_at_the_bottom_sets_the_bottom_dots_of_every_cell() -> None:
    # 2 cells = 4 dot columns; the bottom row is dots 7 and 8 (0x40 | 0x80), U+28C0.
    canvas = BrailleCanvas(2, 1, (0, 3), (0, 1))
    canvas.line([(0, 0), (3, 0)])
    assert canvas.text() == ["⣀⣀"]


def test_a_vertical_line_fills_the_left_column_of_each_row() -> None:
    # Left column: dots 1, 2, 3, 7 (0x01 | 0x02 | 0x04 | 0x40 = 0x47), U+2847.
    canvas = BrailleCanvas(2, 2, (0, 1), (0, 1))
    canvas.line([(0, 0), (0, 1)])
    assert canvas.text() == ["⡇⠀", "⡇⠀"]


def test_the_top_right_corner_is_the_last_dot() -> None:
    canvas = BrailleCanvas(2, 2, (0, 1), (0, 1))
    canvas.line([(1, 1)])
    assert canvas.text() == ["⠀⠈", "⠀⠀"]  # dot 4 (0x08) of the top-right cell


def test_a_non_finite_point_breaks_the_line() -> None:
    canvas = BrailleCanvas(2, 1, (0, 3), (0, 1))
    canvas.line([(0, 0), (1, NAN), (3, 0)])
    assert canvas.text() == ["⡀⢀"]  # the two end dots, nothing between them


def test_each_cell_remembers_the_series_that_drew_last() -> None:
    canvas = BrailleCanvas(3, 1, (0, 5), (0, 1))
    canvas.line([(0, 0), (3, 0)], series=0)
    canvas.line([(3, 0), (5, 0)], series=1)
    assert [owner for _, owner in canvas.cells()[0]] == [0, 1, 1]


def test_data_range_ignores_non_finite_values_and_widens_a_constant() -> None:
    assert data_range([2.0, NAN, 1.0, math.inf]) == (1.0, 2.0)
    assert data_range([3.0, 3.0]) == (2.5, 3.5)
    assert data_range([NAN]) is None
    assert data_range([]) is None


coordinate = st.integers(min_value=-50, max_value=50)


@given(coordinate, coordinate, coordinate, coordinate)
def test_segments_are_unbroken_and_end_where_asked(x0: int, y0: int, x1: int, y1: int) -> None:
    dots = _segment((x0, y0), (x1, y1))
    assert dots[0] == (x0, y0) and dots[-1] == (x1, y1)
    assert len(dots) == max(abs(x1 - x0), abs(y1 - y0)) + 1
    assert all(abs(a[0] - b[0]) <= 1 and abs(a[1] - b[1]) <= 1 for a, b in itertools.pairwise(dots))


def test_a_long_series_draws_the_same_dots_as_every_segment_would() -> None:
    # More points than dot columns: the canvas draws each column's run through its extremes only.
    rng = random.Random(0)
    walk = [(float(i), 5 + math.sin(i / 300) + rng.gauss(0, 0.3)) for i in range(3000)]
    walk[1500] = (1500.0, NAN)
    canvas = BrailleCanvas(10, 3, (0, 2999), (2, 8))
    canvas.line(walk)
    reference = BrailleCanvas(10, 3, (0, 2999), (2, 8))
    previous = None
    for point in walk:
        dot = reference._dot(point)
        for col, row in _segment(previous or dot, dot) if dot is not None else []:
            reference._set(col, row, 0)
        previous = dot
    assert canvas.text() == reference.text()
