"""The monitor's screen as a grid of character cells, read back from textual's SVG screenshot.

`textual.app.App.export_screenshot` (public, and what textual's own snapshot tests use) writes the screen
as rich's terminal SVG: one ``<rect>`` per run of background colour and one ``<text>`` per run of styled
characters, each clipped to its line (``clip-path="url(#...-line-N)"``) and placed at ``x = column *
CHAR_WIDTH``. `screen_cells` turns that back into cells: the tests read the screen's text, and
``scripts/monitor_screenshot.py`` draws the cells into a PNG.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from rich.cells import cell_len

__all__ = ["CHAR_WIDTH", "Cell", "screen_cells", "screen_text"]

CHAR_WIDTH = 12.2
"""Width of a cell in rich's SVG (its 20 px font times 0.61)."""
LINE_HEIGHT = 24.4
"""Height of a line in rich's SVG (its 20 px font times 1.22)."""
_SVG = "{http://www.w3.org/2000/svg}"
_LINE = re.compile(r"-line-(\d+)\)")
_CLASS_RULE = re.compile(r"\.([\w-]+) \{ ([^}]*) \}")


@dataclass
class Cell:
    """One character cell: its character (a wide one fills the next cell with ``""``), colours as ``#rrggbb``."""

    char: str = " "
    foreground: str = "#c5c8c6"
    background: str = "#000000"
    bold: bool = False


def _class_styles(svg: ET.Element) -> dict[str, dict[str, str]]:
    """Each CSS class of the SVG's style sheet as ``{property: value}``."""
    rules = "".join(style.text or "" for style in svg.iter(f"{_SVG}style"))
    return {
        name: dict(part.strip().split(": ", 1) for part in body.split(";") if ": " in part)
        for name, body in _CLASS_RULE.findall(rules)
    }


def _paint_backgrounds(grid: list[list[Cell]], terminal: ET.Element) -> None:
    for rect in terminal.iter(f"{_SVG}rect"):
        row = round((float(rect.get("y", 0)) - 1.5) / LINE_HEIGHT)
        first = round(float(rect.get("x", 0)) / CHAR_WIDTH)
        for column in range(first, first + round(float(rect.get("width", 0)) / CHAR_WIDTH)):
            if row < len(grid) and column < len(grid[row]):
                grid[row][column].background = rect.get("fill", Cell.background)


def _write_texts(grid: list[list[Cell]], terminal: ET.Element, styles: dict[str, dict[str, str]]) -> None:
    for text in terminal.iter(f"{_SVG}text"):
        line = _LINE.search(text.get("clip-path", ""))
        if line is None:
            continue
        row, column = grid[int(line.group(1))], round(float(text.get("x", 0)) / CHAR_WIDTH)
        style = styles.get(text.get("class", ""), {})
        for char in (text.text or "").replace("\xa0", " ").rstrip("\n"):
            width = cell_len(char)
            if column + width > len(row):
                break
            row[column] = Cell(
                char, style.get("fill", Cell.foreground), row[column].background, "bold" in style.values()
            )
            for extra in range(column + 1, column + width):
                row[extra].char = ""
            column += max(width, 1)


def screen_cells(svg: str) -> list[list[Cell]]:
    """The cells of a rich terminal SVG (`textual.app.App.export_screenshot`), row by row."""
    root = ET.fromstring(svg)
    # rich writes a clip path per line but the last; the terminal's own clip rectangle gives the size
    clip = next(c for c in root.iter(f"{_SVG}clipPath") if c.get("id", "").endswith("-clip-terminal"))[0]
    rows, columns = round(float(clip.get("height", 0)) / LINE_HEIGHT), round(float(clip.get("width", 0)) / CHAR_WIDTH)
    grid = [[Cell() for _ in range(columns)] for _ in range(rows)]
    terminal = next(g for g in root.iter(f"{_SVG}g") if g.get("clip-path", "").endswith("clip-terminal)"))
    _paint_backgrounds(grid, terminal)
    _write_texts(grid, terminal, _class_styles(root))
    return grid


def screen_text(svg: str) -> str:
    """The characters of a rich terminal SVG, one line per screen row, trailing spaces removed."""
    return "\n".join("".join(cell.char for cell in row).rstrip() for row in screen_cells(svg))
