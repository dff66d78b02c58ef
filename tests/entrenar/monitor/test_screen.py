"""Reading textual's SVG screenshot back into cells, and the screenshot script that draws them into PNGs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from PIL import Image
from textual.app import App, ComposeResult
from textual.widgets import Static

from entrenar.monitor.screen import Cell, screen_cells, screen_text
from fixtures.run_folders import RunWriter

REPO = Path(__file__).resolve().parents[3]


class _Sample(App[None]):
    CSS = "Screen { background: #101010; } Static { color: #c0c0c0; }"

    def compose(self) -> ComposeResult:
        yield Static("[bold #ff0000]hot[/] 日本 ⣿x")
        yield Static("[on #0000ff]blue[/]")
        yield Static("last")


def _svg() -> str:
    app = _Sample()

    async def main() -> str:
        async with app.run_test(size=(16, 3)):
            return app.export_screenshot()

    return asyncio.run(main())


def test_the_text_of_every_row_comes_back_wide_characters_included() -> None:
    # rich writes no clip path for the last row: it must come back all the same.
    assert screen_text(_svg()) == "hot 日本 ⣿x\nblue\nlast"


def test_cells_keep_colours_and_weight_and_wide_characters_fill_two_cells() -> None:
    grid = screen_cells(_svg())
    assert (len(grid), len(grid[0])) == (3, 16)
    assert grid[0][0] == Cell("h", "#ff0000", "#101010", bold=True)
    assert [cell.char for cell in grid[0][4:8]] == ["日", "", "本", ""]
    assert grid[0][4].foreground == "#c0c0c0" and not grid[0][4].bold
    assert [cell.background for cell in grid[1][3:5]] == ["#0000ff", "#101010"]


def test_the_screenshot_script_draws_both_views(tmp_path: Path) -> None:
    RunWriter(tmp_path / "run").steps(12)
    script = REPO / "scripts" / "monitor_screenshot.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), "--out", str(tmp_path / "images")],
        capture_output=True,
        text=True,
        check=True,
    )
    names = ["monitor.png", "monitor-samples.png"]
    assert out.stdout.splitlines() == [str(tmp_path / "images" / name) for name in names]
    for name in names:
        with Image.open(tmp_path / "images" / name) as image:
            assert image.size == (120 * 12 + 24, 38 * 24 + 24)  # 120 x 38 cells of 12 x 24 px, 12 px margins
            assert len(image.getcolors(maxcolors=100_000) or []) > 10  # drawn, not blank
