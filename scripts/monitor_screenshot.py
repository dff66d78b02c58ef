"""Screenshots of ``entrenar monitor`` for the docs: the dashboard rendered headless, saved as PNG.

    python scripts/monitor_screenshot.py [RUN_DIR] [--out docs/images]

Without RUN_DIR it records a made-up run (300 of 1,000 steps, evals and samples every 50 steps, a
checkpoint every 100) in a temporary folder. textual's pilot runs the app at 120 x 38 cells, its SVG
screenshot is read back into cells (`entrenar.monitor.screen`) and drawn with Pillow in DejaVu Sans Mono;
braille cells (the loss curves) are drawn dot by dot, since that font has no braille glyphs, and box
borders as lines, since its glyphs leave gaps between cells. Writes
``monitor.png`` (overview) and ``monitor-samples.png`` (samples view) into the output folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from entrenar.monitor.app import MonitorApp
from entrenar.monitor.screen import Cell, screen_cells
from entrenar.monitor.state import RunState, write_run_state

SIZE = (120, 38)
FONT_SIZE = 20
CELL = (12, 24)  # DejaVu Sans Mono's advance at 20 px is 12.04 px
MARGIN = 12
BRAILLE = range(0x2800, 0x2900)
_DOTS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3))  # (column, row) of bits 0-7
_BOX = {"─": "lr", "│": "ud", "╭": "rd", "╮": "ld", "╰": "ru", "╯": "lu"}
"""Box-drawing characters drawn as 2-pixel arms from the cell's centre to the named sides (the font's glyphs
leave gaps between cells)."""
PROMPTS = [
    ("Write a Python function that returns the n-th Fibonacci number.", "def fib(n):\n    a, b = 0, 1\n"),
    ("Translate to Spanish: the model is learning.", "El modelo está aprendiendo."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
]


def record_run(folder: Path, steps: int = 300, total_steps: int = 1000) -> None:
    """A made-up run, as ``entrenar train`` would leave it mid-way (module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines, tokens, checkpoints = [], 0, []
    for step in range(1, steps + 1):
        tokens += 4096
        loss = 0.9 + 1.6 * math.exp(-step / 60) + rng.gauss(0, 0.04)
        lr = 2e-4 * min(step / 30, 1.0) * (0.55 + 0.45 * math.cos(math.pi * step / total_steps))
        lines.append(
            {
                "kind": "train", "step": step, "epoch": step / 250, "loss": loss,
                "parts": {"ce": loss * 0.8, "kd": loss * 0.2}, "lr": lr,
                "grad_norm": 0.4 + 2.0 * math.exp(-step / 40) + abs(rng.gauss(0, 0.05)),
                "tokens_per_s": 5200 + rng.gauss(0, 90), "tokens": tokens,
            }
        )  # fmt: skip
        if step % 50 == 0:
            eval_loss = 1.05 + 1.6 * math.exp(-step / 60)
            prompt, answer = PROMPTS[(step // 50) % len(PROMPTS)]
            lines += [
                {
                    "kind": "eval", "step": step, "epoch": step / 250, "eval_loss": eval_loss,
                    "eval_perplexity": math.exp(eval_loss), "eval_token_accuracy": 0.52 + step / 2000,
                    "eval_tokens": 65536,
                },
                {"kind": "sample", "step": step, "prompt": prompt, "answer": answer},
            ]  # fmt: skip
        if step % 100 == 0:
            checkpoints.append(f"checkpoints/step-{step}")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    state = RunState(
        status="running",
        started_at=(datetime.now(timezone.utc) - timedelta(seconds=steps * 0.79)).isoformat(timespec="seconds"),
        step=steps,
        total_steps=total_steps,
        epoch=steps / 250,
        tokens=tokens,
        total_tokens=tokens * total_steps // steps,
        memory={
            "rss_bytes": 3_480_000_000,
            "peak_rss_bytes": 3_910_000_000,
            "cuda_allocated_bytes": 6_120_000_000,
            "cuda_reserved_bytes": 7_340_000_000,
        },
        checkpoints=checkpoints,
        model="HuggingFaceTB/SmolLM2-135M",
        method="lora",
        techniques=["lora"],
    )
    write_run_state(folder, state)


async def screenshots(folder: Path) -> tuple[str, str]:
    """The SVG screenshots of the overview and of the samples view."""
    app = MonitorApp(folder)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        overview = app.export_screenshot()
        await pilot.press("2")
        await pilot.pause(0.3)
        return overview, app.export_screenshot()


def _font_file(pattern: str) -> str:
    return subprocess.run(["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, check=True).stdout


@cache
def _fonts() -> dict[str, ImageFont.FreeTypeFont]:
    return {
        "regular": ImageFont.truetype(_font_file("DejaVu Sans Mono"), FONT_SIZE),
        "bold": ImageFont.truetype(_font_file("DejaVu Sans Mono:bold"), FONT_SIZE),
        "fallback": ImageFont.truetype(_font_file("DejaVu Sans"), FONT_SIZE),
    }


@cache
def _has_glyph(font_name: str, char: str) -> bool:
    font = _fonts()[font_name]
    return bytes(font.getmask(char)) != bytes(font.getmask("\ue000"))  # a private-use char draws the "missing" box


def _draw_braille(draw: ImageDraw.ImageDraw, x: int, y: int, char: str, colour: str) -> None:
    bits = ord(char) - BRAILLE.start
    width, height = CELL[0] / 2, CELL[1] / 4
    for bit, (column, row) in enumerate(_DOTS):
        if bits >> bit & 1:
            cx, cy = x + (column + 0.5) * width, y + (row + 0.5) * height
            draw.ellipse((cx - 1.8, cy - 1.8, cx + 1.8, cy + 1.8), fill=colour)


def _draw_box(draw: ImageDraw.ImageDraw, x: int, y: int, char: str, colour: str) -> None:
    cx, cy = x + CELL[0] // 2, y + CELL[1] // 2
    right, bottom = x + CELL[0] - 1, y + CELL[1] - 1
    arms = {
        "l": (x, cy - 1, cx, cy),
        "r": (cx - 1, cy - 1, right, cy),
        "u": (cx - 1, y, cx, cy),
        "d": (cx - 1, cy - 1, cx, bottom),
    }
    for side in _BOX[char]:
        draw.rectangle(arms[side], fill=colour)


def _draw_cell(draw: ImageDraw.ImageDraw, x: int, y: int, cell: Cell) -> None:
    draw.rectangle((x, y, x + CELL[0] - 1, y + CELL[1] - 1), fill=cell.background)
    if cell.char in ("", " ") or ord(cell.char) == BRAILLE.start:
        return
    if ord(cell.char) in BRAILLE:
        _draw_braille(draw, x, y, cell.char, cell.foreground)
        return
    if cell.char in _BOX:
        _draw_box(draw, x, y, cell.char, cell.foreground)
        return
    name = "bold" if cell.bold else "regular"
    name = next((n for n in (name, "regular", "fallback") if _has_glyph(n, cell.char)), "")
    if name:
        draw.text((x, y + CELL[1] - 4), cell.char, font=_fonts()[name], fill=cell.foreground, anchor="ls")


def save_png(svg: str, path: Path) -> None:
    """Draw the cells of an SVG screenshot into a PNG."""
    grid = screen_cells(svg)
    width, height = len(grid[0]) * CELL[0] + 2 * MARGIN, len(grid) * CELL[1] + 2 * MARGIN
    image = Image.new("RGB", (width, height), grid[0][0].background)
    draw = ImageDraw.Draw(image)
    for row, cells in enumerate(grid):
        for column, cell in enumerate(cells):
            _draw_cell(draw, MARGIN + column * CELL[0], MARGIN + row * CELL[1], cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a run's output folder (default: a made-up run)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="where the PNGs go")
    args = parser.parse_args()
    start, out = Path.cwd(), args.out.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        if args.run_dir is None:
            record_run(Path(scratch, "output"))
            os.chdir(scratch)  # the made-up run shows as "output", like a real one
        try:
            overview, samples = asyncio.run(screenshots(args.run_dir or Path("output")))
        finally:
            os.chdir(start)
    for name, svg in (("monitor.png", overview), ("monitor-samples.png", samples)):
        save_png(svg, out / name)
        print(out / name)


if __name__ == "__main__":
    main()
